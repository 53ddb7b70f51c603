"""Diagrams drawn by code: architectures and data flows with the shapes of a traced forward pass.

Every shape written on an arrow is read from a forward pass of the real module
(:func:`trace`, PyTorch forward hooks), never typed by hand, so a diagram shows
whatever the package's module is today. Only the role names of boxes ("input",
"fused vector") are written here. Every function returns the ``Figure``; none
calls ``plt.show``.

- :func:`trace` runs one forward pass and records each part's input and output shapes;
  :func:`format_shape` writes a shape with the batch dimension as ``B`` (``B×16×32``);
- :func:`draw_encoder`, :func:`draw_encoder_families`: encoders as chains of their parts (chapter 04);
- :func:`draw_fusion`, :func:`draw_fusion_families`: per-modality features into a fusion (chapter 05);
- :func:`draw_contrastive`: two towers, the B×B similarity matrix, the symmetric loss (chapter 06);
- :func:`draw_training_stages`, :func:`plot_course_map`: the article's stages and pipeline (chapter 00);
- :func:`draw_lora`, :func:`draw_adapter`: parameter-efficient adaptation (chapter 08).

Shape letters: B batch, L tokens, D width, E joint embedding width, r LoRA rank,
M modalities.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .adapt import LoRA
from .config import METHODS
from .glossary import PIPELINE_EDGES
from .models import count_parameters

FONT = 8             # box labels (points)
SMALL = 7            # arrow labels and sub-labels: the smallest text drawn
BOX_STYLE = {        # face and edge colour of each kind of box
    "data": ("#f3f3f3", "0.45"),
    "part": ("#e8f0fb", "#3a6ea5"),
    "op": ("#fdf3e1", "#b5832a"),
    "frozen": ("#e6e6e6", "0.35"),
    "trained": ("#e5f5e0", "#3a8a3a"),
}
COLUMN = 2.2         # layout units between columns of boxes
TOWER_STEP = 3.0     # between the columns of the contrastive towers (their boxes name whole encoders)
LANE = 0.8           # between parallel parts of one modality's row
ROW_GAP = 0.35       # extra space between modality rows
TIMES = "\u00d7"     # the multiplication sign between dimensions


# ----------------------------------------------------------------------------- tracing

# (path, shape) per tensor. The path names where the tensor sits: "0" the first positional argument,
# "0.image" its "image" entry, "src_key_padding_mask" a keyword argument; "" a returned tensor, "1" a tuple's second.
Shapes = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Call:
    """One call of a traced submodule.

    Attributes:
        name: its dotted name in the traced module (``"encoders.image"``).
        kind: its class name (``"Conv2d"``).
        inputs, outputs: (path, shape) of every tensor it read (args, then kwargs by name) and returned.
        parameters: its number of parameters (elements).
        reads, writes: identities of those tensors, unique within the trace: a call whose ``reads``
            meet another's ``writes`` consumed that call's output unchanged.
    """

    name: str
    kind: str
    inputs: Shapes
    outputs: Shapes
    parameters: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]


@dataclass(frozen=True)
class Trace:
    """One forward pass: the module's inputs and outputs and the calls of its parts in call order.

    Attributes:
        module: the traced module's class name.
        inputs, outputs: (path, shape) of its input and output tensors.
        input_ids, output_ids: their identities (see :class:`Call`).
        calls: the recorded calls, in the order they started.
        batch: B, the first dimension of the first input tensor (None without one).
    """

    module: str
    inputs: Shapes
    outputs: Shapes
    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    calls: tuple[Call, ...]
    batch: int | None

    def call(self, name: str) -> Call:
        """The first call of the part called ``name``."""
        for c in self.calls:
            if c.name == name:
                return c
        raise ValueError(f"no call of {name!r} in the trace of {self.module}; traced: {[c.name for c in self.calls]}")

    def label(self, shapes: Shapes) -> str:
        """``shapes`` written with :func:`format_shapes` and this trace's batch size."""
        return format_shapes(shapes, self.batch)


