"""Losses: cross-entropy built from log-sum-exp, the article's §4.3 penalised loss,
and the symmetric contrastive loss of CLIP.

- :func:`logsumexp`, :func:`naive_cross_entropy` and :func:`cross_entropy` show why
  every framework computes ``log softmax(z) = z - logsumexp(z)`` and never divides
  exponentials (the naive form overflows for logits of a few hundred).
- :class:`LinearFusionClassifier`, :func:`feature_penalty`, :func:`penalised_loss` and
  :func:`weight_penalty` are the article's worked case (§4.3): linear fusion of a
  text and an image feature, a linear classifier, and cross-entropy plus
  ``lam`` times the squared norm of the fused feature.
- :func:`contrastive_loss_from_logits`, :func:`info_nce` and :class:`ContrastiveLoss`
  are the symmetric InfoNCE loss with a learnable temperature (Radford et al.,
  2021, "Learning Transferable Visual Models From Natural Language
  Supervision"), used from chapter 06 on.

Shape letters: B batch, C classes, D feature width, d fused width,
d_t text feature width, d_i image feature width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_int, check_probability

# CLIP initialises the temperature at 0.07 and learns its logarithm (the logit
# scale is 1 / temperature); it clips the scale at 100 to keep training stable
# (Radford et al., 2021).
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)

REDUCTIONS = ("mean", "sum", "none")


# --- log-sum-exp and cross-entropy -------------------------------------------

def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """``log(sum(exp(x)))`` along ``dim``, computed without overflow.

    With ``m = max(x)``: ``log sum exp(x) = m + log sum exp(x - m)``. Every
    ``x - m`` is <= 0, so no exponential overflows and the largest one is 1,
    so the sum is >= 1 and its logarithm is finite. A row of ``-inf`` gives
    ``-inf`` (as :func:`torch.logsumexp` does): its shift is taken as 0.

    Args:
        x: any floating tensor, e.g. logits (B, C).
        dim: the axis to reduce.
        keepdim: keep the reduced axis with size 1.

    Returns:
        ``x`` with ``dim`` reduced, e.g. (B,) (or (B, 1) with ``keepdim``).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise TypeError(f"x must be a floating tensor with at least one axis, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')} of shape {tuple(getattr(x, 'shape', ()))}")
    # The shift is a constant: detached, so the gradient is exactly softmax(x).
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf (or +inf): no shift
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor (B, C), got {getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, C) with B, C >= 1, got shape {tuple(logits.shape)}")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        raise TypeError(f"target must be an int64 tensor of class indices (B,), "
                        f"got {getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be (B,) = ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
                         f"got shape {tuple(target.shape)}")
    num_classes = logits.shape[1]
    if bool(((target < 0) | (target >= num_classes)).any()):  # one host synchronisation
        raise ValueError(f"target holds class indices outside [0, {num_classes}): "
                         f"min {int(target.min())}, max {int(target.max())}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def naive_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy through an explicit softmax, ``-log(exp(z_y) / sum_c exp(z_c))``.

    UNSTABLE, kept to show why nobody computes it this way: ``exp`` overflows to
    ``inf`` for float32 logits above about 88.7, and ``inf / inf`` is ``nan``;
    a very negative logit underflows to 0 and ``-log(0)`` is ``inf``. Use
    :func:`cross_entropy`.

    Args:
        logits: (B, C) unnormalised class scores.
        target: (B,) int64 class indices in [0, C).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample, (B,)).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.
    """
    _check_logits_target(logits, target)
    _check_reduction(reduction)
    e = torch.exp(logits)                                     # (B, C), may be inf
    p = e / e.sum(dim=1, keepdim=True)                        # (B, C), may be nan
    return _reduce(-torch.log(p.gather(1, target[:, None]).squeeze(1)), reduction)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log p = z - logsumexp(z)``: the log-probabilities, finite for any finite logits."""
    return logits - logsumexp(logits, dim=dim, keepdim=True)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                  weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy from log-sum-exp, with the semantics of :func:`torch.nn.functional.cross_entropy`.

    Per sample, with ``log p = z - logsumexp(z)``, smoothing ``e`` and class weights ``w``
    (all ones when ``weight`` is None)::

        l_i = (1 - e) * w[y_i] * (-log p[i, y_i])  +  (e / C) * sum_c w[c] * (-log p[i, c])

    ``"mean"`` divides the sum of ``l_i`` by ``sum_i w[y_i]`` (by B without weights),
    exactly as PyTorch does, so a weighted mean is not the plain mean of ``l_i``.

    Args:
        logits: (B, C) unnormalised class scores.
        target: (B,) int64 class indices in [0, C) (checked: one host synchronisation).
        label_smoothing: e in [0, 1): mass moved from the true class to a uniform target.
        weight: optional (C,) non-negative class weights.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample, (B,)).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Raises:
        ValueError: on wrong shapes, out-of-range targets, ``label_smoothing``
            outside [0, 1) or an unknown reduction.
        TypeError: on non-floating logits or a non-int64 target.
    """
    _check_logits_target(logits, target)
    _check_reduction(reduction)
    check_probability(label_smoothing, "label_smoothing", below_one=True)
    num_classes = logits.shape[1]
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != (num_classes,)):
        raise ValueError(f"weight must be a tensor (C,) = ({num_classes},), "
                         f"got shape {tuple(getattr(weight, 'shape', ()))}")
    log_p = log_softmax(logits, dim=1)                                    # (B, C)
    nll = -log_p.gather(1, target[:, None]).squeeze(1)                    # (B,)
    if weight is None:
        w_target, smooth = torch.ones_like(nll), -log_p.sum(dim=1)        # (B,), (B,)
    else:
        weight = weight.to(log_p.dtype)
        w_target, smooth = weight[target], -(log_p * weight).sum(dim=1)   # (B,), (B,)
    per_sample = (1 - label_smoothing) * w_target * nll + (label_smoothing / num_classes) * smooth
    if reduction == "mean":
        return per_sample.sum() / w_target.sum()
    return _reduce(per_sample, reduction)


# --- the article's worked case (§4.3) ----------------------------------------

class LinearFusionClassifier(nn.Module):
    """The article's §4.3 model with its dimension problem resolved.

    The article writes ``x = [x_t, x_i] W`` (fusion) and ``y = softmax(W x)``
    (classification) with one matrix ``W``; that needs ``d_t + d_i = d = C``.
    Here two matrices do the two jobs: ``fuse`` (W_f, (d_t + d_i) -> d) and
    ``classify`` (W_c, d -> C). Both are linear maps without bias, as in the
    article's formulas, unless ``bias=True``.

    Args:
        text_dim: d_t, width of the text feature.
        image_dim: d_i, width of the image feature.
        fused_dim: d, width of the fused representation x.
        num_classes: C.
        bias: add a bias to both maps.
    """

    def __init__(self, text_dim: int, image_dim: int, fused_dim: int, num_classes: int, bias: bool = False):
        super().__init__()
        for name, value in {"text_dim": text_dim, "image_dim": image_dim,
                            "fused_dim": fused_dim, "num_classes": num_classes}.items():
            check_int(value, name)
        self.text_dim, self.image_dim = text_dim, image_dim
        self.fuse = nn.Linear(text_dim + image_dim, fused_dim, bias=bias)   # W_f
        self.classify = nn.Linear(fused_dim, num_classes, bias=bias)       # W_c

    def forward(self, text_features: torch.Tensor, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse and classify.

        Args:
            text_features: (B, d_t).
            image_features: (B, d_i).

        Returns:
            ``(logits, fused)``: (B, C) and (B, d).
        """
        expected = {"text_features": self.text_dim, "image_features": self.image_dim}
        for name, x in (("text_features", text_features), ("image_features", image_features)):
            if x.dim() != 2 or x.shape[1] != expected[name]:
                raise ValueError(f"{name} must be (B, {expected[name]}), got shape {tuple(x.shape)}")
        if text_features.shape[0] != image_features.shape[0]:
            raise ValueError(f"text_features and image_features must have the same batch size, got "
                             f"{tuple(text_features.shape)} and {tuple(image_features.shape)}")
        fused = self.fuse(torch.cat([text_features, image_features], dim=1))   # (B, d)
        return self.classify(fused), fused                                     # (B, C), (B, d)


