"""Graded variants of assignment 06: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["info_nce", "predict_recall"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "InfoNCE without its temperature": {
        "cell": "info_nce",
        "source": '''def symmetric_info_nce(a, b, logit_scale):
    """Symmetric InfoNCE of paired embeddings."""
    z_a, z_b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = z_a @ z_b.T
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
''',
        "loses": ["test_info_nce_basic", "test_info_nce_value", "test_info_nce_grad"],
    },
    "InfoNCE in one direction only": {
        "cell": "info_nce",
        "source": '''def symmetric_info_nce(a, b, logit_scale):
    """InfoNCE of paired embeddings, rows only."""
    z_a, z_b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = logit_scale.exp() * z_a @ z_b.T
    return F.cross_entropy(logits, torch.arange(len(a)))
''',
        "loses": ["test_info_nce_value", "test_info_nce_grad"],
    },
    "Recall@K that ranks along the wrong axis (columns)": {
        "cell": "recall_at_k",
        "source": '''def my_recall_at_k(sim, ks):
    """Recall@K of queries whose match is gallery item i."""
    match = sim.diagonal().unsqueeze(0)                                   # (1, N)
    rank = (sim >= match).sum(0) - 1                                      # (N,): per column
    return {k: float((rank < k).double().mean()) for k in ks}
''',
        "loses": ["test_recall_rows"],
    },
    "Recall@K that lets ties favour the query": {
        "cell": "recall_at_k",
        "source": '''def my_recall_at_k(sim, ks):
    """Recall@K of queries whose match is gallery item i."""
    rows = torch.arange(sim.shape[0])
    rank = (sim > sim[rows, rows].unsqueeze(1)).sum(1)                    # only strictly higher items
    return {k: float((rank < k).double().mean()) for k in ks}
''',
        "loses": ["test_recall_ties"],
    },
    "prompt ensemble that does not normalise the mean": {
        "cell": "ensemble",
        "source": '''def ensemble_classifier(prompt_embeddings):
    """One row per value: the mean of the unit prompt embeddings."""
    return torch.stack([F.normalize(e, dim=1).mean(0) for e in prompt_embeddings])
''',
        "loses": ["test_ensemble_shape", "test_ensemble_value"],
    },
}