def _tensors(obj, path: str = ""):
    """(path, tensor) of every tensor in a nest of dicts, tuples and lists; dict keys in sorted order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}.{i}" if path else str(i))


def _record(obj, keep: list) -> tuple[Shapes, tuple[int, ...]]:
    """Shapes and identities of the tensors in ``obj``; the tensors are kept alive so identities stay unique."""
    found = list(_tensors(obj))
    keep.extend(t for _, t in found)
    return tuple((p, tuple(t.shape)) for p, t in found), tuple(id(t) for _, t in found)


def _targets(module: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    """The submodules to hook: the ones named, or every submodule (the frontier is chosen afterwards)."""
    if names is None:
        return {n: m for n, m in module.named_modules() if n}
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty list of submodule names, got {names!r}")
    found = {}
    for name in names:
        try:
            found[name] = module.get_submodule(name) if name else None
        except AttributeError:
            found[name] = None
        if found[name] is None:
            raise ValueError(f"names: {type(module).__name__} has no submodule {name!r}; "
                             f"its children: {[n for n, _ in module.named_children()]}")
    return found


def _frontier(calls: list[Call]) -> list[Call]:
    """The outermost calls: those of parts with no called ancestor (a ModuleDict never runs, its entries do)."""
    called = {c.name for c in calls}
    return [c for c in calls if not any(c.name.startswith(n + ".") for n in called)]


def trace(module: nn.Module, *args, names: Sequence[str] | None = None, **kwargs) -> Trace:
    """Run ``module(*args, **kwargs)`` once in eval mode under ``torch.no_grad()`` and record its parts.

    Args:
        module: any ``nn.Module``; every submodule's train/eval mode is restored afterwards.
        args, kwargs: its inputs; tensors inside dicts, tuples and lists are found.
        names: dotted names of the submodules to record (each must run). None: the direct children,
            and in place of a child that never runs itself (an ``nn.ModuleDict``, or an ``nn.Sequential``
            whose layers are called one by one) the children of it that do, recursively.

    Raises:
        ValueError: if a name is not a submodule, or a named submodule did not run.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    targets = _targets(module, names)
    keep, pending, calls, handles = [], {}, [], []

    def before(name, _mod, a, kw):
        pending.setdefault(name, []).append((len(calls), _record((a, kw), keep)))
        calls.append(None)

    def after(name, mod, _a, _kw, out):
        slot, (shapes, ids) = pending[name].pop()
        o_shapes, o_ids = _record(out, keep)
        shapes = tuple((p.split(".", 1)[1] if "." in p else "", s) for p, s in shapes)   # drop "0." / "1." of (a, kw)
        calls[slot] = Call(name, type(mod).__name__, shapes, o_shapes, count_parameters(mod), ids, o_ids)

    modes = {m: m.training for m in module.modules()}
    try:
        for name, sub in targets.items():
            handles.append(sub.register_forward_pre_hook(lambda m, a, kw, n=name: before(n, m, a, kw),
                                                         with_kwargs=True))
            handles.append(sub.register_forward_hook(lambda m, a, kw, o, n=name: after(n, m, a, kw, o),
                                                     with_kwargs=True))
        module.eval()
        in_shapes, in_ids = _record((args, kwargs), keep)
        with torch.no_grad():
            out = module(*args, **kwargs)
        out_shapes, out_ids = _record(out, keep)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    done = [c for c in calls if c is not None]
    if names is not None:
        missing = [n for n in names if n not in {c.name for c in done}]
        if missing:
            raise ValueError(f"names: {missing} did not run in the forward pass of {type(module).__name__}")
    in_shapes = tuple((p.split(".", 1)[1] if "." in p else "", s) for p, s in in_shapes)
    batch = in_shapes[0][1][0] if in_shapes and in_shapes[0][1] else None
    return Trace(type(module).__name__, in_shapes, out_shapes, in_ids, out_ids,
                 tuple(done if names is not None else _frontier(done)), batch)


def format_shape(shape: Sequence[int], batch: int | None = None, batch_dims: Sequence[int] = (0,)) -> str:
    """A shape as ``B×16×32``: the dimensions ``batch_dims`` are written ``B`` where they equal ``batch``
    (``batch_dims=(0, 1)`` writes a similarity matrix as ``B×B``); the shape () is ``scalar``."""
    shape = tuple(shape)
    if not shape:
        return "scalar"
    dims = ["B" if i in batch_dims and batch is not None and d == batch else str(d) for i, d in enumerate(shape)]
    return TIMES.join(dims)


def format_shapes(shapes: Shapes, batch: int | None = None) -> str:
    """Several tensors, comma-separated; a tensor in a dict is written ``key: shape`` (tuple positions are not)."""
    parts = []
    for path, shape in shapes:
        keys = [k for k in path.split(".") if k and not k.isdigit()]
        parts.append(f"{'.'.join(keys)}: {format_shape(shape, batch)}" if keys else format_shape(shape, batch))
    return ", ".join(parts)


def _key(path: str) -> str:
    """The first dict key on a tensor's path (``"0.image"`` -> ``"image"``), "" for none."""
    return next((k for k in path.split(".") if k and not k.isdigit()), "")


def _main(shapes: Shapes) -> Shapes:
    """The first tensor only: the stream a part transforms (a padding mask beside it is left off arrows)."""
    return shapes[:1]


