"""Modalities: their names, the checks of a modality dict, presence masks and modality dropout.

One convention for the whole course (STYLE.md, convention 4):

- a batch's modalities travel as a dict ``{name: tensor (B, ...)}`` whose keys are
  modality names, nothing else (labels, annotations and other data travel beside it);
- a modality missing for the *whole batch* is an **absent key**;
- a modality missing for *some samples* is an explicit **presence mask** ``present``
  (B, M) bool, passed beside the dict, whose column j refers to ``modalities[j]``;
  ``modalities`` is always sorted, and every function that takes names checks it,
  so a mask cannot silently refer to the wrong columns;
- a missing modality is never a silent zero: the model is always told (absent key
  or False in the mask), and its values, if any, never reach the output.

This module sits on the ground floor (it imports only torch, numpy, the standard
library and :mod:`mmcourse.utils`), so that the data, the encoders, the fusions
and the robustness measurements all share it.

Checks: :func:`check_modalities` (names), :func:`check_keys` (a modality dict's
keys), :func:`check_tensor` (one tensor's dims and dtype), :func:`check_presence`
(a mask); probabilities use :func:`mmcourse.checks.check_probability`. Masks: :func:`presence_of` (from the
keys a dict has), :func:`presence_without` (fixed), :func:`sample_presence`
(random), :func:`ensure_one_present`, and :class:`ModalityDropout` (random, in
training only). Random draws take an optional CPU ``torch.Generator`` and always
draw the same number of numbers for the same shapes, so a seed fixes every mask
on any device.

Shape letters: B batch, M modalities.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from .checks import check_int, check_probability
from .utils import uniform

# The modalities of the course's synthetic world (mmcourse.data.world), sorted: the columns of its presence masks.
MODALITIES: tuple[str, ...] = ("audio", "image", "text")


# ----------------------------------------------------------------------------- checks

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


def check_keys(given, allowed: Collection[str] | None, required: Collection[str] = (),
               what: str = "inputs") -> tuple[str, ...]:
    """Check the keys of a modality dict: all in ``allowed``, all of ``required`` there; return them sorted.

    Args:
        given: the dict {name: value} to check.
        allowed: the names it may hold (None: any).
        required: the names it must hold (e.g. ``allowed`` itself, for "exactly these keys").
        what: the argument's name in the messages.

    Raises:
        TypeError: if ``given`` is not a dict.
        ValueError: naming the unknown and the missing keys.
    """
    if not isinstance(given, Mapping):
        raise TypeError(f"{what} must be a dict {{modality: tensor}}, got {type(given).__name__}")
    unknown = [] if allowed is None else sorted(set(given) - set(allowed))
    missing = sorted(set(required) - set(given))
    if unknown or missing:
        problems = ([f"has unknown keys {unknown}"] if unknown else []) + (
            [f"lacks the required keys {missing}"] if missing else [])
        valid = "" if allowed is None else f"; valid keys: {sorted(allowed)}"
        raise ValueError(f"{what} {' and '.join(problems)} (got {sorted(given)}{valid})")
    return tuple(sorted(given))


def check_tensor(x, name: str, dims: int, float_: bool | None, trailing: tuple = ()) -> torch.Tensor:
    """Raise unless ``x`` is a tensor with ``dims`` dims, the dtype kind and the trailing sizes; return it.

    Args:
        x: the tensor to check.
        name: its name in the messages (e.g. ``"image"``, ``"features['audio']"``).
        dims: the number of dims it must have, batch included.
        float_: True: a floating-point dtype; False: integer token ids (int32 / int64); None: any.
        trailing: the sizes of its last dims; a ``str`` (e.g. ``"S"``) accepts any size and names it.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: for another number of dims, another trailing size or another dtype kind.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    got = tuple(x.shape[-len(trailing):]) if trailing else ()
    if x.dim() != dims or (trailing and any(not isinstance(t, str) and t != g for t, g in zip(trailing, got))):
        want = ", ".join(["B"] + [str(t) for t in trailing] if trailing else ["B"] + ["?"] * (dims - 1))
        raise ValueError(f"{name} must have shape ({want}), got {tuple(x.shape)}")
    if float_ is True and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if float_ is False and x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    return x


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


# ----------------------------------------------------------------------------- presence masks

