"""Inference on raw inputs: caption strings, image arrays and waveforms in, class names out.

:func:`predict` classifies raw inputs with any modality missing, and rejects
malformed inputs with errors that name the argument; :func:`raw_inputs` turns scenes of a
dataset back into such inputs, and :func:`accuracy_by_modalities` scores ``predict`` with
only some modalities given. What the inputs must look like
(image side, clip length, sample rate, class names) is an :class:`InputSpec`, which
:func:`mmcourse.pipeline.run_pipeline` attaches to its models as ``model.input_spec``.

Missing modalities follow :mod:`mmcourse.modality`: a modality not given is an absent
key of the batch (its encoder does not run), and a caption ``None`` is False in the
presence mask; no placeholder tensor stands in for a missing modality.

Shape letters: N samples, B batch, S image side, T audio samples, C classes, M modalities.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checks import check_int
from .data.text import WORLD_VOCAB, Tokenizer
from .modality import MODALITIES
from .utils import autocast, channels_last, to_device


@dataclass(frozen=True)
class InputSpec:
    """What a model's raw inputs must look like (attached to pipeline models as ``model.input_spec``).

    Attributes:
        class_names: the C class names, in logit order.
        image_size: S; audio_samples: T; sample_rate: Hz of the waveforms.
    """

    class_names: tuple[str, ...]
    image_size: int
    audio_samples: int
    sample_rate: int


@dataclass
class Prediction:
    """What :func:`predict` returns.

    Attributes:
        labels: the predicted class name of each sample (N,).
        probs: (N, C) float32 class probabilities on the CPU (rows sum to 1).
        class_names: the C names, in the columns' order.
        present: (N, M) bool, which modalities each sample had (columns: ``MODALITIES``).
    """

    labels: list[str]
    probs: torch.Tensor
    class_names: tuple[str, ...]
    present: torch.Tensor


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USV":
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        raise ValueError(f"{name} holds NaN or infinite values (first in sample {int(bad.nonzero()[0])})")


def _images(images, spec: InputSpec) -> torch.Tensor:
    x = _as_tensor(images, "images")
    s = spec.image_size
    forms = f"float (N, 3, {s}, {s}) in [0, 1], or uint8 (N, 3, {s}, {s}) or (N, {s}, {s}, 3)"
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype == torch.uint8):
        raise TypeError(f"images must be {forms}; got dtype {x.dtype}")
    if x.dim() == 3:
        raise ValueError(f"images must be a batch: {forms}; got one image of shape {tuple(x.shape)} "
                         f"(add a batch dimension: images[None])")
    if x.dim() != 4:
        raise ValueError(f"images must be {forms}; got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if tuple(x.shape[1:]) == (s, s, 3):
            x = x.permute(0, 3, 1, 2)
        if tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be {forms}; got uint8 of shape {tuple(images.shape)}")
        return x.float() / 255.0
    if tuple(x.shape[1:]) != (3, s, s):
        hint = " (channels last: float images must be channels first, use images.permute(0, 3, 1, 2))" \
            if tuple(x.shape[1:]) == (s, s, 3) else ""
        raise ValueError(f"images must be {forms}; got float of shape {tuple(x.shape)}{hint}")
    x = x.float()
    _check_finite(x, "images")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"float images must be in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}] "
                         f"(uint8 pixels? pass them as uint8, or divide by 255)")
    return x


def _audio(audio, spec: InputSpec) -> torch.Tensor:
    x = _as_tensor(audio, "audio")
    t = spec.audio_samples
    if not x.is_floating_point():
        raise TypeError(f"audio must be float waveforms (N, {t}) at {spec.sample_rate} Hz, got dtype {x.dtype}"
                        + (" (16-bit PCM? divide by 32768)" if x.dtype == torch.int16 else ""))
    if x.dim() == 1:
        raise ValueError(f"audio must be a batch (N, {t}); got one waveform of shape {tuple(x.shape)} "
                         f"(add a batch dimension: audio[None])")
    if x.dim() != 2 or x.shape[1] != t:
        raise ValueError(f"audio must be float waveforms (N, {t}) at {spec.sample_rate} Hz, got shape "
                         f"{tuple(x.shape)}")
    x = x.float()
    _check_finite(x, "audio")
    return x


def _captions(captions) -> list[str | None]:
    if isinstance(captions, str):
        raise TypeError(f"captions must be a list of str, got a single str {captions[:40]!r}; wrap it: [text]")
    if not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of str (None for a missing caption), got {type(captions).__name__}")
    for i, c in enumerate(captions):
        if c is not None and not isinstance(c, str):
            raise TypeError(f"captions[{i}] must be a str (or None: missing), got {type(c).__name__}")
        if isinstance(c, str) and not c.strip():
            raise ValueError(f"captions[{i}] is empty; pass None to mark a caption as missing")
    return list(captions)


def _raw_inputs(spec: InputSpec, captions, images, audio) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Checked model inputs {name: (N, ...)} of the given modalities only, and the presence mask (N, M) bool."""
    inputs, texts = {}, None
    if images is not None:
        inputs["image"] = _images(images, spec)
    if audio is not None:
        inputs["audio"] = _audio(audio, spec)
    if captions is not None:
        texts = _captions(captions)
    given = [m for m, x in (("audio", audio), ("image", images), ("text", captions)) if x is not None]
    sizes = {m: len(inputs[m]) if m in inputs else len(texts) for m in given}
    if len(set(sizes.values())) != 1:
        raise ValueError("every modality must have the same number of samples N, got "
                         + ", ".join(f"{'images' if m == 'image' else 'captions' if m == 'text' else m}: {n}"
                                     for m, n in sizes.items()))
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("empty batch: the inputs hold no sample (N = 0)")
    present = torch.tensor([m in given for m in MODALITIES]).expand(n, -1).clone()     # (N, M)
    if texts is not None:
        present[:, MODALITIES.index("text")] = torch.tensor([t is not None for t in texts])
        # A missing caption is a row of padding in the batch, and False in the mask, which keeps it out.
        inputs["text"] = torch.from_numpy(Tokenizer().encode([t if t is not None else "" for t in texts])[0])
    if not present.any(1).all():
        i = int((~present.any(1)).nonzero()[0])
        raise ValueError(f"sample {i} has no modality at all (its caption is None and nothing else was given)")
    return dict(sorted(inputs.items())), present


