"""Graded variants of assignment 14: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["quantize_per_channel", "select_channels"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "scale max |w| / 127 with values clamped to [-127, 127] (not torchao's symmetric convention)": {
        "cell": "quantize_per_channel",
        "source": '''def quantize_per_channel(w):
    """w (O, I) float -> (q (O, I) int8, scale (O,) float32) with w ~ q * scale[:, None]."""
    scale = w.abs().amax(1).clamp(min=torch.finfo(torch.float32).eps) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()
''',
        "loses": ["test_quantize_matches"],
    },
    "activations quantised with one scale for the whole batch": {
        "cell": "int8_linear",
        "source": '''def int8_linear(x, q, scale, bias=None):
    """x (B, I) float, q (O, I) int8, scale (O,), bias (O,) or None -> (B, O) float32."""
    sx = x.abs().max().clamp(min=torch.finfo(torch.float32).eps) / HALF_RANGE
    qx = torch.round(x / sx).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    acc = qx.to(torch.int32) @ q.to(torch.int32).T
    y = acc.float() * sx * scale[None, :]
    return y if bias is None else y + bias
''',
        "loses": ["test_int8_linear_rows"],
    },
    "distillation without the T^2 factor": {
        "cell": "distillation_loss",
        "source": '''def distillation_loss(student, teacher, labels, T, alpha, labelled):
    """T^2 * mean_b KL(softmax(teacher/T) || softmax(student/T)) + alpha * CE over the labelled rows."""
    soft = F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher.detach() / T, 1),
                    reduction="batchmean", log_target=True)
    if not labelled.any():
        return soft
    return soft + alpha * F.cross_entropy(student[labelled], labels[labelled])
''',
        "loses": ["test_distil_matches", "test_distil_edges"],
    },
    "channels of the smallest L1 norm kept (the weakest filters)": {
        "cell": "select_channels",
        "source": '''def select_channels(weight, keep):
    """Indices (keep,) of the output channels with the largest L1 norms, ascending."""
    norms = weight.abs().sum((1, 2, 3))
    return norms.topk(keep, largest=False).indices.sort().values
''',
        "loses": ["test_select"],
    },
}
