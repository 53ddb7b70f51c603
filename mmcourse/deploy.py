"""Shipping a model: a bundle directory, ``torch.export`` programs, ONNX files run by ONNX Runtime.

A **model bundle** is one directory a model can be served from without the code that trained it::

    bundle/
        weights.pt      the state_dict (read back with torch.load(..., weights_only=True))
        bundle.json     format name and version, the architecture dict (mmcourse.efficiency),
                        the InputSpec, the vocabulary's words, the class names, free metadata,
                        and the SHA-256 of weights.pt

:func:`save_bundle` writes the weights first and the manifest last, each atomically
(:func:`mmcourse.utils.atomic_write`); :func:`load_bundle` checks the manifest's version
and the weights' hash before reading them, so a bundle half-written by a crash (new
weights, old manifest, or no manifest yet) or changed afterwards is refused, never
silently served.

Two exports of the same model:

- :func:`export_program`: ``torch.export`` with a dynamic batch (and caption length),
  saved with ``torch.export.save``; :func:`load_program` reads it back.
- :func:`export_onnx`: ONNX through ``torch.onnx.export(..., dynamo=True)`` with one fixed
  signature ``audio (B, T) float32, image (B, 3, S, S) float32, text (B, L) int64,
  present (B, M) bool -> logits (B, C)`` (the model's modalities, sorted): a modality
  missing for a sample is False in ``present`` and its values are ignored. What serving
  needs (spec, vocabulary, class names, bundle version) travels *inside* the file as
  ``metadata_props``, so an ``.onnx`` copied alone still describes its inputs.
  :class:`OnnxModel` runs one on ONNX Runtime's CPU provider, called like the torch model.

Shape letters: B batch, T audio samples, S image side, L tokens, C classes, M modalities.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map, tree_map_with_path

from .checks import check_int
from .data.text import PAD_ID, WORLD_VOCAB, Vocab
from .efficiency import build_model, check_architecture, export_dims
from .inference import InputSpec
from .modality import MODALITIES, presence_of
from .utils import atomic_write

BUNDLE_VERSION = 1                  # bump when the layout of bundle.json or weights.pt changes
BUNDLE_FORMAT = "mmcourse-model-bundle"
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"
ONNX_PREFIX = "mmcourse."           # the keys of our metadata_props in an ONNX file
ONNX_KEYS = ("bundle_version", "modalities", "spec", "vocab", "arch")
# Example batch and caption length traced by the exports: at least 2, because torch.export
# specialises a dimension whose example size is 0 or 1 (it would then accept only that size).
EXAMPLE_BATCH, EXAMPLE_TOKENS = 2, 4
# Loggers of the ONNX optimiser whose warnings about its own passes ("Skipping constant folding for op
# SequenceEmpty", from EmbeddingBag's lowering) say nothing about the exported model.
QUIET_LOGGERS = ("onnxscript.optimizer", "onnx_ir.passes")


@dataclass
class Bundle:
    """A loaded model bundle.

    Attributes:
        model: the :class:`mmcourse.fusion.FusionModel`, in eval mode, with ``model.input_spec`` set
            (so :func:`mmcourse.inference.predict` takes it as is).
        arch: the architecture dict; spec: the :class:`InputSpec` (class names among it);
        vocab: the :class:`mmcourse.data.text.Vocab`; metadata: the free dict given to :func:`save_bundle`;
        path: the bundle directory.
    """

    model: nn.Module
    arch: dict
    spec: InputSpec
    vocab: Vocab
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


# ----------------------------------------------------------------------------- checks shared by both formats

def _check_spec(spec) -> InputSpec:
    if not isinstance(spec, InputSpec):
        raise TypeError(f"spec must be an mmcourse.inference.InputSpec, got {type(spec).__name__}")
    return spec


def _spec_from_json(d, where: str) -> InputSpec:
    try:
        return InputSpec(tuple(d["class_names"]), int(d["image_size"]), int(d["audio_samples"]),
                         int(d["sample_rate"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: the input spec is malformed ({exc!r}): {d!r}") from None


def _vocab_words(vocab) -> list[str]:
    if isinstance(vocab, Vocab):
        return list(vocab.itos)
    raise TypeError(f"vocab must be an mmcourse.data.text.Vocab, got {type(vocab).__name__}")


def _vocab_from_words(words, where: str) -> Vocab:
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{where}: the vocabulary must be a list of words")
    vocab = Vocab(words)
    if vocab.itos != words:          # Vocab sorts and puts <pad>, <unk> first: a stored list already is so
        raise ValueError(f"{where}: the vocabulary is not in Vocab's order (<pad>, <unk>, then sorted words)")
    return vocab


def _check_weights(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ValueError naming the keys (and shapes) where ``state`` does not fit ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
                 f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
                 f"shapes differ (weights vs architecture) {shapes[:5]}" if shapes else ""]
        raise ValueError(f"{where}: the weights do not match the architecture: "
                         + "; ".join(p for p in parts if p))


# ----------------------------------------------------------------------------- the bundle

def save_bundle(directory, model: nn.Module, arch, spec: InputSpec, vocab: Vocab = WORLD_VOCAB, *,
                metadata: Mapping | None = None) -> Path:
    """Write ``model`` as a bundle directory (created if missing; an existing bundle there is replaced).

    The weights go first, the manifest (with the weights' SHA-256) last, each atomically: a crash
    at any point leaves either the old bundle or one that :func:`load_bundle` refuses.

    Args:
        directory: the bundle's folder (keep it under ``build/``: :func:`mmcourse.utils.build_dir`).
        model: a model built by :func:`mmcourse.efficiency.build_model` from ``arch`` (any device).
        arch: its architecture dict; spec: what its raw inputs look like; vocab: its text vocabulary.
        metadata: a JSON-able dict stored as is (e.g. the test accuracy it reached).

    Returns:
        the bundle's directory.

    Raises:
        ValueError: an ill-formed ``arch``, weights that do not fit it, or metadata JSON cannot hold.
        TypeError: ``spec`` or ``vocab`` of the wrong type.
    """
    arch = check_architecture(arch)
    spec, words = _check_spec(spec), _vocab_words(vocab)
    if len(spec.class_names) != arch["num_classes"]:
        raise ValueError(f"spec has {len(spec.class_names)} class names, the architecture "
                         f"{arch['num_classes']} classes")
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-able (str, numbers, lists, dicts): {exc}") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _check_weights(build_model(arch), state, "save_bundle")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "arch": arch, "spec": asdict(spec),
                "vocab": words, "metadata": metadata,
                "weights": {"file": WEIGHTS, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}
    directory = Path(directory)
    atomic_write(directory / WEIGHTS, lambda f: f.write(blob))
    atomic_write(directory / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return directory


def read_manifest(directory) -> dict:
    """The checked manifest of a bundle directory (its version is this code's).

    Raises:
        FileNotFoundError: no such directory.
        ValueError: not a directory, no or unreadable manifest, or a bundle of another version.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"model bundle {directory} does not exist")
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a model bundle: a bundle is a directory holding {MANIFEST} "
                         f"and {WEIGHTS}")
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(f"{directory} is not a model bundle: it has no {MANIFEST} (not a bundle, or "
                         f"one whose saving did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a bundle manifest: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a bundle manifest: its 'format' is not {BUNDLE_FORMAT!r}")
    version = manifest.get("version")
    if version != BUNDLE_VERSION:
        raise ValueError(f"{directory} is a model bundle of format version {version!r}; this code reads "
                         f"version {BUNDLE_VERSION} (save it again with this version of mmcourse)")
    return manifest


