"""Fusion: how one model combines the features of several modalities.

Every method is a :class:`Fusion`. It takes a dict of per-modality features
``{name: (B, D_m)}`` and an optional presence mask ``present`` (B, M) bool,
whose column j refers to ``modalities[j]`` (the sorted names; ``None`` means
every given key is present), and returns one fused vector (B, out_dim). As
everywhere in the course (:mod:`mmcourse.modality`), a modality missing for the
whole batch is an absent key, one missing for some samples is False in the mask.

A missing modality is handled *explicitly* by every method, never by a zero
the model could mistake for a real input, and its features never reach the
output (changing them changes nothing):

========================  ==========================================================
method                    a missing modality ...
========================  ==========================================================
``early``, ``concat``     is replaced by a learned "missing" embedding; presence bits are appended
``sum``                   is left out of a mean over the present ones
``product``               contributes ones (the identity of the product)
``tensor``, ``low_rank``  contributes the constant-only vector [0, ..., 0, 1]
``gated``                 gets a gate logit of -inf (weight 0 after the softmax)
``film``                  modulates with the identity (gamma = 1, beta = 0); a missing
                          base modality is replaced by a learned embedding
``cross_attention``       is masked out of the attention (``key_padding_mask``); a learned
                          null token is always there to attend to
``late``                  is left out of the mean of the per-modality logits
========================  ==========================================================

:class:`FusionModel` puts encoders, a fusion and a classifier head together
(and drops modalities at random while training); :class:`FeatureDataset`
holds features cached from frozen encoders so that fusion methods train in
seconds on identical inputs.

Shape letters: B batch, N samples, M modalities, D_m width of modality m's
features, H hidden width, K per-modality width inside tensor fusion, R rank,
C classes, L tokens, V vocabulary size.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_int
from .data.dataset import BatchedDataset
from .data.text import bag_of_words
from .modality import ModalityDropout, check_keys, check_modalities, check_tensor, presence_of

STANDARDIZE_EPS = 1e-5     # added to the variance before dividing by it (as in BatchNorm): constant columns stay finite
MISSING_INIT_STD = 0.02    # learned "missing" / null embeddings start small and random (as BERT's embeddings)
TENSOR_PROJ_DIM = 8        # tensor fusion: (8 + 1)^3 = 729 products for three modalities
LOW_RANK = 4               # low-rank fusion: the rank Liu et al. (2018) found sufficient on their tasks
ATTENTION_HEADS = 4


def _embedding(*shape: int) -> nn.Parameter:
    """A learned vector (or tensor) for something absent: missing modality, null token."""
    return nn.Parameter(torch.randn(*shape) * MISSING_INIT_STD)


class Fusion(nn.Module):
    """Base class: validates the inputs once, then calls :meth:`fuse` with features in modality order.

    Attributes:
        modalities: sorted modality names; ``present[:, j]`` refers to ``modalities[j]``.
        in_dims: name -> D_m, the width of each modality's features.
        out_dim: width of the fused vector (H, or C for a fusion that outputs logits).
        outputs_logits: True if the output already holds class logits (no head needed).
    """

    outputs_logits: bool = False

    def __init__(self, in_dims: Mapping[str, int], out_dim: int):
        super().__init__()
        if not isinstance(in_dims, Mapping):
            raise TypeError(f"in_dims must be a dict {{modality: width}}, got {type(in_dims).__name__}")
        if not in_dims:
            raise ValueError("in_dims must name at least one modality, got an empty dict")
        self.modalities = check_modalities(sorted(in_dims))
        for m in self.modalities:
            if not m or "." in m:
                raise ValueError(f"modality names must be non-empty and contain no '.', got {m!r}")
            check_int(in_dims[m], f"in_dims[{m!r}]")
        self.in_dims = {m: in_dims[m] for m in self.modalities}
        self.out_dim = check_int(out_dim, "out_dim")

    def forward(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse ``features`` {name: (B, D_m)} under ``present`` (B, M) bool (None: all present) -> (B, out_dim).

        A key may be absent (the modality is missing for the whole batch); ``present`` must then
        mark it absent (its column False), and with ``present=None`` it is.

        Raises:
            TypeError: if ``features`` is not a dict of tensors, or ``present`` not a bool tensor.
            ValueError: for unknown modalities, no modality at all, a wrong shape or dtype, a mask
                that is not (B, M), or a mask that marks an absent key present.
        """
        feats, present = self.check_inputs(features, present)
        return self.fuse(feats, present)

    def check_inputs(self, features, present) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Validated features as a list in ``modalities`` order, and the mask (B, M) bool on their device.

        An absent key (a modality missing for the whole batch, :mod:`mmcourse.modality`) gets the
        mask column False and, in the list, a placeholder of zeros (B, D_m) so that every method
        keeps one code path; the mask excludes it from the output (tested for every method:
        changing an absent modality's features changes nothing).
        """
        given = check_keys(features, self.modalities, what="features")
        for m in given:
            check_tensor(features[m], f"features[{m!r}]", 2, float_=True, trailing=(self.in_dims[m],))
        present = presence_of(features, self.modalities, present)
        ref = features[given[0]]
        feats = [features[m] if m in features else ref.new_zeros(len(ref), self.in_dims[m]) for m in self.modalities]
        return feats, present

    def fuse(self, feats: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Fuse checked features [(B, D_m)] in modality order under ``present`` (B, M) -> (B, out_dim)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


def _column(present: torch.Tensor, j: int) -> torch.Tensor:
    """Presence of modality j as (B, 1), ready to broadcast over a feature axis."""
    return present[:, j : j + 1]


def _masked_average(z: torch.Tensor, weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Sum over modalities of weights * z, absent ones excluded exactly: (B, M, H), (B, M), (B, M) -> (B, H)."""
    z = z.masked_fill(~present.unsqueeze(-1), 0.0)  # so that even inf or NaN of an absent modality cannot leak
    return (weights.unsqueeze(-1).to(z.dtype) * z).sum(1)


def _uniform_weights(present: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 / (number present) for present modalities, 0 for absent ones: (B, M) -> (B, M); a row with none gives 0."""
    p = present.to(dtype)
    return p / p.sum(1, keepdim=True).clamp_min(1.0)


def _with_one(z: torch.Tensor, present_j: torch.Tensor) -> torch.Tensor:
    """[z; 1] where present, the constant-only vector [0, ..., 0, 1] where absent: (B, K), (B, 1) -> (B, K + 1)."""
    one = torch.ones_like(z[:, :1])
    return torch.cat([z.masked_fill(~present_j, 0.0), one], dim=1)


class ConcatFusion(Fusion):
    """Concatenation of the features, then ``layers`` Linear + ReLU layers to H (the article's fusion, §4.2).

    A missing modality's features are replaced by a learned embedding (``missing[m]``, (D_m,)),
    and the M presence bits are appended, so the model always knows what it was given.

    Args:
        in_dims: name -> D_m.
        hidden: H.
        layers: number of Linear + ReLU layers (1: the article's fusion layer; 0: none, the output is
            the concatenation itself, width sum D_m + M, so that the model's head is a linear probe).
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, layers: int = 1):
        check_int(layers, "layers", minimum=0)
        width = sum(in_dims.values()) + len(in_dims) if isinstance(in_dims, Mapping) else hidden
        super().__init__(in_dims, hidden if layers else width)
        self.missing = nn.ParameterDict({m: _embedding(d) for m, d in self.in_dims.items()})
        widths = [sum(self.in_dims.values()) + len(self.modalities)] + [hidden] * layers
        self.mlp = nn.Sequential(*[layer for a, b in zip(widths, widths[1:]) for layer in (nn.Linear(a, b), nn.ReLU())])

    def fuse(self, feats, present):
        parts = [torch.where(_column(present, j), f, self.missing[m])       # (B, D_m)
                 for j, (m, f) in enumerate(zip(self.modalities, feats))]
        x = torch.cat(parts + [present.to(parts[0].dtype)], dim=1)         # (B, sum D_m + M)
        return self.mlp(x)                                                 # (B, H)


class EarlyFusion(ConcatFusion):
    """Input-level (early) fusion: the same concatenation, applied to raw flattened inputs, then an MLP.

    The model has no per-modality encoder: :class:`FusionModel` flattens each raw
    input (image (B, 3, S, S) -> (B, 3 S^2)); text must first become a fixed-width
    vector, e.g. with :class:`BagOfWords`. Two hidden layers by default, since the
    MLP is the whole model.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, layers: int = 2):
        super().__init__(in_dims, hidden, layers)


class SumFusion(Fusion):
    """Each modality projected to H (Linear + ReLU), then the mean over the present modalities.

    A missing modality is left out of the mean (the others are re-weighted);
    a sample with no modality gives the zero vector, so the head answers its bias.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU())
                                      for m, d in self.in_dims.items()})

    def weights(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """The weight of each modality in the fused vector: (B, M), summing to 1 over present ones."""
        return self._weights(*self.check_inputs(features, present))

    def _weights(self, feats, present) -> torch.Tensor:
        return _uniform_weights(present, feats[0].dtype)

    def fuse(self, feats, present):
        z = torch.stack([self.project[m](f) for m, f in zip(self.modalities, feats)], dim=1)  # (B, M, H)
        return _masked_average(z, self._weights(feats, present), present)                     # (B, H)


class GatedFusion(SumFusion):
    """Dynamic fusion (the article's 动态融合): weights computed from the input weigh each modality per sample.

    Like ``sum``, but modality m's weight is ``softmax_m(w_m . f_m + b_m)`` over the
    present modalities (a missing one gets the logit -inf), so the model can lean
    on whichever modality is informative for this sample (cf. Arevalo et al. 2017,
    "Gated Multimodal Units for Information Fusion"). :meth:`weights` returns them.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int):
        super().__init__(in_dims, hidden)
        self.gate = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in self.in_dims.items()})

    def _weights(self, feats, present) -> torch.Tensor:
        logits = torch.cat([self.gate[m](f) for m, f in zip(self.modalities, feats)], dim=1)  # (B, M)
        logits = logits.masked_fill(~present, float("-inf"))
        # A row with nothing present would be softmax(-inf, ...) = NaN: give it zeros (weights 0 below).
        logits = torch.where(present.any(1, keepdim=True), logits, 0.0)
        return torch.softmax(logits, dim=1) * present


class ProductFusion(Fusion):
    """Elementwise product of tanh projections: prod over present m of tanh(W_m f_m + b_m), (B, H).

    A missing modality contributes ones, the identity of the product (as in the
    Hadamard-product pooling of Kim et al. 2017, "Hadamard Product for Low-rank
    Bilinear Pooling"). The product lets modalities interact multiplicatively.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int):
        super().__init__(in_dims, hidden)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})

    def fuse(self, feats, present):
        out = None
        for j, (m, f) in enumerate(zip(self.modalities, feats)):
            z = torch.tanh(self.project[m](f)).masked_fill(~_column(present, j), 1.0)  # (B, H)
            out = z if out is None else out * z
        return out


