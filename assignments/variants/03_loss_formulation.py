"""Graded variants of assignment 03: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["stable_cross_entropy", "l2_penalty"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "softmax first, then log (overflows to inf/nan)": {
        "cell": "stable_cross_entropy",
        "source": '''def stable_cross_entropy(logits, target):
    """Mean cross-entropy, (B, C) float logits and (B,) int64 labels -> a scalar."""
    e = torch.exp(logits)                                                 # (B, C), inf above 88.7
    p = e / e.sum(dim=1, keepdim=True)                                    # (B, C), nan when inf / inf
    return -torch.log(p[torch.arange(len(target)), target]).mean()
''',
        "loses": ["test_ce_large_logits"],
    },
    "sums over the batch instead of the mean (forgets 1/B)": {
        "cell": "stable_cross_entropy",
        "source": '''def stable_cross_entropy(logits, target):
    """Mean cross-entropy, (B, C) float logits and (B,) int64 labels -> a scalar."""
    m = logits.detach().amax(dim=1, keepdim=True)
    lse = m.squeeze(1) + torch.log(torch.exp(logits - m).sum(dim=1))
    return (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
''',
        "loses": ["test_ce_value", "test_ce_large_logits"],
    },
    "gradient without the 1/B of the mean": {
        "cell": "cross_entropy_grad",
        "source": '''def cross_entropy_grad(logits, target):
    """d(mean cross-entropy) / d logits: (B, C) float logits and (B,) int64 labels -> (B, C)."""
    p = torch.softmax(logits, dim=1)
    return p - F.one_hot(target, logits.shape[1]).to(p.dtype)
''',
        "loses": ["test_ce_grad_autograd"],
    },
    "sigmoid first, then log (log 0 for confident logits)": {
        "cell": "bce_with_logits",
        "source": '''def bce_with_logits(z, t):
    """Mean binary cross-entropy: (B,) float logits and (B,) float targets in [0, 1] -> a scalar."""
    s = torch.sigmoid(z)
    return -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
''',
        "loses": ["test_bce_large"],
    },
    "smoothing spread over the C - 1 wrong classes only": {
        "cell": "smoothed_cross_entropy",
        "source": '''def smoothed_cross_entropy(logits, target, eps):
    """Mean cross-entropy against the smoothed target: (B, C) logits, (B,) int64 labels, eps in [0, 1) -> scalar."""
    C = logits.shape[1]
    one_hot = F.one_hot(target, C).to(logits.dtype)
    q = (1 - eps) * one_hot + eps / (C - 1) * (1 - one_hot)
    return -(q * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
''',
        "loses": ["test_smoothing_value"],
    },
    "optimum of the C - 1 reading: 1 - eps": {
        "cell": "top_prob",
        "source": "my_top_prob = 1 - 0.2\n",
        "loses": ["test_top_prob"],
    },
    "penalises the biases too": {
        "cell": "l2_penalty",
        "source": '''def l2_penalty(model, lam):
    """lam * the sum of squares of every weight matrix of `model` (biases excluded) -> a scalar."""
    return lam * sum(p.pow(2).sum() for p in model.parameters())
''',
        "loses": ["test_l2_penalty"],
    },
}