def feature_penalty(fused: torch.Tensor) -> torch.Tensor:
    """The article's regulariser without its coefficient: the batch mean of ``sum_j x_j**2``.

    Args:
        fused: (B, d) fused representations.

    Returns:
        A scalar.
    """
    if not isinstance(fused, torch.Tensor) or fused.dim() != 2 or fused.shape[0] == 0:
        raise ValueError(f"fused must be (B, d) with B >= 1, got shape {tuple(getattr(fused, 'shape', ()))}")
    return fused.pow(2).sum(dim=1).mean()


def penalised_loss(logits: torch.Tensor, fused: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """The article's loss: ``-log p(y) + lam * sum_j x_j**2``, averaged over the batch.

    Args:
        logits: (B, C) class scores.
        fused: (B, d) fused representations that produced them.
        target: (B,) int64 class indices.
        lam: the regularisation coefficient, >= 0.

    Returns:
        A scalar: ``cross_entropy(logits, target) + lam * feature_penalty(fused)``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if fused.dim() != 2 or fused.shape[0] != logits.shape[0]:
        raise ValueError(f"fused must be (B, d) with B = {logits.shape[0]} as in logits {tuple(logits.shape)}, "
                         f"got shape {tuple(fused.shape)}")
    return cross_entropy(logits, target) + lam * feature_penalty(fused)


def weight_penalty(module: nn.Module, lam: float) -> torch.Tensor:
    """The usual alternative, an L2 penalty on parameters: ``lam * sum theta**2`` over weight matrices.

    Biases and other 1-D parameters (e.g. normalisation gains) are left out, as is
    common practice. The gradient is ``2 * lam * theta``: the same as the
    optimisers' ``weight_decay = 2 * lam`` for SGD (for Adam, its ``weight_decay``
    adds to the gradient too, but AdamW decays the weights directly instead).

    Args:
        module: the model whose weights are penalised.
        lam: the coefficient, >= 0.

    Returns:
        A scalar (0 when the module has no weight matrix).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    weights = [p for p in module.parameters() if p.dim() >= 2]
    if not weights:
        return torch.zeros(())
    return lam * sum(w.pow(2).sum() for w in weights)