class TensorFusion(Fusion):
    """Tensor Fusion Network (Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis").

    Each modality is projected to K dims, extended with a constant 1, and the
    outer product of the M vectors [z_m; 1] (all products of one entry per
    modality: unimodal, bimodal and trimodal terms) is flattened to
    prod (K + 1) values, then Linear + ReLU to H. The projection keeps the
    product small: (K + 1)^3 = 729 for K = 8, where (128 + 1)^3 would be 2.1 M.
    A missing modality contributes [0, ..., 0, 1], which keeps exactly the
    terms that do not involve it.

    Args:
        proj_dim: K.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, proj_dim: int = TENSOR_PROJ_DIM):
        super().__init__(in_dims, hidden)
        k = check_int(proj_dim, "proj_dim")
        self.project = nn.ModuleDict({m: nn.Linear(d, k) for m, d in self.in_dims.items()})
        self.out = nn.Sequential(nn.Linear((k + 1) ** len(self.modalities), hidden), nn.ReLU())

    def outer(self, feats, present) -> torch.Tensor:
        """The flattened outer product of [z_m; 1] over modalities: (B, (K + 1)^M)."""
        t = None
        for j, (m, f) in enumerate(zip(self.modalities, feats)):
            z = _with_one(self.project[m](f), _column(present, j))              # (B, K + 1)
            t = z if t is None else (t.unsqueeze(2) * z.unsqueeze(1)).flatten(1)
        return t

    def fuse(self, feats, present):
        return self.out(self.outer(feats, present))


class LowRankFusion(Fusion):
    """Low-rank Multimodal Fusion (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with
    Modality-Specific Factors").

    The weight tensor of tensor fusion, factored into R rank-one terms, is applied
    without ever forming the outer product:
    ``h = ReLU(sum_r prod_m ([f_m; 1] @ W_m[r]) + b)`` with factors W_m (R, D_m + 1, H).
    Its cost is linear in the number of modalities, so it works on the features
    directly (no projection). A missing modality contributes [0, ..., 0, 1],
    i.e. the last row of its factors, as in tensor fusion. (The paper's
    per-rank weights are absorbed into the factors.)

    Args:
        rank: R.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, rank: int = LOW_RANK):
        super().__init__(in_dims, hidden)
        r = check_int(rank, "rank")
        # Each factor maps an O(1) vector to O(1) values, so their product stays O(1) for any M.
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.randn(r, d + 1, hidden) / (d + 1) ** 0.5)
                                         for m, d in self.in_dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden))

    def fuse(self, feats, present):
        prod = None
        for j, (m, f) in enumerate(zip(self.modalities, feats)):
            x = _with_one(f, _column(present, j))                                      # (B, D_m + 1)
            a = torch.einsum("bd,rdh->brh", x, self.factors[m])                          # (B, R, H)
            prod = a if prod is None else prod * a
        return torch.relu(prod.sum(1) + self.bias)                                     # (B, H)


