"""Graded variants of assignment 17: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
PARTIAL = ["coral", "gap_closed"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses".
WRONG = {
    "CORAL with biased covariances (divided by B, not B - 1)": {
        "cell": "coral",
        "source": '''def coral(source, target):
    """||C_s - C_t||_F^2 / (4 D^2) with unbiased covariances."""
    d = source.shape[1]
    cs = (source - source.mean(0)).T @ (source - source.mean(0)) / len(source)
    ct = (target - target.mean(0)).T @ (target - target.mean(0)) / len(target)
    return ((cs - ct) ** 2).sum() / (4 * d * d)
''',
        "loses": ["test_coral_value"],
    },
    "gradient reversal that forgets the sign": {
        "cell": "reverse_grad",
        "source": '''class ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.scale * grad, None
''',
        "loses": ["test_reverse_backward"],
    },
    "composition that takes one material of the family instead of their sum": {
        "cell": "compose",
        "source": '''def compose(p_shape, p_material, class_name):
    """(N,) log-score of `class_name`."""
    shape, family = graph.parts(class_name)
    mats = [m for m, name in enumerate(fr.ATTRIBUTES["material"]) if family in graph.tails(name, "sound_family")]
    return torch.log(p_shape[:, fr.ATTRIBUTES["shape"].index(shape)]) + torch.log(p_material[:, mats[0]])
''',
        "loses": ["test_compose_unseen", "test_compose_all"],
    },
}