def _count(n: int) -> str:
    """A parameter count, short: 812, 12.4k, 1.2M."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


# ----------------------------------------------------------------------------- rendering


@dataclass
class Box:
    """A box of a diagram at (x, y) in layout units: a label, a smaller sub-label, a kind (``BOX_STYLE``)."""

    label: str
    xy: tuple[float, float]
    sub: str = ""
    kind: str = "part"


def render(ax, boxes: Mapping[str, Box], arrows: Sequence[tuple[str, str, str]], title: str,
           xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None):
    """Draw rounded boxes and arrows ``(source key, destination key, label)`` on ``ax``; return its Figure.

    Arrows are clipped at the box outlines; a label sits on the middle of its arrow.
    """
    unknown = sorted({k for s, d, _ in arrows for k in (s, d)} - set(boxes))
    if unknown:
        raise ValueError(f"arrows name boxes {unknown} that are not in boxes {list(boxes)}")
    texts = {}
    for key, box in boxes.items():
        face, edge = BOX_STYLE[box.kind]
        text = box.label + (f"\n{box.sub}" if box.sub else "")
        texts[key] = ax.text(*box.xy, text, ha="center", va="center", fontsize=FONT, zorder=3,
                             bbox=dict(boxstyle="round,pad=0.4", fc=face, ec=edge))
    for src, dst, label in arrows:
        (x0, y0), (x1, y1) = boxes[src].xy, boxes[dst].xy
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.0, shrinkA=2, shrinkB=2,
                                    patchA=texts[src].get_bbox_patch(), patchB=texts[dst].get_bbox_patch()))
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.18, label, ha="center", va="bottom", fontsize=SMALL,
                    color="0.15", zorder=4, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
    xs, ys = [b.xy[0] for b in boxes.values()], [b.xy[1] for b in boxes.values()]
    ax.set_xlim(xlim or (min(xs) - 0.8, max(xs) + 0.8))
    ax.set_ylim(ylim or (min(ys) - 0.7, max(ys) + 0.7))
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return ax.figure


def _arrow_label(trace: Trace, src_out: Shapes, dst_in: Shapes) -> str:
    """The tensor leaving a part; ``a → b`` when the next part reads it reshaped (code between the parts)."""
    a, b = (format_shape(s[0][1], trace.batch) if s else "" for s in (src_out, dst_in))
    return a if a == b or not b else f"{a} \u2192 {b}" if a else b


def _sub(kind: str, parameters: int) -> str:
    """A box's sub-label: what it is and how many parameters it has."""
    return f"{kind}, {_count(parameters)} params"


# ----------------------------------------------------------------------------- encoders


def _encoder_trace(encoder: nn.Module, example, names) -> Trace:
    """The encoder's parts; a lone container part (an MLP's ``nn.Sequential``) is opened into its layers."""
    t = trace(encoder, example, names=names)
    if names is None and len(t.calls) == 1:
        inner = encoder.get_submodule(t.calls[0].name)
        children = [f"{t.calls[0].name}.{n}" for n, _ in inner.named_children()]
        if children:
            t = trace(encoder, example, names=children)
    return t


def _encoder_chain(ax, encoder: nn.Module, t: Trace, title: str):
    """Input, the traced parts left to right, the features; each arrow carries the tensor between them."""
    modality = getattr(encoder, "modality", "") or "input"
    boxes = {"in": Box(f"{modality}", (0.0, 0.0), "input", "data")}
    arrows, prev, prev_out = [], "in", t.inputs
    for i, c in enumerate(t.calls):
        key = f"c{i}"
        boxes[key] = Box(c.name, (1.7 * (i + 1), 0.0), _sub(c.kind, c.parameters))
        arrows.append((prev, key, _arrow_label(t, prev_out, c.inputs)))
        prev, prev_out = key, c.outputs
    boxes["out"] = Box("features", (1.7 * (len(t.calls) + 1), 0.0), "output", "data")
    arrows.append((prev, "out", _arrow_label(t, prev_out, t.outputs)))
    return render(ax, boxes, arrows, title, ylim=(-0.7, 0.9))


def draw_encoder(encoder: nn.Module, example: torch.Tensor, title: str | None = None,
                 names: Sequence[str] | None = None):
    """One encoder as the chain of its parts, the traced shape on every arrow.

    Args:
        encoder: e.g. ``make_encoder("image", "cnn")``.
        example: a batch it reads, e.g. images (B, 3, S, S), token ids (B, L), waves (B, T).
        title: default: the encoder's class, its parameters and its input and output shapes.
        names: the parts to draw (dotted submodule names, see :func:`trace`); default: its children.
    """
    t = _encoder_trace(encoder, example, names)
    fig, ax = plt.subplots(figsize=(2.4 * (len(t.calls) + 2.5), 1.8))
    title = title or (f"{type(encoder).__name__} ({_count(count_parameters(encoder))} parameters): "
                      f"{t.label(t.inputs)} \u2192 {t.label(t.outputs)}")
    _encoder_chain(ax, encoder, t, title)
    fig.tight_layout()
    return fig


def draw_encoder_families(examples: Mapping[str, tuple[nn.Module, torch.Tensor]], title: str | None = None):
    """One row per encoder: ``examples`` maps a label to ``(encoder, example input)``; every row traced."""
    if not examples:
        raise ValueError("examples is empty: give at least one {label: (encoder, example input)}")
    fig, axes = plt.subplots(len(examples), 1, figsize=(13, 1.55 * len(examples)), squeeze=False)
    for ax, (label, pair) in zip(axes[:, 0], examples.items()):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], nn.Module)):
            raise ValueError(f"examples[{label!r}] must be (encoder, example input), got {type(pair).__name__}")
        encoder, example = pair
        t = _encoder_trace(encoder, example, None)
        _encoder_chain(ax, encoder, t, f"{label}: {t.label(t.inputs)} \u2192 {t.label(t.outputs)}, "
                       f"{_count(count_parameters(encoder))} parameters")
    fig.suptitle(title or "Encoder families: each turns its modality into one feature vector per sample",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))   # room for the suptitle
    return fig


