"""Graded variants of assignment 13: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["bayes_accuracy_of", "expected_road_limit"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "Bayes accuracy as the mean of the largest posterior, not weighted by the observation's probability": {
        "cell": "bayes_accuracy_of",
        "source": '''def bayes_accuracy_of(world, sensors):
    """Exact Bayes accuracy of the sensor subset `sensors` (a tuple of names) in `world`."""
    values, p = world.states()
    names = world.observed(sensors)
    mass = {}
    for k in range(len(p)):
        key = (tuple(int(values[n][k]) for n in names), int(values[world.label][k]))
        mass[key] = mass.get(key, 0.0) + p[k]
    total, best = {}, {}
    for (obs, _), m in mass.items():
        total[obs] = total.get(obs, 0.0) + m
        best[obs] = max(best.get(obs, 0.0), m)
    return float(np.mean([best[o] / total[o] for o in best]))
''',
        "loses": ["test_bayes_two"],
    },
    "condition limit from a classifier built on the condition's scenes alone": {
        "cell": "condition_limit",
        "source": '''def condition_limit(world, sensors, variable, value):
    """Accuracy of the Bayes classifier of `sensors` over the states with `variable == value`."""
    values, p = world.states()
    keep = values[variable] == value
    names = world.observed(sensors)
    mass = {}
    for k in np.flatnonzero(keep):
        key = (tuple(int(values[n][k]) for n in names), int(values[world.label][k]))
        mass[key] = mass.get(key, 0.0) + p[k]
    best = {}
    for (obs, _), m in mass.items():
        best[obs] = max(best.get(obs, 0.0), m)
    return float(sum(best.values()) / p[keep].sum())
''',
        "loses": ["test_condition_other"],
    },
    "reliability gate with chapter 05's softmax": {
        "cell": "reliability_gate",
        "source": '''class ReliabilityGate(Fusion):
    """h = sum over present m of softmax_m(w_m . f_m + b_m) * ReLU(W_m f_m + c_m)."""

    def __init__(self, in_dims, hidden):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})
        self.gate = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in self.in_dims.items()})

    def weights(self, feats, present):
        logits = torch.cat([self.gate[m](f) for m, f in zip(self.modalities, feats)], 1)
        logits = logits.masked_fill(~present, float("-inf"))
        logits = torch.where(present.any(1, keepdim=True), logits, 0.0)
        return torch.softmax(logits, 1) * present

    def fuse(self, feats, present):
        z = torch.stack([torch.relu(self.project[m](f)) for m, f in zip(self.modalities, feats)], 1)
        z = z.masked_fill(~present.unsqueeze(-1), 0.0)
        return (self.weights(feats, present).unsqueeze(-1) * z).sum(1)
''',
        "loses": ["test_gate_values"],
    },
    "reliability gate that multiplies by the mask (an absent sensor's nan leaks)": {
        "cell": "reliability_gate",
        "source": '''class ReliabilityGate(Fusion):
    """h = sum over present m of sigmoid(w_m . f_m + b_m) * ReLU(W_m f_m + c_m)."""

    def __init__(self, in_dims, hidden):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})
        self.gate = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in self.in_dims.items()})

    def weights(self, feats, present):
        logits = torch.cat([self.gate[m](f) for m, f in zip(self.modalities, feats)], 1)
        return torch.sigmoid(logits) * present

    def fuse(self, feats, present):
        z = torch.stack([torch.relu(self.project[m](f)) for m, f in zip(self.modalities, feats)], 1)
        return (self.weights(feats, present).unsqueeze(-1) * z * present.unsqueeze(-1)).sum(1)
''',
        "loses": ["test_gate_missing"],
    },
    "road limit that leaves out the pattern with no sensor left": {
        "cell": "expected_road_limit",
        "source": '''def expected_road_limit(table, rates):
    """Expected Bayes accuracy when each sensor m is flagged missing with probability rates[m]."""
    total = 0.0
    for subset, acc in table.items():
        if subset:
            total += math.prod(1 - rates[m] if m in subset else rates[m] for m in SENSORS) * acc
    return float(total)
''',
        "loses": ["test_road_ends", "test_road_rates"],
    },
}
