"""Chapter 14's models, and the ways to make them smaller and faster.

The chapter works on one family of fusion classifiers, declared by a JSON-able
*architecture* dict so that a model can be rebuilt from a file (:mod:`mmcourse.deploy`
stores the dict in a model bundle) and shrunk by editing the dict (a student a
quarter of the teacher's size is the same dict with narrower widths)::

    {"encoders": {"audio": {"family": "cnn", "dim": 64, "widths": [16, 32, 64]},
                  "image": {"family": "cnn", "dim": 64, "widths": [16, 32, 64]},
                  "text": {"family": "bag", "dim": 64}},
     "fusion": {"name": "concat", "hidden": 128},
     "num_classes": 10}

:func:`build_model` turns the dict into a :class:`mmcourse.fusion.FusionModel`;
:func:`check_architecture` names the first thing wrong with one. Encoder families are
those of :data:`mmcourse.encoders.ENCODERS` plus the text family ``"bag"``
(:class:`BagTextEncoder`, an ``nn.EmbeddingBag`` that averages the token embeddings in
one kernel: the layer that int8 quantisation of embedding tables targets).

Shape letters: B batch, L tokens, D feature width, C classes.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .data.text import PAD_ID, WORLD_VOCAB
from .encoders import ENCODERS, Encoder
from .fusion import FUSIONS, FusionModel, make_fusion
from .modality import check_tensor

ARCHITECTURE_KEYS = ("encoders", "fusion", "num_classes")


class BagTextEncoder(Encoder):
    """Token embeddings averaged by ``nn.EmbeddingBag(mode="mean")`` over real tokens, then a two-layer MLP.

    The same function as :class:`mmcourse.encoders.MeanPoolTextEncoder` (padding ``PAD_ID`` is left out
    of the mean; a caption of padding only gives zeros before the MLP), computed by one fused lookup.
    """

    modality = "text"
    has_tokens = False

    def __init__(self, vocab_size: int = len(WORLD_VOCAB), dim: int = 64):
        super().__init__(dim)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=PAD_ID)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_tensor(ids, "text", 2, float_=False)                  # (B, L) int64
        b, length = ids.shape
        # Bags given as flat ids and explicit offsets, not as (B, L): for 2-D input EmbeddingBag makes
        # offsets = arange(0, B * L, L), whose length ceil(B * L / L) torch.export cannot prove to be B,
        # so an exported model would refuse a batch of 1 (and ONNX would fix the batch).
        offsets = torch.arange(b, device=ids.device) * length          # (B,) start of each caption
        return self.mlp(self.embedding(ids.reshape(-1), offsets))      # (B * L,) -> (B, D) -> (B, D)


FAMILIES: dict[str, dict[str, type[Encoder]]] = {m: dict(f) for m, f in ENCODERS.items()}
FAMILIES["text"]["bag"] = BagTextEncoder


def _fail(message: str) -> None:
    raise ValueError(f"architecture: {message}")


def check_architecture(arch) -> dict:
    """A deep copy of ``arch`` after checking its form (see the module docstring).

    Raises:
        ValueError: naming the key that is missing, unknown or of the wrong type.
    """
    if not isinstance(arch, Mapping):
        _fail(f"must be a dict with keys {', '.join(ARCHITECTURE_KEYS)}, got {type(arch).__name__}")
    missing = [k for k in ARCHITECTURE_KEYS if k not in arch]
    extra = sorted(set(arch) - set(ARCHITECTURE_KEYS))
    if missing or extra:
        _fail(f"missing keys {missing}, unknown keys {extra}; expected {list(ARCHITECTURE_KEYS)}")
    encoders, fusion, classes = arch["encoders"], arch["fusion"], arch["num_classes"]
    if not isinstance(encoders, Mapping) or not encoders:
        _fail("'encoders' must be a non-empty dict {modality: {'family': ..., options}}")
    for m, spec in encoders.items():
        if m not in FAMILIES:
            _fail(f"unknown modality {m!r} in 'encoders'; valid: {', '.join(FAMILIES)}")
        if not isinstance(spec, Mapping) or spec.get("family") not in FAMILIES[m]:
            _fail(f"encoders[{m!r}] must be a dict whose 'family' is one of {', '.join(FAMILIES[m])}, got {spec!r}")
    if not isinstance(fusion, Mapping) or fusion.get("name") not in FUSIONS or "hidden" not in fusion:
        _fail(f"'fusion' must be a dict with 'name' (one of {', '.join(FUSIONS)}) and 'hidden', got {fusion!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        _fail(f"'num_classes' must be an int >= 2, got {classes!r}")
    return copy.deepcopy(dict(arch))


def _options(spec: Mapping, drop: str) -> dict:
    """A spec's keyword arguments, lists turned into tuples (JSON has no tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != drop}


def build_model(arch) -> FusionModel:
    """A freshly initialised :class:`mmcourse.fusion.FusionModel` of architecture ``arch``.

    The same dict always gives the same module structure (and, after ``torch.manual_seed``, the same
    weights), so a model's ``state_dict`` loads into ``build_model(arch)`` of the dict it was built from.

    Raises:
        ValueError: for an ill-formed ``arch`` (:func:`check_architecture`) or options an encoder rejects.
    """
    arch = check_architecture(arch)
    encoders = {}
    for m in sorted(arch["encoders"]):
        spec = arch["encoders"][m]
        try:
            encoders[m] = FAMILIES[m][spec["family"]](**_options(spec, "family"))
        except TypeError as exc:
            _fail(f"encoders[{m!r}]: {exc}")
    fusion = _options(arch["fusion"], "name")
    hidden = fusion.pop("hidden")
    in_dims = {m: e.out_dim for m, e in encoders.items()}
    return FusionModel(make_fusion(arch["fusion"]["name"], in_dims, hidden, arch["num_classes"], **fusion),
                       arch["num_classes"], encoders)
