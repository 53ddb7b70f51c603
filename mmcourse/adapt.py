"""Stage 3: adapting a pretrained model to a downstream task.

The article's third stage fine-tunes the jointly trained model on a specific task,
"adjusting the top layers". This module offers that and the parameter-efficient
alternatives that grew out of it, all working in place on any ``nn.Module``
(the course's models and a Hugging Face ``BertModel`` alike):

- ``linear_probe``: the pretrained part frozen, only the new head trained;
- ``top_layers``: the head plus the last layer of each encoder;
- ``full``: every parameter (full fine-tuning);
- ``lora``: low-rank updates ``W + (alpha / r) B A`` of frozen weights (Hu et al. 2021);
- ``adapters``: bottleneck adapters (Houlsby et al. 2019's module: down-projection, nonlinearity,
  up-projection, residual) on the output of frozen modules; by default one after each encoder of the
  backbone. Houlsby et al. place two inside every Transformer layer (after the attention and after the
  feed-forward sub-layer, before each residual add); :func:`add_adapters` puts one after whichever
  submodules it is given, so that placement is ``targets`` naming those sub-layers;
- ``prompt``: learnable prompt tokens prepended to a frozen Transformer's input (Lester et al. 2021).

LoRA's B, the adapters' up-projection start at zero, so every method starts from
exactly the pretrained function; :func:`prepare` reports the trainable parameters.
Everything a method adds is created on the device and in the dtype of the parameters it
adapts, so a model on a GPU (or in float64) is adapted where it is.

Also here: the downstream task's data (:func:`downstream_data`, label rule
``size_and_material``), :func:`few_shot` subsets, :func:`make_downstream_model`, and two training
recipes: :func:`train_adapted` (a fresh downstream model, prepared and trained; chapter 08) and
:func:`fine_tune_classifier` (a prepared encoder + head with a separate learning rate for the head;
chapter 09's MiniLM).

Shape letters: B batch, L tokens, P prompt tokens, D width, r rank.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .checks import check_int
from .config import METHODS, Profile, get_profile, stage3_config
from .data.dataset import MultimodalDataset, Split, make_loader, make_splits, subset
from .data.world import SIZE_AND_MATERIAL, World, WorldConfig
from .fusion import FusionModel, make_fusion
from .models import count_parameters
from .pretrain import make_contrastive_model
from .training import TrainConfig, classification_loss, train

LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
PROMPT_INIT_STD = 0.02     # prompt tokens start small and random, like token embeddings


def _placement(module: nn.Module) -> dict:
    """``{"device": ..., "dtype": ...}`` of a module's first floating-point parameter ({} without one)."""
    for p in module.parameters():
        if p.is_floating_point():
            return {"device": p.device, "dtype": p.dtype}
    return {}


def _modules(root: nn.Module, names, what: str) -> dict[str, nn.Module]:
    """{name: submodule} for ``names`` (a list of submodule names of ``root``), with a clear error for an unknown one."""
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of module names, got the str {names!r}")
    found = {}
    for name in names:
        try:
            found[name] = root.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{what}: {type(root).__name__} has no submodule {name!r}") from None
    return found


# ----------------------------------------------------------------------------- LoRA