# ----------------------------------------------------------------------------- fusion


def _branches(t: Trace, modalities: Sequence[str]) -> dict[str, str | None]:
    """Each call's modality branch (None: shared): it reads that modality's features, a call of the branch,
    or has the modality in its name (``project.image``) and reads nothing of another branch."""
    owner = {i: _key(p) for (p, _), i in zip(t.inputs, t.input_ids) if _key(p) in modalities}
    branch = {}
    for c in t.calls:
        seen = {owner[i] for i in c.reads if i in owner}
        named = {m for m in modalities if m in c.name.split(".")}
        mods = seen or named
        branch[c.name] = next(iter(mods)) if len(mods) == 1 else None
        if branch[c.name] is not None:
            owner.update({i: branch[c.name] for i in c.writes})
    return branch


def _own_parameters(module: nn.Module) -> int:
    """Parameters held by the module itself and its never-called parameter containers (embeddings, factors)."""
    return sum(p.numel() for p in module.parameters(recurse=False)) + sum(
        count_parameters(m) for m in module.children() if isinstance(m, (nn.ParameterDict, nn.ParameterList)))


def _branch_parts(t: Trace, modalities: Sequence[str], branch: Mapping[str, str | None]):
    """Boxes and arrows of the per-modality rows: each part one column right of the part (or features) it reads;
    parts that read the same thing (a projection and a gate) are stacked in lanes of their modality's row."""
    depth, lane, placed = {}, {m: {} for m in modalities}, []
    writer = {i: (f"in.{_key(p)}", (p_s,)) for p_s, i in zip(t.inputs, t.input_ids) for p in (p_s[0],)}
    last = {m: f"in.{m}" for m in modalities}
    for c in (c for c in t.calls if branch[c.name] is not None):
        m = branch[c.name]
        src = next((writer[i] for i in c.reads if i in writer), (last[m], c.inputs))
        d = depth.get(src[0], 0) + 1
        k = lane[m].setdefault(d, 0)
        lane[m][d] += 1
        depth[f"c.{c.name}"] = d
        placed.append((c, m, d, k, src))
        writer.update({i: (f"c.{c.name}", c.outputs) for i in c.writes})
        last[m] = f"c.{c.name}"
    lanes = {m: max(lane[m].values(), default=1) for m in modalities}
    y, top = {}, 0.0
    for m in modalities:                                          # rows top to bottom, LANE apart inside a row
        y[m] = top - LANE * (lanes[m] - 1) / 2
        top -= LANE * lanes[m] + ROW_GAP
    boxes = {f"in.{m}": Box(m, (0.0, y[m]), "features", "data") for m in modalities}
    arrows, consumed = [], set()
    for c, m, d, k, src in placed:
        key = f"c.{c.name}"
        boxes[key] = Box(c.name, (COLUMN * d, y[m] + LANE * ((lanes[m] - 1) / 2 - k)), _sub(c.kind, c.parameters))
        arrows.append((src[0], key, _arrow_label(t, src[1], c.inputs)))
        consumed.add(src[0])
    ends = [(k, v) for k, v in dict(writer.values()).items() if k not in consumed]
    return boxes, arrows, ends, max(depth.values(), default=0), (top + ROW_GAP) / 2


def _fusion_diagram(ax, fusion: nn.Module, features: Mapping[str, torch.Tensor], title: str):
    t = trace(fusion, dict(features))
    modalities = sorted(features)
    branch = _branches(t, modalities)
    boxes, arrows, ends, depth, middle = _branch_parts(t, modalities, branch)
    x = COLUMN * (depth + 1)
    boxes["fuse"] = Box(type(fusion).__name__, (x, middle), _sub("combine", _own_parameters(fusion)), "op")
    arrows += [(k, "fuse", _arrow_label(t, s, s)) for k, s in ends]
    prev, prev_out = "fuse", None
    shared = [c for c in t.calls if branch[c.name] is None]
    for i, c in enumerate(shared):
        boxes[f"s{i}"] = Box(c.name, (x + COLUMN * (i + 1), middle), _sub(c.kind, c.parameters))
        arrows.append((prev, f"s{i}", _arrow_label(t, prev_out or c.inputs, c.inputs)))
        prev, prev_out = f"s{i}", c.outputs
    boxes["out"] = Box("fused vector", (x + COLUMN * (len(shared) + 1), middle), "output", "data")
    arrows.append((prev, "out", _arrow_label(t, prev_out or t.outputs, t.outputs)))
    return render(ax, boxes, arrows, title)