def load_bundle(directory, device="cpu") -> Bundle:
    """Read a bundle written by :func:`save_bundle`: the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such directory, or its weights file is missing.
        ValueError: not a bundle, another format version, weights that do not match the manifest's
            hash (half-written or changed since saving), or weights that do not fit the architecture
            (naming the keys).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    where = str(directory)
    arch = check_architecture(manifest.get("arch"))
    spec = _spec_from_json(manifest.get("spec"), where)
    vocab = _vocab_from_words(manifest.get("vocab"), where)
    weights = manifest.get("weights") or {}
    path = directory / str(weights.get("file", WEIGHTS))
    if not path.is_file():
        raise FileNotFoundError(f"{where}: the weights file {path.name} is missing")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != weights.get("sha256"):
        raise ValueError(f"{where}: {path.name} does not match the SHA-256 in {MANIFEST} (half-written, or "
                         f"changed after saving); save the bundle again")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = build_model(arch)
    _check_weights(model, state, where)
    model.load_state_dict(state)
    model = model.to(device).eval()
    model.input_spec = spec
    return Bundle(model, arch, spec, vocab, dict(manifest.get("metadata") or {}), directory)


# ----------------------------------------------------------------------------- torch.export

def _is_text(path, x) -> bool:
    """Whether a leaf of the example inputs is token ids (B, L): a 2-D tensor under the key ``"text"``."""
    return isinstance(x, torch.Tensor) and x.dim() == 2 and bool(path) and getattr(path[-1], "key", None) == "text"


def _dynamic_shapes(example_inputs: tuple):
    """dim 0 of every tensor is the batch; dim 1 of a 2-D ``"text"`` tensor is the caption length."""
    def dims(path, x):
        if not isinstance(x, torch.Tensor):
            return None
        return export_dims("text" if _is_text(path, x) else "")
    return tree_map_with_path(dims, example_inputs)


def _check_example(example_inputs, name: str = "example_inputs") -> tuple:
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"{name} must be a tuple of the model's arguments, e.g. (inputs, present), "
                        f"got {type(example_inputs).__name__}")
    sizes = []
    tree_map(lambda x: sizes.append(x.shape[0]) if isinstance(x, torch.Tensor) else None, example_inputs)
    if not sizes:
        raise ValueError(f"{name} hold no tensor")
    if min(sizes) < EXAMPLE_BATCH:
        raise ValueError(f"{name} must have a batch of at least {EXAMPLE_BATCH}, got {min(sizes)} "
                         f"(torch.export fixes a dimension whose example size is 0 or 1)")
    lengths = []
    tree_map_with_path(lambda p, x: lengths.append(x.shape[1]) if _is_text(p, x) else None, example_inputs)
    if lengths and min(lengths) < 2:
        raise ValueError(f"{name}: the example captions must have at least 2 tokens (padding counts), got "
                         f"{min(lengths)} (torch.export fixes a dimension whose example size is 0 or 1)")
    return example_inputs


def export_program(model: nn.Module, example_inputs: tuple, path, *, clone: bool = True) -> Path:
    """``torch.export`` ``model`` with a dynamic batch (and caption length) and save it to ``path``.

    Args:
        model: e.g. a :class:`mmcourse.fusion.FusionModel` (exported in eval mode; its mode is restored).
        example_inputs: the model's positional arguments, e.g. ``({"image": x, "text": ids}, present)``,
            batch at least 2.
        path: the ``.pt2`` file (written atomically).
        clone: copy the example tensors first. The saved program keeps its example inputs, and a
            slice ``x[:2]`` is a view that would drag the whole of ``x``'s storage into the file.

    The program accepts inputs of the example's structure only (the same dict keys): a modality
    missing for some samples is False in ``present``, not a missing key.

    Returns:
        ``path``.
    """
    example_inputs = _check_example(example_inputs)
    if clone:
        example_inputs = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, example_inputs)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, example_inputs, dynamic_shapes=_dynamic_shapes(example_inputs))
    finally:
        model.train(was_training)
    with warnings.catch_warnings():
        # The audio front end's filterbank is a transposed (non-contiguous) buffer; the archive writer warns
        # that no tensor of its storage is "complete", then saves that storage whole, which is all of it.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        return atomic_write(path, lambda f: torch.export.save(program, f))


def load_program(path) -> torch.export.ExportedProgram:
    """The program saved by :func:`export_program`; call it with ``load_program(path).module()(*args)``.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported program {path} does not exist")
    return torch.export.load(path)


