"""Graded variants of assignment 11: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["average_precision", "alarm_threshold"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "posterior that multiplies the sensors' binary posteriors (independence given the label)": {
        "cell": "posterior",
        "source": '''def posterior_abnormal(cases, sensors):
    """P(abnormal | what `sensors` observe), treating the sensors as independent given the label."""
    prior = PRIOR[1:].sum()
    odds = prior / (1 - prior)
    for m in sensors:
        joint = PRIOR[:, None] * CPTS[m]                                 # (E, values)
        p = joint[1:].sum(0) / joint.sum(0)                              # (values,) P(abnormal | o_m)
        odds = odds * (p / (1 - p))[cases[OBSERVED[m]]] / (prior / (1 - prior))
    return odds / (1 + odds)
''',
        "loses": ["test_posterior_subsets"],
    },
    "average precision that averages the precision at every rank, not only at the positives": {
        "cell": "average_precision",
        "source": '''def my_average_precision(scores, labels):
    """Mean precision over all ranks."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    y = np.asarray(labels)[order]
    return float((np.cumsum(y) / np.arange(1, len(y) + 1)).mean())
''',
        "loses": ["test_ap_basic"],
    },
    "temporal pool with the kernel's two taps swapped": {
        "cell": "temporal_pool",
        "source": '''def temporal_pool(f, weight, bias):
    """Kernel-2 convolution over time, ReLU, max over time: (B, T, D) -> (B, D)."""
    steps = [f[:, t] @ weight[..., 1].T + f[:, t + 1] @ weight[..., 0].T + bias for t in range(f.shape[1] - 1)]
    return torch.relu(torch.stack(steps, 1)).amax(1)
''',
        "loses": ["test_temporal_pool", "test_temporal_pool_order"],
    },
    "alarm threshold that counts false alarms with a strict >": {
        "cell": "alarm_threshold",
        "source": '''def alarm_threshold(scores, labels, rate):
    """Lowest score threshold whose false-alarm rate is at most `rate`."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    negatives = scores[labels == 0]
    best = np.inf
    for t in np.unique(scores)[::-1]:
        if (negatives > t).mean() <= rate + 1e-12:
            best = t
        else:
            break
    return float(best)
''',
        "loses": ["test_alarm_small"],
    },
}
