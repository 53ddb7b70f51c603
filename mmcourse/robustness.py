"""Robustness: missing and noisy modalities, and how to measure them.

Missing modalities follow :mod:`mmcourse.modality`: an absent key, or a presence
mask ``present`` (B, M) bool whose column j refers to ``modalities[j]`` (sorted,
the order of :attr:`mmcourse.fusion.Fusion.modalities`); the masks themselves
(:func:`~mmcourse.modality.sample_presence`, :func:`~mmcourse.modality.presence_without`,
:class:`~mmcourse.modality.ModalityDropout`) live there.

- :func:`corrupt` and :func:`corrupt_inputs` make a modality *noisy* instead of
  absent: a fraction of its rows is replaced by the same modality of another
  sample of the batch, so the noise has exactly the statistics of real inputs;
- :func:`evaluate`, :func:`missing_modality_table`, :func:`missing_rate_curve`
  and :func:`noise_rate_curve` measure accuracy under both.

Random draws take an optional CPU ``torch.Generator`` and always draw the same
number of numbers for the same shapes, so a seed fixes every mask and every
corrupted row, on any device.

Shape letters: B batch, M modalities.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .checks import check_probability
from .data.bayes import all_subsets
from .modality import check_keys, check_modalities, check_rates, presence_without, sample_presence
from .evaluation import run_batches
from .training import accuracy_on
from .utils import uniform

PresenceFn = Callable[[int, torch.device], torch.Tensor]  # (batch_size, device) -> (B, M) bool
CorruptFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


# --- noise ---

def corrupt(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of ``x`` with probability ``rate`` by the row of another sample of the batch.

    The replacement is a real input of another sample (row ``(i + k) mod B``,
    k uniform in 1..B-1, so never the row itself): the noise has exactly the
    statistics of the modality (same values, same dtype, token ids stay token
    ids) but carries no information about this sample. A model cannot detect
    it from its statistics, only from disagreement with the other modalities.

    Args:
        x: (B, ...) any dtype; B >= 2 when ``rate > 0``.
        rate: probability in [0, 1] that a row is replaced (independently per row).
        generator: optional CPU generator; 2 B numbers are drawn per call.

    Returns:
        (B, ...) a new tensor; ``x`` is left unchanged.

    Raises:
        ValueError: if ``rate`` is not in [0, 1], or ``x`` has fewer than 2 rows while ``rate > 0``.
    """
    rate = check_probability(rate, "rate")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a tensor (B, ...), got {type(x).__name__}")
    b = len(x)
    if rate == 0.0:
        return x.clone()
    if b < 2:
        raise ValueError(f"corrupt needs a batch of at least 2 rows to take another sample's row, "
                         f"got x of shape {tuple(x.shape)}")
    hit = uniform((b,), generator, x.device) < rate                           # (B,)
    offset = (uniform((b,), generator, x.device) * (b - 1)).long() + 1        # (B,) in 1..B-1
    source = (torch.arange(b, device=x.device) + offset) % b
    return torch.where(hit.view(b, *[1] * (x.dim() - 1)), x[source], x)


