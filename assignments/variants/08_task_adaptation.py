"""Graded variants of assignment 08: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["count_by_hand", "adapter"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
_LORA = '''class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable update (alpha / r) B A: (N, d_in) -> (N, d_out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = {base}
        place = {{"dtype": base.weight.dtype}}
        self.A = nn.Parameter(torch.randn(rank, base.in_features, **place) / math.sqrt(base.in_features))
        self.B = nn.Parameter({b_init})
        self.scale = {scale}

    def forward(self, x):
        return self.base(x) + {forward_scale}(x @ self.A.T) @ self.B.T
'''
_RIGHT = dict(base="base.requires_grad_(False)", b_init="torch.zeros(base.out_features, rank, **place)",
              scale="alpha / rank", forward_scale="self.scale * ")

WRONG = {
    "B initialised randomly (the layer no longer starts at the pretrained function)": {
        "cell": "lora_linear",
        "source": _LORA.format(**{**_RIGHT, "b_init": "torch.randn(base.out_features, rank, **place) * 0.1"}),
        "loses": ["test_lora_start"],
    },
    "the alpha / r scale forgotten": {
        "cell": "lora_linear",
        "source": _LORA.format(**{**_RIGHT, "scale": "1.0", "forward_scale": ""}),
        "loses": ["test_lora_scale"],
    },
    "the base weight left trainable": {
        "cell": "lora_linear",
        "source": _LORA.format(**{**_RIGHT, "base": "base"}),
        "loses": ["test_lora_frozen"],
    },
    "adapter without the residual": {
        "cell": "adapter",
        "source": '''class BottleneckAdapter(nn.Module):
    """h -> up(gelu(down(h)))."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.up(F.gelu(self.down(h)))
''',
        "loses": ["test_adapter_start", "test_adapter_trained"],
    },
}