def draw_fusion(fusion: nn.Module, features: Mapping[str, torch.Tensor], title: str | None = None):
    """Each modality's feature vector through the fusion's parts into one fused vector, shapes traced.

    Parts that read one modality (its projection, gate or head) are drawn on that modality's row;
    the box named after the fusion class stands for the code that combines them (with its own
    parameters, e.g. learned "missing" embeddings or low-rank factors); shared parts follow it.

    Args:
        fusion: e.g. ``make_fusion("gated", in_dims, hidden, num_classes)``.
        features: {modality: (B, D_m)}, the batch it fuses.
        title: default: the fusion's class, parameters and output shape.
    """
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features must be a non-empty dict {modality: (B, D_m) tensor}")
    fig, ax = plt.subplots(figsize=(13, 1.2 + 0.9 * len(features)))
    t = trace(fusion, dict(features))
    _fusion_diagram(ax, fusion, features, title or f"{type(fusion).__name__} "
                    f"({_count(count_parameters(fusion))} parameters): {t.label(t.inputs)} \u2192 {t.label(t.outputs)}")
    fig.tight_layout()
    return fig


def draw_fusion_families(fusions: Mapping[str, nn.Module], features: Mapping[str, torch.Tensor],
                         title: str | None = None, ncols: int = 2):
    """One traced panel per fusion method: ``fusions`` maps a name (e.g. each key of ``FUSIONS``) to a Fusion."""
    if not fusions:
        raise ValueError("fusions is empty: give at least one {name: Fusion}")
    nrows = -(-len(fusions) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(9.0 * ncols, (1.2 + 1.0 * len(features)) * nrows),
                             squeeze=False)
    for ax, (name, fusion) in zip(axes.flat, fusions.items()):
        t = trace(fusion, dict(features))
        _fusion_diagram(ax, fusion, features, f"{name}: {_count(count_parameters(fusion))} parameters, "
                        f"output {t.label(t.outputs)}")
    for ax in axes.flat[len(fusions):]:
        ax.axis("off")
    fig.suptitle(title or "Fusion methods: how each combines the modalities' feature vectors", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))   # room for the suptitle
    return fig


# ----------------------------------------------------------------------------- contrastive pretraining