def presence_of(inputs: Mapping, modalities: Sequence[str], present: torch.Tensor | None = None) -> torch.Tensor:
    """The presence mask (B, M) bool of a modality dict whose keys may be absent (absent for the whole batch).

    Column j is False where ``modalities[j]`` is not a key of ``inputs``; with a
    ``present`` mask, the other columns are taken from it (it may mark a given key
    absent for some samples, but never an absent key present).

    Args:
        inputs: {name: (B, ...)}, keys among ``modalities``, at least one.
        modalities: the sorted names (the mask's columns).
        present: optional (B, M) bool mask for the samples.

    Returns:
        (B, M) bool, on the device of the first given modality.

    Raises:
        ValueError: for unknown keys, no key at all, different batch sizes, a mask of another
            shape, or a mask that marks an absent key present.
    """
    mods = check_modalities(modalities)
    given = check_keys(inputs, mods)
    if not given:
        raise ValueError(f"inputs hold no modality (keys: []); at least one of {list(mods)} is needed")
    # shape[0] and != rather than len() and a set: under torch.export B stays symbolic (len() would fix it).
    sizes = {m: inputs[m].shape[0] for m in given}
    b, device = sizes[given[0]], getattr(inputs[given[0]], "device", None)
    if any(n != b for n in sizes.values()):
        raise ValueError(f"every modality must have the same batch size B, got {sizes}")
    has = torch.tensor([m in inputs for m in mods], device=device)                     # (M,)
    if present is None:
        return has.expand(b, -1).clone()
    present = check_presence(present, b, mods).to(device)
    absent = [j for j, m in enumerate(mods) if m not in inputs]
    # Asked only when a key is absent: reading the mask's values would stop torch.export (chapter 14), which
    # traces one graph for every mask.
    claimed = [mods[j] for j in absent if present[:, j].any()] if absent else []
    if claimed:
        raise ValueError(f"present marks {claimed} present for some samples, but inputs have no such key "
                         f"(keys: {list(given)}); an absent key means absent for every sample")
    return present


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
        return torch.tensor([check_probability(missing_rate.get(m, 0.0), f"missing_rate[{m!r}]") for m in modalities])
    return torch.full((len(modalities),), check_probability(missing_rate, "missing_rate"))


def check_rates(missing_rate, modalities: Sequence[str]) -> None:
    """Validate a missing rate (a float in [0, 1], or a dict name -> rate) for ``modalities`` without drawing."""
    _rates(missing_rate, check_modalities(modalities))


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
    draws = uniform((check_int(batch_size, "batch_size", minimum=0), len(mods)), generator, device)
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
    return row.expand(check_int(batch_size, "batch_size", minimum=0), -1).clone()


class ModalityDropout(nn.Module):
    """Drop whole modalities at random while training (Neverova et al. 2016, "ModDrop").

    In training mode each present modality of each sample is dropped with
    probability ``p`` (at least one present modality is kept per sample when
    ``keep_one``); in eval mode, or with ``p == 0``, the mask is returned unchanged.
    A modality the mask marks absent is never brought back.

    Args:
        p: drop probability in [0, 1].
        keep_one: never drop the last present modality of a sample.
        generator: optional CPU generator (default: torch's global one, seeded by ``seed_everything``).
    """

    def __init__(self, p: float = 0.0, keep_one: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        self.p = check_probability(p, "p")
        self.keep_one = keep_one
        self.generator = generator

    def forward(self, present: torch.Tensor) -> torch.Tensor:
        """The mask ``present`` (B, M) bool with modalities dropped (in training with p > 0): (B, M) bool."""
        if not isinstance(present, torch.Tensor) or present.dtype != torch.bool or present.dim() != 2:
            raise TypeError(f"present must be a bool tensor (B, M), got "
                            f"{getattr(present, 'dtype', type(present).__name__)} of shape "
                            f"{tuple(getattr(present, 'shape', ()))}")
        if not self.training or self.p == 0.0:
            return present
        b, m = present.shape
        kept = present & (uniform((b, m), self.generator, present.device) >= self.p)
        return ensure_one_present(kept, present, self.generator) if self.keep_one else kept

    def extra_repr(self) -> str:
        return f"p={self.p}, keep_one={self.keep_one}"