def predict(model: nn.Module, *, captions=None, images=None, audio=None, device=None, batch_size: int = 256,
            spec: InputSpec | None = None) -> Prediction:
    """Classify raw inputs: caption strings, images and waveforms, any of them missing.

    Accepted inputs (N samples; every given modality must have the same N >= 1):

    - ``captions``: a list of N strings (tokenised by :class:`mmcourse.data.Tokenizer`); an entry
      ``None`` marks that sample's caption as missing;
    - ``images``: float (N, 3, S, S) in [0, 1], or uint8 pixels (N, 3, S, S) or (N, S, S, 3)
      (numpy or torch), S the model's image side;
    - ``audio``: float waveforms (N, T) at the world's sample rate, T its clip length.

    An omitted modality is an absent key of the model's inputs (the fusion leaves it out),
    a ``None`` caption is False in the presence mask. The model runs in eval mode without
    gradients, in batches of ``batch_size``, under the device's autocast; its train/eval
    mode is restored afterwards.

    Args:
        model: a fusion model over ``MODALITIES`` (``model(inputs, present)``), e.g. a pipeline model.
        device: where to run (None: the model's device).
        spec: the inputs' sizes and class names (None: ``model.input_spec``, set by
            :func:`mmcourse.pipeline.run_pipeline`).

    Returns:
        a :class:`Prediction` (labels, probs (N, C), class_names, present (N, M)).

    Raises:
        ValueError, TypeError: for malformed inputs, naming the argument and what it got.
    """
    spec = spec if spec is not None else getattr(model, "input_spec", None)
    if not isinstance(spec, InputSpec):
        raise ValueError("the model has no input_spec (set by run_pipeline); pass spec=InputSpec(...)")
    if tuple(getattr(model, "modalities", ())) != MODALITIES:
        raise ValueError(f"model must be a fusion model over {MODALITIES}, got modalities "
                         f"{getattr(model, 'modalities', None)}")
    check_int(batch_size, "batch_size")
    if captions is None and images is None and audio is None:
        raise ValueError("predict() needs at least one of captions=, images=, audio= (got none)")
    inputs, present = _raw_inputs(spec, captions, images, audio)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs = []
    try:
        with torch.no_grad():
            for s in range(0, len(present), batch_size):
                batch = to_device({m: x[s:s + batch_size] for m, x in inputs.items()}, device)
                if "image" in batch:
                    batch["image"] = channels_last(batch["image"], device)
                with autocast(device):
                    logits = model(batch, present[s:s + batch_size].to(device))
                probs.append(torch.softmax(logits.float(), 1).cpu())
    finally:
        model.train(was_training)
    probs = torch.cat(probs)
    return Prediction([spec.class_names[i] for i in probs.argmax(1).tolist()], probs, spec.class_names, present)


# predict()'s argument for each modality
RAW_ARGUMENT = {"audio": "audio", "image": "images", "text": "captions"}


def raw_inputs(dataset, n: int) -> dict[str, object]:
    """The first ``n`` scenes of a :class:`mmcourse.data.MultimodalDataset` as :func:`predict` takes them.

    Returns:
        ``{"captions": list of n str, "images": uint8 (n, 3, S, S) array, "audio": float32 (n, T) array}``.

    Raises:
        ValueError: if ``n`` is not in [1, len(dataset)].
    """
    check_int(n, "n")
    if n > len(dataset):
        raise ValueError(f"n must be at most len(dataset) = {len(dataset)}, got {n}")
    return {"captions": WORLD_VOCAB.decode(dataset.text[:n].numpy()),      # list of str
            "images": dataset.images[:n].numpy(),                           # uint8 (n, 3, S, S)
            "audio": dataset.audio[:n].numpy()}                             # float32 (n, T)


def accuracy_by_modalities(model: nn.Module, dataset, subsets: Sequence[tuple[str, ...]],
                           n: int) -> dict[tuple[str, ...], float]:
    """Accuracy of :func:`predict` on the first ``n`` scenes of ``dataset`` with only each subset's modalities given.

    Args:
        model: a model :func:`predict` accepts (``model.input_spec`` set).
        dataset: a labelled :class:`mmcourse.data.MultimodalDataset` of the model's task.
        subsets: tuples of names from ``MODALITIES``, e.g. ``[("audio", "image", "text"), ("audio",)]``.
        n: how many scenes to score (the first ``n``).

    Returns:
        ``{subset: accuracy}``, in the order of ``subsets``.

    Raises:
        ValueError: for an empty subset or a name not in ``MODALITIES``.
    """
    for subset in subsets:
        if not subset or any(m not in RAW_ARGUMENT for m in subset):
            raise ValueError(f"each subset must be a non-empty tuple of names from {MODALITIES}, got {subset!r}")
    raw, truth = raw_inputs(dataset, n), dataset.labels[:n]
    out = {}
    for subset in subsets:
        given = {RAW_ARGUMENT[m]: raw[RAW_ARGUMENT[m]] for m in subset}
        predicted = predict(model, **given).probs.argmax(1)                # (n,)
        out[tuple(subset)] = float((predicted == truth).float().mean())
    return out
