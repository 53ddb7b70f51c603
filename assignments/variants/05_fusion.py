"""Graded variants of assignment 05: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["max_fusion", "predict_no_text"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "max fusion that ignores the presence mask": {
        "cell": "max_fusion",
        "source": '''class MaxFusion(Fusion):
    """h = max over m of ReLU(W_m f_m + b_m)."""

    def __init__(self, in_dims, hidden):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})

    def fuse(self, feats, present):
        z = torch.stack([torch.relu(self.project[m](f)) for m, f in zip(self.modalities, feats)], 1)  # (B, M, H)
        return z.amax(dim=1)
''',
        "loses": ["test_max_fusion_mask", "test_max_fusion_empty"],
    },
    "max fusion that leaves the row with no modality at -inf": {
        "cell": "max_fusion",
        "source": '''class MaxFusion(Fusion):
    """h = max over present m of ReLU(W_m f_m + b_m)."""

    def __init__(self, in_dims, hidden):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})

    def fuse(self, feats, present):
        z = torch.stack([torch.relu(self.project[m](f)) for m, f in zip(self.modalities, feats)], 1)  # (B, M, H)
        return z.masked_fill(~present.unsqueeze(-1), float("-inf")).amax(dim=1)
''',
        "loses": ["test_max_fusion_empty"],
    },
    "modality dropout that can drop every modality": {
        "cell": "drop_modalities",
        "source": '''def drop_modalities(present, p, generator):
    """Drop each present modality with probability p."""
    return present & (torch.rand(present.shape, generator=generator) >= p)
''',
        "loses": ["test_dropout_keeps_one", "test_dropout_rate"],
    },
    "expected ceiling that scores the empty set at the prior (no modality put back)": {
        "cell": "expected_ceiling",
        "source": '''def expected_ceiling(table, rates):
    """Expected Bayes accuracy when m is missing with probability rates[m]."""
    total = 0.0
    for subset, acc in table.items():
        total += math.prod(1 - rates[m] if m in subset else rates[m] for m in MODALITIES) * acc
    return float(total)
''',
        "loses": ["test_ceiling_rates"],
    },
}