# --- symmetric contrastive loss (InfoNCE, CLIP) -------------------------------

def contrastive_loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of row-wise and column-wise cross-entropy.

    Row i of ``logits`` scores item i of one modality against every item of
    the other; the matching pair sits on the diagonal. Rows classify "which
    b matches a_i", columns "which a matches b_j".

    Args:
        logits: (B, B) similarity logits, matching pairs on the diagonal.

    Returns:
        A scalar; ``log(B)`` when every logit is equal.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != logits.shape[1] \
            or logits.shape[0] == 0:
        raise ValueError(f"logits must be square (B, B) with B >= 1, got shape {tuple(getattr(logits, 'shape', ()))}")
    target = torch.arange(logits.shape[0], device=logits.device)        # (B,)
    return (cross_entropy(logits, target) + cross_entropy(logits.T, target)) / 2


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings (CLIP's loss, Radford et al., 2021).

    Args:
        a: (B, D) embeddings of one modality (L2-normalised here).
        b: (B, D) embeddings of the other; row i of ``b`` pairs with row i of ``a``.
        logit_scale: log of the inverse temperature, ``log(1 / tau)`` (float or scalar tensor);
            the logits are ``cos(a_i, b_j) / tau = exp(logit_scale) * cos(a_i, b_j)``.

    Returns:
        A scalar.
    """
    if a.dim() != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"a and b must both be (B, D) with B >= 1, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a = nn.functional.normalize(a, dim=1)                                # (B, D)
    b = nn.functional.normalize(b, dim=1)                                # (B, D)
    scale = torch.as_tensor(logit_scale, dtype=a.dtype, device=a.device).exp()
    return contrastive_loss_from_logits(scale * a @ b.T)                 # (B, B) logits


class ContrastiveLoss(nn.Module):
    """InfoNCE with a learnable temperature, initialised and capped as in CLIP.

    The parameter ``logit_scale`` is ``t = log(1 / tau)`` and starts at ``log(1 / 0.07)``; ``forward``
    divides the cosines by ``tau = exp(-min(t, log(100)))``, so ``tau`` never falls below 0.01 while
    ``t`` keeps its gradient whenever it is below the cap.

    Args:
        init_logit_scale: initial log inverse temperature.
        max_logit_scale: cap on the log inverse temperature.
    """

    def __init__(self, init_logit_scale: float = DEFAULT_LOGIT_SCALE, max_logit_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        if init_logit_scale > max_logit_scale:
            raise ValueError(f"init_logit_scale ({init_logit_scale}) must not exceed max_logit_scale "
                             f"({max_logit_scale})")
        self.max_logit_scale = max_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    @property
    def temperature(self) -> float:
        """The temperature in use, ``1 / exp(min(logit_scale, max))``."""
        return math.exp(-min(float(self.logit_scale.detach()), self.max_logit_scale))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Loss of paired embeddings a (B, D), b (B, D): a scalar."""
        return info_nce(a, b, self.logit_scale.clamp(max=self.max_logit_scale))