# ----------------------------------------------------------------------------- ONNX

@contextlib.contextmanager
def _quiet(names=QUIET_LOGGERS):
    loggers = [logging.getLogger(n) for n in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


class OnnxSignature(nn.Module):
    """The ONNX signature around a fusion model: ``forward(*tensors, present)`` in modality order -> logits.

    Every modality is an input (ONNX graphs have a fixed list of inputs); which ones a sample really
    has is ``present`` (B, M) bool, and the fusion ignores the values where it is False.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.modalities = tuple(model.modalities)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        *tensors, present = args                                        # M tensors (B, ...), (B, M) bool
        return self.model(dict(zip(self.modalities, tensors)), present)  # (B, C)


def placeholder_inputs(spec: InputSpec, modalities: Sequence[str] = MODALITIES, batch: int = EXAMPLE_BATCH,
                   tokens: int = EXAMPLE_TOKENS) -> dict[str, torch.Tensor]:
    """Placeholder model inputs {name: (batch, ...)} of the right shapes and dtypes (zeros; padding for text)."""
    shapes = {"audio": ((batch, spec.audio_samples), torch.float32),
              "image": ((batch, 3, spec.image_size, spec.image_size), torch.float32),
              "text": ((batch, tokens), torch.int64)}
    return {m: torch.full(shapes[m][0], PAD_ID if m == "text" else 0, dtype=shapes[m][1]) for m in modalities}


def export_onnx(model: nn.Module, spec: InputSpec, path, *, example=None, vocab: Vocab = WORLD_VOCAB,
                arch=None) -> Path:
    """Export ``model`` to an ONNX file with the signature of :class:`OnnxSignature` and serving metadata.

    Inputs: one per modality of ``model`` (sorted; ``audio (B, T) float32``, ``image (B, 3, S, S)
    float32``, ``text (B, L) int64``) and ``present (B, M) bool``; output ``logits (B, C)``; B and L
    dynamic. The spec, vocabulary, modalities, architecture and :data:`BUNDLE_VERSION` are stored as
    the file's ``metadata_props`` (keys ``mmcourse.*``), read back by :class:`OnnxModel`.

    Args:
        example: ``(inputs, present)`` to trace (batch >= 2); None: zeros of the spec's shapes, batch 2.
        arch: the architecture dict, stored for reference (None: not stored).

    Returns:
        ``path`` (written atomically).
    """
    import onnx

    spec = _check_spec(spec)
    modalities = tuple(model.modalities)
    if example is None:
        example = (placeholder_inputs(spec, modalities), torch.ones(EXAMPLE_BATCH, len(modalities), dtype=torch.bool))
    inputs, present = _check_example(tuple(example), "example")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"example must be (inputs, present) with inputs a dict {{name: (B, ...)}}, got "
                        f"{type(inputs).__name__}")
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise ValueError(f"example inputs lack {missing}: the ONNX signature has every modality of the model "
                         f"({list(modalities)}); mark absent samples False in present instead")
    args = tuple(inputs[m].clone() for m in modalities) + (present.clone(),)
    dynamic = tuple(export_dims(m) for m in (*modalities, "present"))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), _quiet():
            # Every input's dim 0 is the same Dim, which the exporter remarks on; that is the intent.
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
            program = torch.onnx.export(OnnxSignature(model).eval(), args, dynamo=True,
                                        dynamic_shapes=(dynamic,), input_names=[*modalities, "present"],
                                        output_names=["logits"], verbose=False)
    finally:
        model.train(was_training)
    proto = program.model_proto
    meta = {"bundle_version": str(BUNDLE_VERSION), "modalities": json.dumps(list(modalities)),
            "spec": json.dumps(asdict(spec)), "vocab": json.dumps(_vocab_words(vocab)),
            "arch": json.dumps(check_architecture(arch) if arch is not None else None)}
    onnx.helper.set_model_props(proto, {ONNX_PREFIX + k: v for k, v in meta.items()})
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


class OnnxModel(nn.Module):
    """An ONNX file of :func:`export_onnx` on ONNX Runtime (CPU), called like the torch model.

    ``onnx_model(inputs, present=None)``: ``inputs`` {name: (B, ...)} may lack modalities (absent for
    the whole batch: they are fed as placeholders, False in the mask), as for a
    :class:`mmcourse.fusion.FusionModel`; returns logits (B, C) float32 on the CPU. It is an
    ``nn.Module`` without parameters only so that :func:`mmcourse.inference.predict` takes it
    (pass ``device="cpu"``); ``input_spec``, ``vocab``, ``modalities`` come from the file.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra- and inter-op threads (None: its default, every core); 1 for timing
            on one thread beside single-threaded PyTorch.

    Raises (at construction):
        FileNotFoundError: no such file; ValueError: not an ONNX model, no mmcourse metadata, or
        metadata of another bundle version.
    """

    def __init__(self, path, *, threads: int | None = None):
        super().__init__()
        import onnx
        import onnxruntime as ort
        from google.protobuf.message import DecodeError

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except DecodeError as exc:
            raise ValueError(f"{path} is not an ONNX model ({exc})") from None
        if not proto.graph.node:
            raise ValueError(f"{path} is not an ONNX model (its graph is empty)")
        props = {p.key[len(ONNX_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(ONNX_PREFIX)}
        absent = [ONNX_PREFIX + k for k in ONNX_KEYS if k not in props]
        if absent:
            raise ValueError(f"{path} has no mmcourse metadata ({', '.join(absent)} missing from its "
                             f"metadata_props); export it with mmcourse.deploy.export_onnx")
        if props["bundle_version"] != str(BUNDLE_VERSION):
            raise ValueError(f"{path} was exported for bundle version {props['bundle_version']}; this code reads "
                             f"version {BUNDLE_VERSION} (export it again)")
        try:
            self.input_spec = _spec_from_json(json.loads(props["spec"]), str(path))
            self.vocab = _vocab_from_words(json.loads(props["vocab"]), str(path))
            self.model_modalities = tuple(json.loads(props["modalities"]))
            self.arch = json.loads(props["arch"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: its mmcourse metadata is not JSON ({exc})") from None
        self.path = path
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = options.inter_op_num_threads = check_int(threads, "threads")
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != [*self.model_modalities, "present"]:
            raise ValueError(f"{path}: inputs {names} do not match its metadata's modalities "
                             f"{list(self.model_modalities)} + ['present']")
        self.eval()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model_modalities

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.input_spec.class_names

    def forward(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        present = presence_of(inputs, self.model_modalities, present).cpu()          # (B, M) bool
        b = present.shape[0]
        fill = placeholder_inputs(self.input_spec, self.model_modalities, batch=b, tokens=1)
        feed = {m: (inputs[m] if m in inputs else fill[m]).detach().cpu().numpy() for m in self.model_modalities}
        feed["present"] = present.numpy()
        (logits,) = self.session.run(["logits"], feed)                              # (B, C)
        return torch.from_numpy(np.ascontiguousarray(logits))