class LoRA(nn.Module):
    """A low-rank update of a weight, used as a ``torch.nn.utils.parametrize`` parametrization.

    ``weight -> weight + (alpha / rank) * (B @ A).view_as(weight)`` with A (r, fan_in) and
    B (fan_out, r); fan_in = the weight's elements per output row (in_features, or
    in_channels x kernel for a convolution). A starts random (as ``nn.Linear`` does),
    B at zero, so the parametrized weight starts exactly equal to the original.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float | None = None):
        super().__init__()
        check_int(rank, "rank")
        if weight.dim() < 2:
            raise ValueError(f"LoRA needs a weight with >= 2 dims, got shape {tuple(weight.shape)}")
        fan_out, fan_in = weight.shape[0], weight[0].numel()
        self.rank, self.alpha = rank, float(rank if alpha is None else alpha)
        place = {"device": weight.device, "dtype": weight.dtype}
        self.A = nn.Parameter(torch.empty(rank, fan_in, **place))              # (r, fan_in)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(fan_out, rank, **place))             # (fan_out, r)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.scale * (self.B @ self.A)).view_as(weight).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def add_lora(module: nn.Module, rank: int = 4, alpha: float | None = None, targets: Sequence[str] | None = None
             ) -> list[str]:
    """Add a :class:`LoRA` update to the ``weight`` of each target layer; freeze those weights.

    Args:
        module: any model (adapted in place).
        rank: r.
        alpha: the update is scaled by alpha / r (None: alpha = r, scale 1).
        targets: submodule names to adapt (each with a ``weight`` of >= 2 dims); None: every
            ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` of ``module`` (already adapted ones skipped).

    Returns:
        The names of the adapted submodules. Only the wrapped weights are frozen here;
        :func:`prepare` freezes the rest of a pretrained backbone.
    """
    if targets is None:
        chosen = {n: m for n, m in module.named_modules() if isinstance(m, LORA_LAYERS)
                  and not parametrize.is_parametrized(m, "weight")}
    else:
        chosen = _modules(module, targets, "targets")
    for name, layer in chosen.items():
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            raise ValueError(f"targets: {name!r} ({type(layer).__name__}) has no weight matrix for LoRA")
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"targets: {name!r} already has a parametrized weight (LoRA added twice?)")
        parametrize.register_parametrization(layer, "weight", LoRA(weight, rank, alpha))
        layer.parametrizations.weight.original.requires_grad_(False)
    return list(chosen)


def _lora_layers(module: nn.Module):
    for name, layer in module.named_modules():
        if parametrize.is_parametrized(layer, "weight") and any(
                isinstance(p, LoRA) for p in layer.parametrizations.weight):
            yield name, layer


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The A and B matrices of every LoRA update in ``module``."""
    return [p for _, layer in _lora_layers(module) for lora in layer.parametrizations.weight
            if isinstance(lora, LoRA) for p in (lora.A, lora.B)]


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight (W <- W + scale B A): plain layers again, same outputs, no extra cost.

    The merged weights keep the frozen/trainable flag of the original ones. Returns ``module``.
    """
    for _, layer in list(_lora_layers(module)):
        trainable = layer.parametrizations.weight.original.requires_grad
        with torch.no_grad():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        layer.weight.requires_grad_(trainable)
    return module


# ----------------------------------------------------------------------------- adapters

class Adapter(nn.Module):
    """A bottleneck adapter: ``h -> h + up(gelu(down(h)))`` over the feature dimension.

    ``up`` starts at zero, so the adapter starts as the identity.

    Args:
        dim: D, the width of the features it adapts.
        bottleneck: the hidden width (D -> bottleneck -> D).
        channel_dim: where D lies in the input: -1 (last, e.g. (B, D) or (B, L, D)) or 1
            (channels first, e.g. a convolution's (B, D, H, W)).
        device, dtype: of its parameters (None: torch's defaults).
    """

    def __init__(self, dim: int, bottleneck: int = 16, channel_dim: int = -1, *, device=None, dtype=None):
        super().__init__()
        check_int(dim, "dim"), check_int(bottleneck, "bottleneck")
        if channel_dim not in (-1, 1):
            raise ValueError(f"channel_dim must be -1 or 1, got {channel_dim!r}")
        self.dim, self.channel_dim = dim, channel_dim
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.movedim(1, -1) if self.channel_dim == 1 else h
        if x.shape[-1] != self.dim:
            raise ValueError(f"the adapter expects {self.dim} features along dim {self.channel_dim}, "
                             f"got shape {tuple(h.shape)}")
        x = x + self.up(nn.functional.gelu(self.down(x)))
        return x.movedim(-1, 1) if self.channel_dim == 1 else x


class Adapted(nn.Module):
    """A module followed by an :class:`Adapter` on its output (on ``output[0]`` when it returns a tuple).

    The adapter sits after the whole module: wrapping an encoder adapts its output features; wrapping
    a Transformer layer's attention or feed-forward sub-layer gives Houlsby et al.'s placement only
    when that sub-layer's output is added to the residual after the wrapper.

    Attributes of the wrapped module that code commonly reads (``out_dim``, ``modality``) are copied.
    """

    def __init__(self, inner: nn.Module, adapter: Adapter):
        super().__init__()
        self.inner, self.adapter = inner, adapter
        for attr in ("out_dim", "modality"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def _output_dim(layer: nn.Module) -> tuple[int, int] | None:
    """(D, channel_dim) of a module's output, when it can be told from the module."""
    if isinstance(getattr(layer, "out_dim", None), int):
        return layer.out_dim, -1
    if isinstance(layer, nn.Linear):
        return layer.out_features, -1
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return layer.out_channels, 1
    hidden = getattr(getattr(layer, "config", None), "hidden_size", None)
    return (hidden, -1) if isinstance(hidden, int) else None


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new) if not isinstance(parent, (nn.ModuleList, nn.Sequential)) or not child.isdigit() \
        else parent.__setitem__(int(child), new)


def add_adapters(module: nn.Module, targets: Sequence[str], bottleneck: int = 16,
                 dims: Mapping[str, int] | None = None) -> list[str]:
    """Put an :class:`Adapter` on the output of each target submodule (it becomes ``Adapted(inner, adapter)``).

    Args:
        module: any model (adapted in place).
        targets: submodule names; the adapter width comes from ``dims[name]``, else the module's
            ``out_dim`` / ``out_features`` / ``out_channels`` (channels first) / ``config.hidden_size``.
        bottleneck: the adapters' hidden width.
        dims: optional {name: D}.

    Returns:
        The names of the wrapped submodules.
    """
    dims = dict(dims or {})
    chosen = _modules(module, targets, "targets")
    if not chosen:
        raise ValueError("targets is empty: name at least one module to put an adapter after")
    for name, layer in chosen.items():
        if name == "":
            raise ValueError("targets: the root module cannot be wrapped; name its submodules")
        shape = (dims[name], -1) if name in dims else _output_dim(layer)
        if shape is None:
            raise ValueError(f"targets: cannot tell the output width of {name!r} ({type(layer).__name__}); "
                             f"pass dims={{{name!r}: D}}")
        adapter = Adapter(shape[0], bottleneck, shape[1], **_placement(layer))     # where the layer's weights are
        _replace(module, name, Adapted(layer, adapter))
    return list(chosen)


# ----------------------------------------------------------------------------- prompt tuning

class PromptTuning(nn.Module):
    """P learnable prompt vectors prepended to a token sequence.

    A token encoder that supports prompt tuning has a ``prompt`` attribute (None by default);
    when it holds a ``PromptTuning`` the encoder calls :meth:`prepend` on its input embeddings
    (and mask) and :meth:`strip` on its outputs, so the prompts steer attention while the
    outputs stay aligned with the input tokens.
    """

    def __init__(self, n_tokens: int, dim: int, *, device=None, dtype=None):
        super().__init__()
        check_int(n_tokens, "n_tokens"), check_int(dim, "dim")
        self.prompts = nn.Parameter(torch.randn(n_tokens, dim, device=device, dtype=dtype) * PROMPT_INIT_STD)

    @property
    def n_tokens(self) -> int:
        return self.prompts.shape[0]

    def prepend(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D), (B, L) bool -> (B, P + L, D), (B, P + L) with the prompts first (always attended)."""
        if x.dim() != 3 or x.shape[-1] != self.prompts.shape[1] or mask.shape != x.shape[:2]:
            raise ValueError(f"expected x (B, L, {self.prompts.shape[1]}) and mask (B, L), "
                             f"got {tuple(x.shape)} and {tuple(mask.shape)}")
        b = x.shape[0]
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(b, -1, -1)
        keep = torch.ones(b, self.n_tokens, dtype=mask.dtype, device=mask.device)
        return torch.cat([prompts, x], 1), torch.cat([keep, mask], 1)

    def strip(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P + L, D) -> (B, L, D): the outputs at the real tokens."""
        return h[:, self.n_tokens:]


def add_prompts(module: nn.Module, n_tokens: int = 8) -> list[str]:
    """Give every submodule with a ``prompt`` slot (token encoders supporting it) ``n_tokens`` learnable prompts.

    The prompt width is the module's ``prompt_dim`` if it has one, else its ``out_dim``.

    Returns:
        The names of the prompted submodules.

    Raises:
        ValueError: if no submodule supports prompt tuning.
    """
    names = []
    for name, sub in module.named_modules():
        if hasattr(sub, "prompt") and not isinstance(sub, PromptTuning):
            dim = getattr(sub, "prompt_dim", None) or getattr(sub, "out_dim", None)
            if not isinstance(dim, int):
                raise ValueError(f"{name!r} has a prompt slot but no prompt_dim/out_dim")
            sub.prompt = PromptTuning(n_tokens, dim, **_placement(sub))
            names.append(name)
    if not names:
        raise ValueError(f"{type(module).__name__} has no token encoder with a `prompt` slot: prompt tuning needs a "
                         f"Transformer over tokens (e.g. encoders.TransformerTextEncoder or minilm.MiniLMTextEncoder); "
                         f"a bag-of-words or CNN encoder has nowhere to put prompt tokens")
    return names


# ----------------------------------------------------------------------------- methods

@dataclass(frozen=True)
class AdaptReport:
    """What :func:`prepare` did: the method, trainable and total parameter elements, the modules it added to."""

    method: str
    trainable: int
    total: int
    added: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        """Trainable share of all parameters."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.method:<13} {self.trainable:>11,} trainable of {self.total:>11,} ({self.fraction:7.2%})"


def _freeze_batchnorm_stats(module: nn.Module, _args) -> None:
    module.training = False   # a frozen BatchNorm normalises with its pretrained running statistics


def _keep_frozen_norms_in_eval(body: nn.Module) -> None:
    for layer in body.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in layer.parameters(recurse=False)):
            layer.register_forward_pre_hook(_freeze_batchnorm_stats)


def last_layers(body: nn.Module) -> list[str]:
    """For each direct child of ``body``, the name of its last submodule that holds parameters itself.

    These are the "top layers" of each encoder (e.g. ``image.project``, ``text.mlp.2``).
    """
    names = []
    for child_name, child in body.named_children():
        last = None
        for name, sub in child.named_modules():
            if any(True for _ in sub.parameters(recurse=False)):
                last = name
        if last is not None:
            names.append(f"{child_name}.{last}" if last else child_name)
    return names


def prepare(model: nn.Module, method: str, *, backbone: str = "encoders", top: Sequence[str] | None = None,
            rank: int = 4, alpha: float | None = None, lora_targets: Sequence[str] | None = None,
            bottleneck: int = 16, adapter_targets: Sequence[str] | None = None, prompt_tokens: int = 8
            ) -> AdaptReport:
    """Set ``model`` up (in place) for one adaptation method; return what is trained.

    The parameters under ``backbone`` are the pretrained part; every other parameter is the new
    task head and stays trainable. Names in ``top``, ``lora_targets`` and ``adapter_targets``
    are relative to the backbone. Frozen BatchNorm layers keep their running statistics: they
    normalise in eval mode even while the model trains.

    Args:
        model: e.g. :func:`make_downstream_model`'s model (adapted in place).
        method: one of :data:`METHODS`.
        backbone: the submodule name of the pretrained part ("" = the whole model).
        top: ``top_layers``: modules trained besides the head (default :func:`last_layers`).
        rank, alpha, lora_targets: ``lora``: see :func:`add_lora` (default targets: every
            Linear/Conv layer of the backbone).
        bottleneck, adapter_targets: ``adapters``: see :func:`add_adapters` (default targets:
            each direct child of the backbone, e.g. every encoder).
        prompt_tokens: ``prompt``: see :func:`add_prompts`.

    Raises:
        ValueError: for an unknown method or backbone, or a model already prepared.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if getattr(model, "adaptation", None) is not None:
        raise ValueError(f"the model is already prepared for {model.adaptation!r}; start from a fresh copy")
    try:
        body = model.get_submodule(backbone) if backbone else model
    except AttributeError:
        raise ValueError(f"backbone: {type(model).__name__} has no submodule {backbone!r}") from None
    in_body = {id(p) for p in body.parameters()}
    added: list[str] = []
    body.requires_grad_(method == "full")
    if method == "top_layers":
        names = last_layers(body) if top is None else list(top)
        for layer in _modules(body, names, "top").values():
            layer.requires_grad_(True)
        added = names
    elif method == "lora":
        added = add_lora(body, rank, alpha, lora_targets)
    elif method == "adapters":
        names = [n for n, _ in body.named_children()] if adapter_targets is None else list(adapter_targets)
        added = add_adapters(body, names, bottleneck)
    elif method == "prompt":
        added = add_prompts(body, prompt_tokens)
    for p in model.parameters():
        if id(p) not in in_body:       # the task head, and what the method added (LoRA, adapters, prompts)
            p.requires_grad_(True)
    _keep_frozen_norms_in_eval(body)
    model.adaptation = method
    return AdaptReport(method, count_parameters(model, trainable_only=True), count_parameters(model), tuple(added))


# ----------------------------------------------------------------------------- the downstream task

def downstream_world(profile: Profile | str) -> World:
    """The profile's world with chapter 08's label rule (``size_and_material``, 8 classes)."""
    profile = get_profile(profile)
    return World(WorldConfig(image_size=profile.image_size, label_rule=SIZE_AND_MATERIAL.name))


def downstream_data(profile: Profile | str, seed: int) -> dict[str, MultimodalDataset]:
    """Train/dev/test splits of the downstream task, sized by :func:`mmcourse.config.stage3_config`.

    The scenes come from the same world as stages 1 and 2 (the same seed gives the same
    dev and test scenes as :func:`mmcourse.pretrain.stage1_data`); only the labels are new.
    """
    cfg = stage3_config(profile)
    return make_splits(downstream_world(profile), Split(cfg.train_size, cfg.dev_size, cfg.test_size), seed)


def few_shot(dataset: MultimodalDataset, per_class: int, seed: int = 0) -> MultimodalDataset:
    """``per_class`` scenes of every class: the first ones of each class in a seeded permutation.

    The subsets are nested: the 5-per-class set of a seed contains its 1-per-class set.

    Raises:
        ValueError: if ``per_class`` < 1 or a class has fewer scenes than that.
    """
    check_int(per_class, "per_class")
    labels = dataset.labels.numpy()
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = []
    for c in range(len(dataset.class_names)):
        rows = order[labels[order] == c][:per_class]
        if len(rows) < per_class:
            raise ValueError(f"class {c} ({dataset.class_names[c]!r}) has only {len(rows)} scenes, "
                             f"fewer than per_class={per_class}")
        picked.append(rows)
    return subset(dataset, np.sort(np.concatenate(picked)))


def make_downstream_model(stage1: nn.Module | None, num_classes: int, fusion: str = "concat", layers: int = 0,
                          hidden: int = 64, seed: int | None = None) -> FusionModel:
    """A classifier for the downstream task on top of stage-1 (or stage-2) encoders.

    The whole model is on the device (and in the dtype) of the encoders' parameters.

    Args:
        stage1: a model with an ``encoders`` ModuleDict (copied; the original is untouched),
            or None for freshly initialised encoders of the stage-1 families (the scratch baseline).
        num_classes: C.
        fusion: a fusion name (``concat``: the features side by side).
        layers: hidden layers of a ``concat`` fusion (0: the head is a single Linear layer on the
            concatenated features, so ``linear_probe`` is a true linear probe).
        hidden: H of the fusion when it has hidden layers.
        seed: seeds the new layers (the fusion, the head and, without ``stage1``, the encoders),
            on the CPU and without touching torch's global generator; None: they are drawn from
            the global generator.

    Returns:
        A :class:`~mmcourse.fusion.FusionModel`; ``.encoders`` is the pretrained backbone.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    source = None
    if stage1 is not None:
        source = getattr(stage1, "encoders", None)
        if not isinstance(source, nn.ModuleDict):
            raise TypeError(f"stage1 must have an nn.ModuleDict .encoders, got {type(stage1).__name__}")
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        encoders = dict(make_contrastive_model().encoders) if source is None else copy.deepcopy(dict(source))
        in_dims = {m: enc.out_dim for m, enc in encoders.items()}
        options = {"layers": layers} if fusion == "concat" else {}
        model = FusionModel(make_fusion(fusion, in_dims, hidden, num_classes, **options), num_classes, encoders)
    place = _placement(model.encoders)
    model.fusion.to(**place)
    model.head.to(**place)
    return model


# ----------------------------------------------------------------------------- training recipes

def train_adapted(stage1: nn.Module | None, method: str, train_set: MultimodalDataset, steps: int, *, lr: float,
                  batch_size: int, device, seed: int = 0, **options) -> tuple[FusionModel, AdaptReport, float]:
    """A fresh downstream model on ``stage1``'s encoders, prepared for ``method`` and trained ``steps`` steps.

    The recipe of chapter 08: Adam with a warm-up over the first tenth of the steps and cosine decay
    (:class:`~mmcourse.training.TrainConfig`), plain cross-entropy
    (:func:`~mmcourse.training.classification_loss`), batches of ``min(batch_size, len(train_set))``.

    Args:
        stage1: a model with an ``encoders`` ModuleDict (copied), or None for fresh encoders.
        method: one of :data:`METHODS`, or ``"scratch"``: fresh encoders (``stage1`` ignored), ``full``.
        train_set: the labelled scenes (the downstream classes).
        steps: optimizer steps.
        lr, batch_size: peak learning rate, scenes per step.
        device: where the model trains.
        seed: seeds torch's global generator (the new layers, then what ``prepare`` adds) and the shuffle.
        options: passed to :func:`prepare` (``rank``, ``bottleneck``, ...).

    Returns:
        (the trained model in eval mode, what :func:`prepare` reported, training seconds).
    """
    check_int(steps, "steps")
    scratch = method == "scratch"
    torch.manual_seed(seed)
    model = make_downstream_model(None if scratch else stage1, len(train_set.class_names)).to(device)
    report = prepare(model, "full" if scratch else method, **options)
    loader = make_loader(train_set, min(batch_size, len(train_set)), shuffle=True, seed=seed)
    config = TrainConfig(epochs=10**6, max_steps=steps, lr=lr, warmup_steps=steps // 10, progress=False)
    start = time.perf_counter()
    train(model, classification_loss, loader, config, device)
    return model.eval(), report, time.perf_counter() - start


def fine_tune_classifier(model: nn.Module, train_set: MultimodalDataset, steps: int, *, lr: float, head_lr: float,
                         batch_size: int, device, seed: int = 0) -> float:
    """Train a prepared ``encoder`` + ``head`` classifier (e.g. a UnimodalClassifier) in place; return seconds.

    The encoder's trainable parameters (those :func:`prepare` left trainable) learn at ``lr``, the new
    head at ``head_lr`` (a new layer can take larger steps than pretrained weights); Adam, warm-up over
    the first tenth of the steps, cosine decay, cross-entropy.

    Raises:
        TypeError: if ``model`` has no ``encoder`` and ``head`` submodules.
    """
    check_int(steps, "steps")
    if not isinstance(getattr(model, "encoder", None), nn.Module) or not isinstance(getattr(model, "head", None),
                                                                                    nn.Module):
        raise TypeError(f"model must have .encoder and .head modules, got {type(model).__name__}")
    body = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = ([{"params": body, "lr": lr}] if body else []) + [{"params": list(model.head.parameters()),
                                                                 "lr": head_lr}]
    config = TrainConfig(epochs=10**6, max_steps=steps, lr=lr, warmup_steps=steps // 10, progress=False)
    loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    start = time.perf_counter()
    train(model, classification_loss, loader, config, device, optimizer=torch.optim.Adam(groups))
    return time.perf_counter() - start