class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer").

    The ``base`` modality is projected to H and modulated, one present conditioning
    modality at a time (sorted order), by ``h <- gamma_m * h + beta_m`` with
    ``(gamma_m - 1, beta_m) = Linear(f_m)`` (predicting gamma - 1 starts the layer
    near the identity); then ReLU. A missing conditioning modality applies the
    identity (gamma = 1, beta = 0); a missing base is replaced by a learned embedding.

    Args:
        base: the modulated modality (default "image").
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, base: str = "image"):
        super().__init__(in_dims, hidden)
        if base not in self.in_dims:
            raise ValueError(f"base {base!r} is not one of the modalities {list(self.modalities)}")
        self.base = base
        self.project = nn.Linear(self.in_dims[base], hidden)
        self.missing = nn.ParameterDict({base: _embedding(hidden)})
        self.film = nn.ModuleDict({m: nn.Linear(d, 2 * hidden) for m, d in self.in_dims.items() if m != base})

    def fuse(self, feats, present):
        j_base = self.modalities.index(self.base)
        h = torch.where(_column(present, j_base), self.project(feats[j_base]), self.missing[self.base])  # (B, H)
        for j, (m, f) in enumerate(zip(self.modalities, feats)):
            if m == self.base:
                continue
            delta_gamma, beta = self.film[m](f).chunk(2, dim=1)                    # (B, H) each
            h = torch.where(_column(present, j), (1 + delta_gamma) * h + beta, h)
        return torch.relu(h)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base!r}"


