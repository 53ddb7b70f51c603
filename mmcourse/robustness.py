"""Robustness: missing and noisy modalities, modality dropout, and how to measure them.

A *presence mask* ``present`` (B, M) bool says which modality each sample has:
column j refers to ``modalities[j]``, and ``modalities`` is always sorted (the
order of :attr:`mmcourse.fusion.Fusion.modalities`). Every function that takes
modality names checks that they are sorted, so a mask cannot silently refer to
the wrong columns.

- :func:`sample_presence`, :func:`presence_without` and :class:`ModalityDropout`
  make masks (random, fixed, and random only while training);
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

from .data.bayes import all_subsets
from .evaluation import run_batches
from .training import accuracy_on
from .utils import uniform

PresenceFn = Callable[[int, torch.device], torch.Tensor]  # (batch_size, device) -> (B, M) bool
CorruptFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


# --- checks shared with mmcourse.fusion ---

def check_modalities(modalities) -> tuple[str, ...]:
    """Validate modality names (a non-empty, sorted collection of distinct str) and return them as a tuple.

    Raises:
        TypeError: if ``modalities`` is a single str or holds a non-str.
        ValueError: if it is empty, has duplicates or is not sorted.
    """
    if isinstance(modalities, str):
        raise TypeError(f"modalities must be a collection of names, got a single str {modalities!r}; "
                        f"write ({modalities!r},)")
    mods = tuple(modalities)
    if not mods:
        raise ValueError("modalities must name at least one modality, got none")
    if not all(isinstance(m, str) for m in mods):
        raise TypeError(f"modality names must be str, got {mods!r}")
    if len(set(mods)) != len(mods) or list(mods) != sorted(mods):
        raise ValueError(f"modalities must be distinct and sorted (they name the columns of a presence mask), "
                         f"got {mods!r}; use {tuple(sorted(set(mods)))!r}")
    return mods


def check_presence(present, batch_size: int, modalities: Sequence[str]) -> torch.Tensor:
    """Validate a presence mask: a bool tensor (B, M) with column j for ``modalities[j]``.

    Raises:
        TypeError: if ``present`` is not a bool tensor.
        ValueError: if its shape is not (batch_size, len(modalities)).
    """
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        kind = present.dtype if isinstance(present, torch.Tensor) else type(present).__name__
        raise TypeError(f"present must be a bool tensor (B, M), got {kind}")
    expected = (batch_size, len(modalities))
    if tuple(present.shape) != expected:
        raise ValueError(f"present must be (B, M) = {expected}, one column per modality {tuple(modalities)}, "
                         f"got {tuple(present.shape)}")
    return present


def check_rate(rate, name: str = "rate") -> float:
    """Validate a probability: a real number in [0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    return batch_size


# --- presence masks ---

def ensure_one_present(present: torch.Tensor, allowed: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Re-enable one modality, chosen uniformly among ``allowed``, in every row of ``present`` that has none.

    Args:
        present: (B, M) bool mask.
        allowed: (B, M) bool, which modalities may be re-enabled (rows with none stay empty).
        generator: optional CPU generator; (B, M) numbers are drawn whether or not a row needs them.

    Returns:
        (B, M) bool, ``present`` with at most one extra True per empty row.
    """
    scores = uniform(tuple(present.shape), generator, present.device).masked_fill(~allowed, -1.0)
    pick = nn.functional.one_hot(scores.argmax(1), present.shape[1]).bool() & allowed  # (B, M)
    return present | (pick & ~present.any(1, keepdim=True))


def _rates(missing_rate, modalities: tuple[str, ...]) -> torch.Tensor:
    """Per-modality missing rates (M,) from a float or a dict name -> rate (unnamed modalities: 0)."""
    if isinstance(missing_rate, Mapping):
        unknown = sorted(set(missing_rate) - set(modalities))
        if unknown:
            raise ValueError(f"missing_rate names unknown modalities {unknown}; valid: {list(modalities)}")
        return torch.tensor([check_rate(missing_rate.get(m, 0.0), f"missing_rate[{m!r}]") for m in modalities])
    return torch.full((len(modalities),), check_rate(missing_rate, "missing_rate"))


def sample_presence(batch_size: int, modalities: Sequence[str], missing_rate, generator: torch.Generator | None = None,
                    device=None, keep_one: bool = True) -> torch.Tensor:
    """A random presence mask: each modality absent independently with probability ``missing_rate``.

    With ``keep_one`` (the default), a row left with no modality gets one back,
    chosen uniformly, so modality m is then absent with probability
    ``r_m - prod(r) / M`` (e.g. 0.5 - 0.125 / 3 = 0.458 for r = 0.5, M = 3).

    Args:
        batch_size: B.
        modalities: the sorted modality names (the mask's columns).
        missing_rate: a float in [0, 1] for every modality, or a dict name -> rate
            (modalities it does not name are never dropped).
        generator: optional CPU generator; the same seed gives the same mask on any device.
        device: where the mask is returned.
        keep_one: guarantee at least one present modality per row.

    Returns:
        (B, M) bool.
    """
    mods = check_modalities(modalities)
    rates = _rates(missing_rate, mods)
    draws = uniform((_check_batch_size(batch_size), len(mods)), generator, device)
    present = draws >= rates.to(draws.device)                    # absent with probability rate
    if not keep_one:
        return present
    return ensure_one_present(present, torch.ones_like(present), generator)


def presence_without(batch_size: int, modalities: Sequence[str], missing, device=None) -> torch.Tensor:
    """A fixed presence mask (B, M) bool: every row lacks the modalities named in ``missing``.

    Raises:
        TypeError: if ``missing`` is a single str (write ``("audio",)``).
        ValueError: if ``missing`` names a modality not in ``modalities``.
    """
    mods = check_modalities(modalities)
    if isinstance(missing, str):
        raise TypeError(f"missing must be a collection of names, got a single str {missing!r}; write ({missing!r},)")
    missing = set(missing)
    unknown = sorted(missing - set(mods))
    if unknown:
        raise ValueError(f"missing names unknown modalities {unknown}; valid: {list(mods)}")
    row = torch.tensor([m not in missing for m in mods], device=device)
    return row.expand(_check_batch_size(batch_size), -1).clone()


class ModalityDropout(nn.Module):
    """Drop whole modalities at random while training (Neverova et al. 2016, "ModDrop").

    In training mode each present modality of each sample is dropped with
    probability ``p`` (at least one present modality is kept per sample when
    ``keep_one``); in eval mode, or with ``p == 0``, the given mask is returned
    unchanged (``None`` stays ``None``: everything present).

    Args:
        p: drop probability in [0, 1].
        keep_one: never drop the last present modality of a sample.
        generator: optional CPU generator (default: torch's global one, seeded by ``seed_everything``).
    """

    def __init__(self, p: float = 0.0, keep_one: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        self.p = check_rate(p, "p")
        self.keep_one = keep_one
        self.generator = generator

    def forward(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None):
        """Presence mask for a batch ``features`` {name: (B, ...)} (sorted names are the columns).

        Returns:
            (B, M) bool in training with p > 0; else ``present`` unchanged.
        """
        if not self.training or self.p == 0.0:
            return present
        mods = tuple(sorted(features))
        first = features[mods[0]]
        drawn = sample_presence(len(first), mods, self.p, self.generator, first.device, keep_one=False)
        base = torch.ones_like(drawn) if present is None else check_presence(present, len(first), mods)
        kept = base.to(drawn.device) & drawn
        return ensure_one_present(kept, base, self.generator) if self.keep_one else kept

    def extra_repr(self) -> str:
        return f"p={self.p}, keep_one={self.keep_one}"


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
    rate = check_rate(rate, "rate")
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
    names = sorted(inputs) if modalities is None else check_modalities(modalities)
    unknown = sorted(set(names) - set(inputs))
    if unknown:
        raise ValueError(f"modalities {unknown} are not in the inputs {sorted(inputs)}")
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
        _rates(r, mods)  # check every rate before the first evaluation
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
                _corrupted_at, check_rate(r), mods, torch.Generator().manual_seed(seed)))
            for r in rates]
