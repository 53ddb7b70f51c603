"""Graded variants of assignment 02: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["masked_mean", "param_count"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "averages over the padding too": {
        "cell": "masked_mean",
        "source": '''def masked_mean(x, mask):
    """Mean over real tokens: x (B, L, E), mask (B, L) bool -> (B, E); zeros for a row of only padding."""
    return x.mean(1)
''',
        "loses": ["test_masked_mean", "test_forward_other_model"],
    },
    "takes the maximum without masking": {
        "cell": "masked_max",
        "source": '''def masked_max(x, mask):
    """Maximum over real tokens: x (B, L, E), mask (B, L) bool -> (B, E); zeros for a row of only padding."""
    return x.max(1).values
''',
        "loses": ["test_masked_max", "test_masked_max_empty"],
    },
    "sets padding to zero before the maximum": {
        "cell": "masked_max",
        "source": '''def masked_max(x, mask):
    """Maximum over real tokens: x (B, L, E), mask (B, L) bool -> (B, E); zeros for a row of only padding."""
    return (x * mask.unsqueeze(-1)).max(1).values
''',
        "loses": ["test_masked_max"],
    },
    "forgets the biases of the Linear layers": {
        "cell": "param_count",
        "source": '''def reference_param_count(config):
    """Number of parameters (int) of ReferenceModel(config), computed from the config's fields."""
    e, h, c = config.embed_dim, config.hidden_dim, config.num_classes
    return config.vocab_size * e + e * h + h * h + 3 * config.image_size**2 * h + h * h + 2 * h * h + h * c
''',
        "loses": ["test_param_count_default", "test_param_count_configs"],
    },
    "takes the ceiling 0.5 as the accuracy on scenes without the material": {
        "cell": "predicted_split",
        "source": '''def predicted_split(shape_acc, p_material):
    """Expected accuracy (named, not_named, overall) of the model described above."""
    named, not_named = shape_acc, 0.5
    return named, not_named, p_material * named + (1 - p_material) * not_named
''',
        "loses": ["test_split_formula", "test_split_simulation"],
    },
}