class CrossAttentionFusion(Fusion):
    """A learned query token attends over one token per modality (Vaswani et al. 2017 attention).

    Token m is ``Linear(f_m) + type_m`` (a learned modality-type embedding). The keys
    are [null; token_1 .. token_M]: absent modalities are masked out
    (``key_padding_mask``) and the learned null token is always present, so a
    sample with no modality still gets a defined output. The attended vector goes
    through Linear + ReLU to H.

    Args:
        heads: attention heads (must divide H).
    """

    def __init__(self, in_dims: Mapping[str, int], hidden: int, heads: int = ATTENTION_HEADS):
        super().__init__(in_dims, hidden)
        if hidden % check_int(heads, "heads"):
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.in_dims.items()})
        self.type_embedding = _embedding(len(self.modalities), hidden)   # (M, H)
        self.query = _embedding(1, 1, hidden)
        self.null = _embedding(1, 1, hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())

    def _attend(self, feats, present, need_weights: bool):
        b = len(feats[0])
        tokens = torch.stack([self.project[m](f) for m, f in zip(self.modalities, feats)], 1)  # (B, M, H)
        # Masked keys get attention weight exactly 0; zeroing them too keeps inf/NaN out of the scores.
        tokens = (tokens + self.type_embedding).masked_fill(~present.unsqueeze(-1), 0.0)
        keys = torch.cat([self.null.expand(b, -1, -1), tokens], 1)                             # (B, 1 + M, H)
        padding = torch.cat([torch.zeros_like(present[:, :1]), ~present], 1)                   # (B, 1 + M)
        query = self.query.expand(b, -1, -1)                                                   # (B, 1, H)
        return self.attention(query, keys, keys, key_padding_mask=padding, need_weights=need_weights)

    def weights(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the query, averaged over heads: (B, 1 + M), column 0 the null token."""
        _, weights = self._attend(*self.check_inputs(features, present), need_weights=True)
        return weights.squeeze(1)

    def fuse(self, feats, present):
        attended, _ = self._attend(feats, present, need_weights=False)   # (B, 1, H)
        return self.mlp(attended.squeeze(1))                             # (B, H)


class LateFusion(Fusion):
    """Late (decision-level) fusion: one classifier per modality, logits averaged over the present modalities.

    Each head is Linear + ReLU + Linear (D_m -> H -> C). A missing modality is left
    out of the mean; a sample with no modality gets zero logits (a uniform guess).
    The output is already class logits (``outputs_logits``, ``out_dim`` = C).
    """

    outputs_logits = True

    def __init__(self, in_dims: Mapping[str, int], hidden: int, num_classes: int):
        super().__init__(in_dims, num_classes)
        check_int(hidden, "hidden")
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
                                    for m, d in self.in_dims.items()})

    def fuse(self, feats, present):
        logits = torch.stack([self.heads[m](f) for m, f in zip(self.modalities, feats)], dim=1)  # (B, M, C)
        return _masked_average(logits, _uniform_weights(present, logits.dtype), present)        # (B, C)


FUSIONS: dict[str, type[Fusion]] = {
    "early": EarlyFusion,
    "concat": ConcatFusion,
    "sum": SumFusion,
    "product": ProductFusion,
    "tensor": TensorFusion,
    "low_rank": LowRankFusion,
    "gated": GatedFusion,
    "film": FiLMFusion,
    "cross_attention": CrossAttentionFusion,
    "late": LateFusion,
}


def make_fusion(name: str, in_dims: Mapping[str, int], hidden: int, num_classes: int, **options) -> Fusion:
    """Build the fusion called ``name`` (a key of ``FUSIONS``); ``options`` go to its constructor.

    ``num_classes`` is used by fusions that output logits (``late``); the others
    output (B, H) and leave the head to :class:`FusionModel`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid: {', '.join(FUSIONS)}")
    cls = FUSIONS[name]
    if cls.outputs_logits:
        return cls(in_dims, hidden, num_classes, **options)
    return cls(in_dims, hidden, **options)


class BagOfWords(nn.Module):
    """Raw text as a fixed-width vector for early fusion: token counts (B, L) int64 -> (B, V) float32.

    Parameter-free; padding (``PAD_ID``) is not counted.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = check_int(vocab_size, "vocab_size")

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return bag_of_words(text, self.vocab_size)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}"


class FusionModel(nn.Module):
    """Encoders, a fusion and a classifier head: ``inputs`` {name: (B, ...)} -> logits (B, C).

    ``inputs`` may lack modalities (absent keys: missing for the whole batch), and a
    presence mask (B, M) may mark modalities missing for some samples.

    Args:
        fusion: any :class:`Fusion`; its ``modalities`` are the inputs the model expects.
        num_classes: C.
        encoders: name -> module mapping the raw input to (B, D_m); a modality without
            one is taken as ready features, flattened to (B, D_m) if it has more dims.
        modality_dropout: while training, drop each modality of each sample with this
            probability (:class:`mmcourse.modality.ModalityDropout`, at least one kept).

    The head is ``Linear(fusion.out_dim, C)``, or nothing when the fusion outputs logits.
    Works with :func:`mmcourse.training.fit`, which calls ``model(inputs)``.
    """

    def __init__(self, fusion: Fusion, num_classes: int, encoders: Mapping[str, nn.Module] | None = None,
                 modality_dropout: float = 0.0):
        super().__init__()
        if not isinstance(fusion, Fusion):
            raise TypeError(f"fusion must be a Fusion, got {type(fusion).__name__}")
        encoders = dict(encoders or {})
        unknown = sorted(set(encoders) - set(fusion.modalities))
        if unknown:
            raise ValueError(f"encoders for unknown modalities {unknown}; the fusion has {list(fusion.modalities)}")
        check_int(num_classes, "num_classes")
        if fusion.outputs_logits and fusion.out_dim != num_classes:
            raise ValueError(f"the fusion outputs {fusion.out_dim} logits, but num_classes is {num_classes}")
        self.fusion = fusion
        self.encoders = nn.ModuleDict({m: encoders.get(m, nn.Flatten()) for m in fusion.modalities})
        self.modality_dropout = ModalityDropout(modality_dropout)
        self.head = nn.Identity() if fusion.outputs_logits else nn.Linear(fusion.out_dim, num_classes)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The sorted modality names (columns of ``present``)."""
        return self.fusion.modalities

    def features(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each given modality through its encoder: {name: (B, D_m)}; an absent key stays absent (not encoded)."""
        return {m: self.encoders[m](inputs[m]) for m in check_keys(inputs, self.modalities, what="inputs")}

    def classify(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from encoded features {name: (B, D_m)} (keys may be absent) and an optional mask (B, M).

        Modality dropout applies in training only, and never to an absent modality.
        """
        present = self.modality_dropout(presence_of(features, self.modalities, present))
        return self.head(self.fusion(features, present))

    def forward(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from ``inputs`` {name: (B, ...)} and an optional presence mask (B, M) bool.

        A modality missing for the whole batch is an absent key (its encoder does not run);
        one missing for some samples is False in ``present`` (:mod:`mmcourse.modality`).
        """
        return self.classify(self.features(inputs), present)


class FeatureDataset(BatchedDataset):
    """Cached features of N samples, served in whole batches ``({name: (B, D_m)}, labels (B,))``.

    Use it with :func:`mmcourse.data.make_loader` to train fusion methods on the
    features of frozen encoders: every method then sees identical inputs. Build it
    with :func:`mmcourse.encoders.encode`, e.g.
    ``FeatureDataset({m: encode(enc, data, device) for m, enc in encoders.items()}, data.labels)``.

    Args:
        features: name -> (N, ...) tensor (usually (N, D_m)).
        labels: (N,) int64.
    """

    def __init__(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor):
        if not isinstance(features, Mapping) or not features:
            raise ValueError("features must be a non-empty dict {modality: (N, D_m) tensor}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            raise ValueError(f"labels must be a tensor (N,), got {getattr(labels, 'shape', type(labels).__name__)}")
        sizes = {m: len(x) for m, x in features.items()}
        if any(n != len(labels) for n in sizes.values()):
            raise ValueError(f"every modality needs one row per label (N = {len(labels)}), got {sizes}")
        self.features = {m: features[m] for m in sorted(features)}
        self.labels = labels

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """What :class:`BatchedDataset` batches: the features {name: (N, D_m)}."""
        return self.features

    def standardize(self, reference: FeatureDataset | None = None) -> FeatureDataset:
        """A copy with every feature column shifted and scaled to mean 0, variance 1 over ``reference``.

        Pass the training set as ``reference`` when standardising dev and test data,
        so that all splits share the training statistics. Multiplicative fusions
        (product, tensor, low-rank) train best on features of order 1.
        """
        reference = self if reference is None else reference
        check_keys(self.features, reference.features, required=reference.features, what="features")
        out = {}
        for m, x in self.features.items():
            ref = reference.features[m].float()
            out[m] = (x - ref.mean(0)) / (ref.var(0, unbiased=False) + STANDARDIZE_EPS).sqrt()
        return FeatureDataset(out, self.labels)