def _similarity(model: nn.Module, inputs: Mapping[str, torch.Tensor], pair: tuple[str, str]):
    """Embeddings of the pair, their logits (B, B) and the pair's loss, in eval mode (the mode is restored)."""
    name = f"{pair[0]}-{pair[1]}"
    if name not in model.losses:
        raise ValueError(f"pair {pair} is not one of the model's pairs {list(model.pairs)}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            z = model.embed(inputs, pair)                                   # {m: (B, E)}, normalised
            loss = model.losses[name]
            scale = loss.logit_scale.clamp(max=loss.max_logit_scale).exp()
            logits = scale * z[pair[0]] @ z[pair[1]].T                      # (B, B)
            value = float(loss(z[pair[0]], z[pair[1]]))
    finally:
        for m, training in modes.items():
            m.train(training)
    return logits, value


def _towers(t: Trace, pair: tuple[str, str]) -> tuple[dict, list]:
    """The two rows: input -> encoder -> projection -> normalised embedding, each arrow's shape traced."""
    boxes, arrows = {}, []
    for m, y in zip(pair, (0.8, -0.8)):
        enc, proj = t.call(f"encoders.{m}"), t.call(f"projections.{m}")
        z = next(s for p, s in t.outputs if _key(p) == m)
        boxes[f"in.{m}"] = Box(m, (0.0, y), "input", "data")
        boxes[f"enc.{m}"] = Box(f"encoders.{m}", (TOWER_STEP, y), _sub(enc.kind, enc.parameters))
        boxes[f"proj.{m}"] = Box(f"projections.{m}", (2 * TOWER_STEP, y), _sub(proj.kind, proj.parameters))
        boxes[f"norm.{m}"] = Box(f"z_{m}", (3 * TOWER_STEP, y), "L2-normalised", "op")
        arrows += [(f"in.{m}", f"enc.{m}", _arrow_label(t, enc.inputs, enc.inputs)),
                   (f"enc.{m}", f"proj.{m}", _arrow_label(t, enc.outputs, proj.inputs)),
                   (f"proj.{m}", f"norm.{m}", _arrow_label(t, proj.outputs, proj.outputs)),
                   (f"norm.{m}", "sim", format_shape(z, t.batch))]
    return boxes, arrows


def draw_contrastive(model: nn.Module, inputs: Mapping[str, torch.Tensor], pair: tuple[str, str] | None = None,
                     labels: torch.Tensor | None = None, title: str | None = None):
    """Contrastive alignment of one pair: two towers, the B×B similarity matrix, the symmetric cross-entropy.

    Traces ``model`` (a :class:`mmcourse.pretrain.ContrastiveModel`) on ``inputs`` and computes
    the similarity logits of the batch, drawn on the right with the positives (the diagonal) marked.

    Args:
        model: e.g. ``make_contrastive_model()``.
        inputs: a batch dict with the pair's modalities, e.g. ``batch[0]`` of ``make_loader``.
        pair: (a, b), one of ``model.pairs`` (default: the first).
        labels: optional (B,) class of each scene: off-diagonal pairs of the same class are marked too,
            since the loss counts them as negatives although they may match.
        title: default: the pair, B and the loss against its value at chance, log B.
    """
    pair = tuple(pair or model.pairs[0])
    logits, loss = _similarity(model, inputs, pair)
    n = len(logits)
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be (B,) = ({n},), one class per scene, got shape {tuple(labels.shape)}")
    t = trace(model, dict(inputs), names=[f"{part}.{m}" for m in pair
                                                           for part in ("encoders", "projections")])
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(15, 3.8), gridspec_kw={"width_ratios": [3.4, 1]})
    boxes, arrows = _towers(t, pair)
    boxes["sim"] = Box("similarity logits", (4 * TOWER_STEP, 0.0), f"z_{pair[0]} z_{pair[1]}\u1d40 / \u03c4", "op")
    boxes["loss"] = Box("symmetric cross-entropy", (5.3 * TOWER_STEP, 0.0),
                        f"(CE over rows + CE over columns) / 2\n= {loss:.3f}", "op")
    arrows.append(("sim", "loss", format_shape(logits.shape, t.batch, (0, 1))))
    render(ax, boxes, arrows, f"{pair[0]} and {pair[1]} towers, shapes traced")
    im = hm.imshow(logits.float().cpu().numpy(), cmap="viridis")
    hm.scatter(np.arange(n), np.arange(n), marker="s", s=max(4.0, 900 / n), facecolors="none",
               edgecolors="red", linewidths=1.0, label="positive pairs (diagonal)")
    if labels is not None:
        labels = labels.cpu()
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool)      # (B, B)
        i, j = same.nonzero(as_tuple=True)
        hm.scatter(j.numpy(), i.numpy(), marker="o", s=max(2.0, 120 / n), color="white",
                   label=f"same class, counted as negatives ({len(i)})")
    hm.set_xlabel(f"{pair[1]} j")
    hm.set_ylabel(f"{pair[0]} i")
    hm.set_title(f"logits {format_shape(logits.shape, t.batch, (0, 1))}, B = {n}", fontsize=9)
    hm.legend(fontsize=SMALL, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.colorbar(im, ax=hm, fraction=0.046)
    fig.suptitle(title or f"Contrastive alignment of {pair[0]} and {pair[1]}: loss {loss:.3f} on B = {n} pairs "
                 f"(log B = {np.log(n):.3f} when every pair scores alike)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))   # room for the suptitle
    return fig


# ----------------------------------------------------------------------------- training stages and the course map

# What each of the article's three training stages (its §3.1) trains, freezes and reads; chapter numbers.
STAGES = (
    ("stage 1: pretraining", "06", "unlabelled image-caption-sound scenes",
     "contrastive alignment (InfoNCE)\nmasked caption modelling",
     "encoders, projections, temperatures", "nothing (all from scratch)"),
    ("stage 2: joint training", "07", "labelled multimodal scenes",
     "classification + image-text matching\n+ image-text contrastive",
     "encoders (from stage 1), fusion,\nclassification, ITM and ITC heads", "nothing"),
    ("stage 3: task adaptation", "08", "a downstream task, few labels",
     " / ".join(m.replace("_", " ") for m in METHODS),
     "the new head (+ top layers, LoRA,\nadapters or prompts by method)",
     "the backbone, except in full fine-tuning"),
)


def draw_training_stages(title: str = "The three training stages, in order: what each trains and what it freezes"):
    """The article's stages (its §3.1) left to right: data, objective, trained and frozen parts, chapter."""
    boxes, arrows = {}, []
    for i, (name, chapter, data, objective, trained, frozen) in enumerate(STAGES):
        x = 3.4 * i
        boxes[f"s{i}"] = Box(f"{name} (ch. {chapter})", (x, 1.5), f"data: {data}", "part")
        boxes[f"o{i}"] = Box("objective", (x, 0.5), objective, "op")
        boxes[f"t{i}"] = Box("trained", (x, -0.5), trained, "trained")
        boxes[f"f{i}"] = Box("frozen", (x, -1.5), frozen, "frozen")
        arrows += [(f"s{i}", f"o{i}", "")]
        if i:
            arrows.append((f"s{i - 1}", f"s{i}", "weights"))
    fig, ax = plt.subplots(figsize=(12, 4.4))
    render(ax, boxes, arrows, title, xlim=(-1.6, 3.4 * (len(STAGES) - 1) + 1.6), ylim=(-2.0, 2.0))
    fig.tight_layout()
    return fig


# Node positions of the course map (x, y) and the chapters that teach each step.
_MAP_LAYOUT = {
    "multimodal data": ((0.0, 1.0), "01"),
    "cross-modal fusion": ((1.5, 1.6), "03-05"),
    "joint training": ((3.0, 1.6), "07"),
    "task adaptation": ((4.5, 1.6), "08"),
    "pretraining": ((2.25, 0.2), "06"),
    "cross-modal model": ((6.0, 1.0), "02, 10"),
    "inference": ((7.5, 1.0), "10"),
}
# Boxes beside the pipeline: (name, position, chapters, the pipeline step they grow from).
_BESIDE = (
    ("token tagging, MiniLM", (6.0, 2.2), "09", "task adaptation"),    # a task adapted like chapter 08's
    ("applications (§6)", (7.5, 2.2), "11-13", "inference"),           # surveillance, medical, driving
    ("efficiency, scale-out (§8)", (7.5, -0.1), "14-15", "inference"), # a smaller model, served; many processes
    ("third-party data: easy-vqa", (0.0, 2.2), "16", "multimodal data"),  # the same tools on somebody else's data
    ("hyper-parameter search", (3.0, 2.2), "18", "joint training"),    # the training run, tuned honestly
    ("frontiers (§6.4, §8)", (4.5, -0.1), "17", "cross-modal model"),  # domain shift, knowledge graphs, reading
)
_STAGE_ROW_Y = -1.1                                           # the row of the three stages (the article's §3.1)


def plot_course_map():
    """The article's pipeline (its §2 diagram) with the chapters that teach each step, and below it
    the three training stages in order (its §3.1), pretraining first."""
    boxes = {name: Box(name, xy, f"(ch. {chapters})") for name, (xy, chapters) in _MAP_LAYOUT.items()}
    arrows = [(src, dst, "") for src, dst in PIPELINE_EDGES]
    for name, xy, chapters, grows_from in _BESIDE:
        boxes[name] = Box(name, xy, f"(ch. {chapters})", "data")
        arrows.append((grows_from, name, ""))
    for i, (name, chapter, *_) in enumerate(STAGES):
        boxes[name] = Box(name, (1.0 + 2.75 * i, _STAGE_ROW_Y), f"(ch. {chapter})", "trained")
        if i:
            arrows.append((STAGES[i - 1][0], name, ""))
    fig, ax = plt.subplots(figsize=(10, 4.4))
    render(ax, boxes, arrows, "The course map: the article's pipeline, and below it its three training stages "
           "in order", xlim=(-0.8, 8.3), ylim=(-1.6, 2.6))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- parameter-efficient adaptation


def _lora_of(layer: nn.Module) -> LoRA:
    """The :class:`mmcourse.adapt.LoRA` update of a Linear layer's weight, with a clear error without one."""
    if not isinstance(layer, nn.Linear) or not parametrize.is_parametrized(layer, "weight"):
        raise ValueError(f"layer must be an nn.Linear with a LoRA update of its weight (mmcourse.adapt.add_lora), "
                         f"got {type(layer).__name__} {'with' if parametrize.is_parametrized(layer) else 'without'} "
                         f"a parametrization")
    found = [p for p in layer.parametrizations.weight if isinstance(p, LoRA)]
    if not found:
        raise ValueError("layer's weight is parametrized, but not by mmcourse.adapt.LoRA")
    return found[0]


def _lora_paths(layer: nn.Linear, lora: LoRA, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen path W x + b and the low-rank path (alpha / r) B A x, checked to sum to the layer's output."""
    with torch.no_grad():
        out = layer(x)                                                      # (B, d_out)
        frozen = F.linear(x, layer.parametrizations.weight.original, layer.bias)
        low = x @ lora.A.T                                                  # (B, r)
        update = lora.scale * low @ lora.B.T                                # (B, d_out)
    if not torch.allclose(frozen + update, out, rtol=1e-4, atol=1e-5):     # float32 rounding of two matmuls
        raise ValueError("the layer's output is not W x + b + (alpha / r) B A x: is another parametrization "
                         "stacked on its weight?")
    return {"frozen": frozen, "low": low, "update": update, "out": out}


def draw_lora(layer: nn.Linear, x: torch.Tensor, title: str | None = None):
    """A LoRA-adapted Linear layer (Hu et al. 2021): x through the frozen W and the low-rank A, B; the sum.

    Args:
        layer: an ``nn.Linear`` after :func:`mmcourse.adapt.add_lora` (its weight parametrized by ``LoRA``).
        x: an input batch (B, d_in).
        title: default: the rank, alpha / r and the trainable against the frozen parameters.
    """
    lora = _lora_of(layer)
    t = trace(layer, x)
    paths = _lora_paths(layer, lora, x)
    w = layer.parametrizations.weight.original
    b = t.batch
    boxes = {"x": Box("x", (0.0, 0.0), "input", "data"),
             "W": Box("W (frozen)", (2.4, 0.8), f"d_out\u00d7d_in = {format_shape(w.shape)}", "frozen"),
             "A": Box("A", (2.4, -0.8), f"r\u00d7d_in = {format_shape(lora.A.shape)}", "trained"),
             "B": Box("B \u00d7 alpha / r", (4.8, -0.8), f"d_out\u00d7r = {format_shape(lora.B.shape)}, "
                      f"scale {lora.scale:g}", "trained"),
             "sum": Box("+", (6.6, 0.0), "sum", "op"),
             "y": Box("y", (8.2, 0.0), "output", "data")}
    arrows = [("x", "W", format_shape(x.shape, b)), ("x", "A", format_shape(x.shape, b)),
              ("A", "B", format_shape(paths["low"].shape, b)), ("W", "sum", format_shape(paths["frozen"].shape, b)),
              ("B", "sum", format_shape(paths["update"].shape, b)), ("sum", "y", t.label(t.outputs))]
    trainable, frozen = lora.A.numel() + lora.B.numel(), w.numel()
    fig, ax = plt.subplots(figsize=(10, 3.0))
    render(ax, boxes, arrows, title or f"LoRA, rank r = {lora.rank}: y = W x + (alpha / r) B A x trains "
           f"{trainable:,} parameters beside {frozen:,} frozen ones", ylim=(-1.5, 1.5))
    fig.tight_layout()
    return fig


def _adapter_path(block: nn.Module) -> str:
    """The name of the first submodule of ``block`` (maybe ``block`` itself, "") with ``down`` and ``up`` children."""
    for name, sub in block.named_modules():
        if "down" in sub._modules and "up" in sub._modules:
            return name
    raise ValueError(f"{type(block).__name__} has no submodule with 'down' and 'up' children "
                     f"(a bottleneck adapter, mmcourse.adapt.Adapter)")


def _on_path(name: str, path: str) -> bool:
    """Whether the part ``name`` is the adapter at ``path``, inside it, or holds it ("" is the block itself)."""
    return not path or name == path or name.startswith(path + ".") or path.startswith(name + ".")


def _kind(module: nn.Module) -> str:
    """"frozen" when no parameter of ``module`` is trained, else "trained"."""
    return "trained" if any(p.requires_grad for p in module.parameters()) else "frozen"


def draw_adapter(block: nn.Module, x, title: str | None = None):
    """A bottleneck adapter (Houlsby et al. 2019): down-projection, nonlinearity, up-projection, residual add.

    Works for any module with ``down`` and ``up`` children (``mmcourse.adapt.Adapter``) or one that holds
    such a module (``Adapted``: the wrapped module is drawn before it). Shapes are traced; boxes are
    green where parameters are trained, grey where they are frozen.

    Args:
        block: e.g. ``Adapter(64, 16)`` or a module adapted by :func:`mmcourse.adapt.add_adapters`.
        x: its input batch, e.g. (B, D) or (B, L, D).
    """
    path = _adapter_path(block)
    pre = f"{path}." if path else ""
    frontier = [c.name for c in trace(block, x).calls]
    first = next(i for i, n in enumerate(frontier) if _on_path(n, path))
    before = frontier[:first]                                  # parts that run before the adapter, e.g. Adapted.inner
    t = trace(block, x, names=before + [f"{pre}down", f"{pre}up"])
    down, up = t.call(f"{pre}down"), t.call(f"{pre}up")
    mod = block.get_submodule
    boxes = {"x": Box("input", (0.0, 0.0), "", "data")}
    arrows, prev, prev_out = [], "x", t.inputs
    for i, c in enumerate(t.calls[: len(before)]):
        boxes[f"b{i}"] = Box(c.name, (2.2 * (i + 1), 0.0), _sub(c.kind, c.parameters), _kind(mod(c.name)))
        arrows.append((prev, f"b{i}", _arrow_label(t, prev_out, c.inputs)))
        prev, prev_out = f"b{i}", c.outputs
    x0 = 2.2 * (len(before) + 1)
    boxes.update({"down": Box(down.name, (x0, -0.9), _sub(down.kind, down.parameters), _kind(mod(down.name))),
                  "act": Box("nonlinearity", (x0 + 2.2, -0.9), "", "op"),
                  "up": Box(up.name, (x0 + 4.4, -0.9), _sub(up.kind, up.parameters), _kind(mod(up.name))),
                  "sum": Box("+", (x0 + 6.0, 0.0), "residual add", "op"),
                  "out": Box("output", (x0 + 7.6, 0.0), "", "data")})
    arrows += [(prev, "down", _arrow_label(t, prev_out, down.inputs)),
               ("down", "act", _arrow_label(t, down.outputs, ())), ("act", "up", _arrow_label(t, up.inputs, ())),
               ("up", "sum", _arrow_label(t, up.outputs, ())),
               (prev, "sum", "residual " + _arrow_label(t, down.inputs, ())),
               ("sum", "out", t.label(_main(t.outputs)))]
    d, k = down.inputs[0][1][-1], down.outputs[0][1][-1]
    fig, ax = plt.subplots(figsize=(2.0 * (len(before) + 5), 3.0))
    render(ax, boxes, arrows, title or f"Bottleneck adapter: {d} \u2192 {k} \u2192 {d} features, "
           f"{count_parameters(mod(path)):,} parameters, added to its input", ylim=(-1.5, 0.9))
    fig.tight_layout()
    return fig