def corrupt_inputs(inputs: Mapping[str, torch.Tensor], rate: float, modalities: Sequence[str] | None = None,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """:func:`corrupt` each modality in ``modalities`` (default: all) independently at ``rate``.

    Returns:
        a new dict with the same keys; the other modalities are passed through.
    """
    names = check_keys(inputs, None) if modalities is None else check_modalities(modalities)
    check_keys(inputs, None, required=names, what="inputs (the modalities to corrupt)")
    return {m: corrupt(x, rate, generator) if m in names else x for m, x in inputs.items()}


# --- evaluation ---

class _Probe(nn.Module):
    """Wraps a model so that ``model(inputs)`` applies a presence mask and/or corruption (for ``predict``)."""

    def __init__(self, model: nn.Module, present_fn: PresenceFn | None, corrupt_fn: CorruptFn | None):
        super().__init__()
        self.model, self.present_fn, self.corrupt_fn = model, present_fn, corrupt_fn

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.corrupt_fn is not None:
            inputs = self.corrupt_fn(inputs)
        if self.present_fn is None:
            return self.model(inputs)
        first = next(iter(inputs.values()))
        return self.model(inputs, self.present_fn(len(first), first.device))


def evaluate(model: nn.Module, loader, device, present_fn: PresenceFn | None = None,
             corrupt_fn: CorruptFn | None = None) -> float:
    """Accuracy of ``model`` over ``loader`` with modalities masked and/or corrupted.

    Args:
        model: called as ``model(inputs, present)`` when ``present_fn`` is given, else ``model(inputs)``.
        loader: yields ``(inputs, label)`` batches.
        device: where the model runs.
        present_fn: ``present_fn(batch_size, device) -> (B, M) bool`` mask for each batch.
        corrupt_fn: ``corrupt_fn(inputs) -> inputs`` applied to each batch (on ``device``).

    Returns:
        the fraction of correct predictions (``mmcourse.training.accuracy_on``).
    """
    return accuracy_on(_Probe(model, present_fn, corrupt_fn), loader, device)


def _modalities_of(model: nn.Module, modalities) -> tuple[str, ...]:
    if modalities is None:
        modalities = getattr(model, "modalities", None)
        if modalities is None:
            raise ValueError(f"{type(model).__name__} has no .modalities attribute; pass modalities=")
    return check_modalities(modalities)


def missing_modality_table(model: nn.Module, loader, modalities: Sequence[str] | None,
                           device, subsets: Sequence[Sequence[str]] | None = None) -> dict[tuple[str, ...], float]:
    """Accuracy with only each subset of modalities present, the others masked: {sorted subset: accuracy}.

    Keys are sorted subsets, by default every non-empty one, smallest first, as in
    :func:`mmcourse.data.bayes.bayes_table`, so each entry can be set beside its exact
    Bayes limit. A model with ``features(inputs)`` and ``classify(features, present)``
    (:class:`mmcourse.fusion.FusionModel` and its subclasses) runs its encoders once per
    batch and only the fusion and head per subset, so the whole table costs little more
    than one evaluation; any other model is called as ``model(inputs, present)`` per subset.
    The model runs in eval mode; its train/eval mode is restored afterwards.

    Args:
        modalities: the model's sorted modality names (``None``: ``model.modalities``).
        subsets: the subsets to score, each a sorted tuple of names (default: all non-empty ones).
    """
    mods = _modalities_of(model, modalities)
    subsets = [s for s in all_subsets(mods) if s] if subsets is None else [tuple(s) for s in subsets]
    for s in subsets:
        if not s or list(s) != sorted(set(s)) or not set(s) <= set(mods):
            raise ValueError(f"each subset must be a non-empty sorted tuple of {mods}, got {s!r}")
    missing = {s: tuple(m for m in mods if m not in s) for s in subsets}
    if not (hasattr(model, "features") and hasattr(model, "classify")):
        return {s: evaluate(model, loader, device, present_fn=functools.partial(_masked_without, missing[s], mods))
                for s in subsets}

    def right_per_subset(model: nn.Module, batch) -> dict[tuple[str, ...], torch.Tensor]:
        inputs, labels = batch
        features, b = model.features(inputs), len(labels)                 # the encoders run once per batch
        return {s: model.classify(features, presence_without(b, mods, missing[s], device)).argmax(1) == labels
                for s in subsets}                                          # {subset: (B,) bool}

    right = run_batches(model, right_per_subset, loader, device)
    return {s: int(r.sum()) / len(r) for s, r in right.items()}


def _masked_without(missing, modalities, batch_size: int, device) -> torch.Tensor:
    return presence_without(batch_size, modalities, missing, device)


def _masked_at(rate: float, modalities, generator, batch_size: int, device) -> torch.Tensor:
    return sample_presence(batch_size, modalities, rate, generator, device)


def _corrupted_at(rate: float, modalities, generator, inputs):
    return corrupt_inputs(inputs, rate, modalities, generator)


def missing_rate_curve(model: nn.Module, loader, rates: Sequence, device, seed: int = 0,
                       modalities: Sequence[str] | None = None) -> list[float]:
    """Accuracy when each modality is missing independently at each rate (at least one kept per sample).

    Every rate reuses the same random numbers (common random numbers, so the
    curve is smooth): a modality drawn absent at rate r is drawn absent at every
    higher rate, before at most one per sample is put back. Deterministic for a
    seed and an unshuffled loader.

    Args:
        rates: each a float in [0, 1], or a dict name -> rate (see :func:`sample_presence`),
            e.g. ``[{"audio": r} for r in (0.0, 0.5, 1.0)]`` to remove only the audio.
        modalities: the model's sorted modality names (``None``: ``model.modalities``).

    Returns:
        one accuracy per rate.
    """
    mods = _modalities_of(model, modalities)
    for r in rates:
        check_rates(r, mods)  # check every rate before the first evaluation
    return [evaluate(model, loader, device, present_fn=functools.partial(
                _masked_at, r, mods, torch.Generator().manual_seed(seed)))
            for r in rates]


def noise_rate_curve(model: nn.Module, loader, rates: Sequence[float], device, seed: int = 0,
                     modalities: Sequence[str] | None = None) -> list[float]:
    """Accuracy when each modality in ``modalities`` (default: all) is :func:`corrupt`-ed at each rate.

    All modalities stay present (the model is not told which rows are noisy).
    Deterministic for a seed and an unshuffled loader; batches need >= 2 rows.

    Args:
        rates: floats in [0, 1].
        modalities: the (sorted) modalities to corrupt, each independently; ``None``: all.

    Returns:
        one accuracy per rate.
    """
    mods = None if modalities is None else check_modalities(modalities)
    return [evaluate(model, loader, device, corrupt_fn=functools.partial(
                _corrupted_at, check_probability(r, "rate"), mods, torch.Generator().manual_seed(seed)))
            for r in rates]
