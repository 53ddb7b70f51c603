"""Graded variants of assignment 12: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["auroc_by_pairs", "binary_ece"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "AUROC that counts a tie as a miss": {
        "cell": "auroc_by_pairs",
        "source": '''def auroc_by_pairs(scores, labels):
    """P(s+ > s-) over all (ill, healthy) pairs."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    diff = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float((diff > 0).mean())
''',
        "loses": ["test_auroc_ties"],
    },
    "record posterior with the overall prevalence as its prior (age and gene ignored)": {
        "cell": "record_posterior",
        "source": '''def record_posterior(age, gene, lab):
    """P(disease | lab marker), the prior being the population's prevalence."""
    risk = np.where(np.asarray(gene) == 1, np.asarray(CONFIG.gene_risk)[age], np.asarray(CONFIG.risk)[age])
    prior = np.full(len(risk), world.table(()).joint[:, 1].sum())
    ill = prior * np.asarray(CONFIG.lab_disease)[lab]
    well = (1 - prior) * np.asarray(CONFIG.lab_healthy)[lab]
    return ill / (ill + well)
''',
        "loses": ["test_posterior_values", "test_posterior_population"],
    },
    "temperature scaling that multiplies the logits by T": {
        "cell": "fit_temperature_nll",
        "source": '''def fit_temperature_nll(logits, labels):
    """argmin over T of the NLL of softmax(T * logits)."""
    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels)
    tau = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([tau], lr=0.5, max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = F.cross_entropy(z * tau.exp(), y)
        loss.backward()
        return loss

    lbfgs.step(closure)
    return float(tau.detach().exp())
''',
        "loses": ["test_temperature_known", "test_temperature_matches"],
    },
    "ECE as the plain mean of the bins' gaps (not weighted by their counts)": {
        "cell": "binary_ece",
        "source": '''def binary_ece(probs, labels, bins=10):
    """Mean over non-empty bins of |rate - mean prob|."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    index = np.minimum((probs * bins).astype(int), bins - 1)
    gaps = [abs(labels[index == b].mean() - probs[index == b].mean()) for b in np.unique(index)]
    return float(np.mean(gaps))
''',
        "loses": ["test_ece"],
    },
}
