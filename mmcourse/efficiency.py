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
import io
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_int
from .config import _check_fraction, _check_positive, _table_entry
from .data.dataset import BatchedDataset, Split, batch_index, make_loader
from .data.text import PAD_ID, WORLD_VOCAB
from .encoders import ENCODERS, Encoder
from .evaluation import run_batches
from .fusion import FUSIONS, FusionModel, make_fusion
from .modality import check_tensor
from .training import TrainConfig, classification_loss, load_or_train, train
from .utils import build_dir

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


# ----------------------------------------------------------------------------- the chapter's settings

@dataclass(frozen=True)
class EfficiencyConfig:
    """Chapter 14's sizes in one profile.

    Attributes:
        train, dev, test: scenes of the main task (the teacher's labelled training set, the monitor, the score).
        epochs: the teacher's passes over ``train``.
        batch_size: scenes per optimizer step (every run of the chapter).
        lr: peak learning rate (short warm-up, cosine decay: :class:`mmcourse.training.TrainConfig`).
        widths, dim, hidden: the teacher's CNN channels, feature width D and fusion width H (narrow convolutions,
            wide Linear layers: the layers int8 quantisation of Linear layers shrinks hold most of the bytes).
        student_widths, student_dim, student_hidden: the distilled student's (about a quarter of the parameters).
        few_labels: labelled scenes the students get (the distilled one also sees all ``train`` scenes unlabelled).
        student_epochs: the distilled student's passes over ``train``.
        few_epochs: the few-label student's passes over its ``few_labels`` scenes (about as many steps).
        temperature, alpha: distillation's T and the weight of the cross-entropy on the few labels.
        prune_fraction: fraction of every convolution's output channels that structured pruning removes.
        finetune_epochs: passes over ``train`` after pruning (the unpruned control gets the same).
        calibration_batches: batches that calibrate static (PT2E) quantisation.
        repeats: timed rounds per variant (the latency is their median).
    """

    train: int
    dev: int
    test: int
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    widths: tuple[int, int, int] = (8, 16, 32)
    dim: int = 128
    hidden: int = 256
    student_widths: tuple[int, int, int] = (8, 16, 16)
    student_dim: int = 56
    student_hidden: int = 112
    few_labels: int = 300
    student_epochs: int = 3
    temperature: float = 4.0
    alpha: float = 0.5
    few_epochs: int = 60
    prune_fraction: float = 0.5
    finetune_epochs: int = 3
    calibration_batches: int = 4
    repeats: int = 15

    def __post_init__(self):
        _check_positive(self, ("train", "dev", "test", "epochs", "batch_size", "dim", "hidden", "student_dim",
                               "student_hidden", "few_labels", "student_epochs", "few_epochs", "finetune_epochs",
                               "calibration_batches", "repeats"))
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"EfficiencyConfig: lr and temperature must be > 0, got {self.lr!r}, {self.temperature!r}")
        _check_fraction(self, ("alpha", "prune_fraction"))
        if self.few_labels > self.train:
            raise ValueError(f"few_labels ({self.few_labels}) must be <= train ({self.train})")

    @property
    def split(self) -> Split:
        return Split(train=self.train, dev=self.dev, test=self.test)


EFFICIENCY: dict[str, EfficiencyConfig] = {
    "smoke": EfficiencyConfig(train=1500, dev=200, test=300, epochs=2, student_epochs=1, few_labels=200, few_epochs=8,
                              finetune_epochs=1, repeats=3, calibration_batches=2),
    "default": EfficiencyConfig(train=8000, dev=1000, test=4000, epochs=5, repeats=25),
    "full": EfficiencyConfig(train=60000, dev=5000, test=20000, epochs=10, batch_size=128, student_epochs=8,
                             few_labels=1000, few_epochs=200, repeats=50),
}


def efficiency_config(profile=None) -> EfficiencyConfig:
    """The :class:`EfficiencyConfig` of a profile (a name, a :class:`mmcourse.config.Profile` or None)."""
    return _table_entry(EFFICIENCY, profile, "efficiency")[1]


def architecture(widths, dim: int, hidden: int, num_classes: int = 10) -> dict:
    """The architecture dict of an audio CNN + image CNN + bag-of-words text model with concat fusion."""
    cnn = {"family": "cnn", "dim": dim, "widths": list(widths)}
    return {"encoders": {"audio": dict(cnn), "image": dict(cnn), "text": {"family": "bag", "dim": dim}},
            "fusion": {"name": "concat", "hidden": hidden}, "num_classes": num_classes}


def teacher_architecture(config: EfficiencyConfig) -> dict:
    return architecture(config.widths, config.dim, config.hidden)


def student_architecture(config: EfficiencyConfig) -> dict:
    return architecture(config.student_widths, config.student_dim, config.student_hidden)



# ----------------------------------------------------------------------------- training the chapter's models

def fit(model: nn.Module, data, config: EfficiencyConfig, device, epochs: int, *, loss_fn=classification_loss,
        checkpoint=None, resume: bool = False, seed: int = 0, lr: float | None = None):
    """Train ``model`` (on ``device``) on ``data`` with the course loop; returns the History."""
    loader = make_loader(data, config.batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    train_config = TrainConfig(epochs=epochs, lr=lr or config.lr, warmup_steps=min(50, steps // 10),
                               log_every=len(loader))
    return train(model, loss_fn, loader, train_config, device, checkpoint=checkpoint, resume=resume)


def teacher_path(profile_name: str, seed: int) -> Path:
    """The teacher's declared checkpoint: ``build/checkpoints/efficiency_teacher_{profile}_seed{seed}.pt``."""
    return build_dir("checkpoints") / f"efficiency_teacher_{profile_name}_seed{seed}.pt"


def load_teacher(config: EfficiencyConfig, train_data, device, path, seed: int = 0) -> FusionModel:
    """The teacher from its checkpoint ``path``, trained on ``train_data`` first when absent (``load_or_train``)."""
    arch = teacher_architecture(config)

    def build():
        torch.manual_seed(seed)
        return build_model(arch)

    def train_fn(resume: bool):
        model = build().to(device)
        fit(model, train_data, config, device, config.epochs, checkpoint=path, resume=resume, seed=seed)
        return model

    return load_or_train(path, build, train_fn, device)


def accuracy(model, data, device, present: torch.Tensor | None = None, modalities=None) -> float:
    """Test accuracy of ``model`` on ``data`` (only ``modalities`` given, when named)."""
    keep = tuple(modalities) if modalities is not None else None

    def fn(m, batch):
        inputs = batch[0] if keep is None else {k: batch[0][k] for k in keep}
        return m(inputs).argmax(-1)

    return float((run_batches(model, fn, data, device) == data.labels).float().mean())


# ----------------------------------------------------------------------------- measuring: size and latency

def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the model weighs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@contextmanager
def threads(n: int = 1):
    """Run the block with ``torch.set_num_threads(n)``; the previous setting is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_round_robin(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each call of every ``fns[name]()``, the variants called alternately.

    Each of ``repeats`` rounds calls every function once in the order given, so a slow phase of the machine
    (another process, a frequency change) touches every variant alike instead of the one that ran then.
    ``warmup`` untimed rounds come first (allocations, lazy initialisation).

    Returns:
        {name: [seconds of round 1, ..., round ``repeats``]}.
    """
    if not fns:
        raise ValueError("fns must name at least one function to time")
    check_int(repeats, "repeats")
    check_int(warmup, "warmup", minimum=0)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def median_latency(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """The median seconds per call of every function, timed round-robin on one thread (:func:`threads`)."""
    with threads(1), torch.inference_mode():
        times = time_round_robin(fns, repeats, warmup)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- int8 quantisation

INT8_MIN, INT8_MAX = -128, 127
# Symmetric int8 as torchao's Int8 configs choose it (MappingType.SYMMETRIC): the scale maps max |w| to half the
# int8 range, (127 - (-128)) / 2 = 127.5, and the rounded values are clamped to [-128, 127].
HALF_RANGE = (INT8_MAX - INT8_MIN) / 2


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation of a matrix (a weight's output channels, or a batch's rows).

    Args:
        weight: (O, I) float.
    Returns:
        ``(q, scale)``: q (O, I) int8 with ``weight ≈ q * scale[:, None]``; scale (O,) float32 = max |row| / 127.5.
    """
    check_tensor(weight, "weight", 2, float_=True)
    scale = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).eps) / HALF_RANGE        # (O,)
    q = torch.round(weight / scale[:, None]).clamp(INT8_MIN, INT8_MAX).to(torch.int8)        # (O, I)
    return q, scale.float()


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight (O, I) that int8 ``q`` (O, I) and per-channel ``scale`` (O,) stand for."""
    check_tensor(q, "q", 2, float_=None)
    if q.dtype != torch.int8 or scale.shape != q.shape[:1]:
        raise ValueError(f"q must be int8 (O, I) and scale (O,); got q {q.dtype} {tuple(q.shape)}, "
                         f"scale {tuple(scale.shape)}")
    return q.float() * scale[:, None]


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
    """A Linear layer in int8: activations quantised per row on the fly, the product summed in int32.

    Args:
        x: (B, I) float; q: (O, I) int8 weights; scale: (O,) their scales; bias: (O,) or None.
    Returns:
        (B, O) float32: ``(qx @ q.T) * sx * scale + bias``, with ``qx, sx = quantize_per_channel(x)``.
    """
    qx, sx = quantize_per_channel(x)                                   # (B, I) int8, (B,)
    acc = qx.to(torch.int32) @ q.to(torch.int32).T                     # (B, O) int32: exact sums of int8 products
    y = acc.float() * sx[:, None] * scale[None, :]                     # (B, O) float: dequantised
    return y if bias is None else y + bias


class QuantizedBag(nn.Module):
    """A ``torch.ao`` quantised ``EmbeddingBag`` called on contiguous ids, its sum turned back into a mean.

    ``torch.ao.nn.quantized.EmbeddingBag`` accepts ``mode='mean'`` but sums (torch 2.x); the padding rows are
    zero, so dividing by each bag's number of non-padding ids gives the mean of ``nn.EmbeddingBag(mode="mean",
    padding_idx=PAD_ID)`` back (a caption of padding only stays zero). ``mean=False`` keeps the library's sum
    (the pitfall, shown in chapter 14). Its kernel also needs contiguous ids (a trimmed batch is a slice).
    """

    def __init__(self, bag: nn.Module, padding_idx: int | None = PAD_ID, mean: bool = True):
        super().__init__()
        self.bag, self.padding_idx, self.mean = bag, padding_idx, mean

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Bags of ``ids`` (B, L), or of flat ids (N,) starting at ``offsets`` (B,), as ``nn.EmbeddingBag``."""
        ids = ids.contiguous()
        total = self.bag(ids, offsets)                                         # (B, D): a sum
        if not self.mean:
            return total
        real = (ids != self.padding_idx if self.padding_idx is not None else torch.ones_like(ids, dtype=torch.bool))
        ones = real.to(total.dtype).reshape(-1, 1)                             # (N, 1): 1 for a real token
        rows = torch.arange(len(ones), device=ids.device)                      # (N,): row i holds token i's 1
        count = F.embedding_bag(rows.reshape(ids.shape), ones, offsets, mode="sum")   # (B, 1) real tokens per bag
        return total / count.clamp(min=1)                                      # (B, D): the mean


def _float_bags(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(parent, name) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is nn.EmbeddingBag]


def quantize_torch_ao(model: nn.Module, fix_mean: bool = True) -> nn.Module:
    """A copy of ``model`` with ``torch.ao.quantization.quantize_dynamic``: Linear int8 (dynamic activations),
    EmbeddingBag int8 per row (``float_qparams_weight_only_qconfig``).

    ``fix_mean=False`` keeps the library's quantised bag as it is, which sums where the float one averaged.
    """
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    mean_bags = {id(getattr(p, n)) for p, n in _float_bags(model) if getattr(p, n).mode == "mean"}
    paths = [name for name, m in model.named_modules() if id(m) in mean_bags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # torch.ao.quantization is deprecated for torchao
        warnings.simplefilter("ignore", UserWarning)
        out = quantize_dynamic(copy.deepcopy(model).eval(),
                               {nn.Linear: default_dynamic_qconfig, nn.EmbeddingBag: float_qparams_weight_only_qconfig})
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = out.get_submodule(parent_path)
        setattr(parent, name, QuantizedBag(getattr(parent, name), model.get_submodule(path).padding_idx, fix_mean))
    return out


def quantize_bags(model: nn.Module) -> nn.Module:
    """``model`` (changed in place, returned) with every ``nn.EmbeddingBag`` in int8 per row, mean fixed.

    torchao's ``quantize_`` does not cover ``EmbeddingBag`` (its Int8Tensor has no ``embedding_bag``
    kernel), so the tables go through ``torch.ao``'s quantised bag and :class:`QuantizedBag`.
    """
    from torch.ao.nn.quantized import EmbeddingBag as AoBag
    from torch.ao.quantization import float_qparams_weight_only_qconfig

    for parent, name in _float_bags(model):
        bag = getattr(parent, name)
        bag.qconfig = float_qparams_weight_only_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = AoBag.from_float(bag)
        setattr(parent, name, QuantizedBag(quantized, bag.padding_idx, mean=bag.mode == "mean"))
    return model


def quantize_torchao(model: nn.Module, dynamic: bool = True, bags: bool = True) -> nn.Module:
    """A copy of ``model`` with torchao's ``quantize_`` on its Linear layers, and its embedding tables in int8.

    Args:
        dynamic: ``Int8DynamicActivationInt8WeightConfig`` (activations quantised per row at run time, int8
            matmul) if True, else ``Int8WeightOnlyConfig`` (int8 weights dequantised to float).
        bags: also quantise every ``EmbeddingBag`` (:func:`quantize_bags`).
    Convolutions stay float: torchao's int8 configs convert ``nn.Linear`` only (:func:`count_quantized`).
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    out = copy.deepcopy(model).eval()
    quantize_(out, Int8DynamicActivationInt8WeightConfig() if dynamic else Int8WeightOnlyConfig())
    return quantize_bags(out) if bags else out


def count_quantized(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per layer kind (Linear, Conv2d, EmbeddingBag): (layers with int8 weights, layers of that kind)."""
    from torch.ao.nn.quantized import EmbeddingBag as AoBag
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    def int8(module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return isinstance(module, (AoBag, DynamicLinear)) or (
            isinstance(weight, torch.Tensor) and type(weight).__name__ not in ("Parameter", "Tensor"))

    kinds = {"Linear": (nn.Linear, DynamicLinear), "Conv2d": (nn.Conv2d,), "EmbeddingBag": (nn.EmbeddingBag, AoBag)}
    return {kind: (sum(int8(m) for m in model.modules() if isinstance(m, types)),
                   sum(1 for m in model.modules() if isinstance(m, types))) for kind, types in kinds.items()}


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel of (B, C, ...): an eval-mode BatchNorm with nothing before it to fold into."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm2d folded away: into the Conv2d just before it
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``), else into a :class:`ChannelAffine`. Same function in eval.

    Deployment folds them anyway; here it also spares ``convert_pt2e`` its conv-BN pass for quantisation-aware
    training (about 10 s of pattern exports on a laptop CPU), which a post-training quantisation does not need.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(model).eval()
    for parent in list(out.modules()):
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and type(b) is nn.BatchNorm2d:
                setattr(parent, name_a, fuse_conv_bn_eval(a, b))
                setattr(parent, name_b, nn.Identity())
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                scale = child.weight / torch.sqrt(child.running_var + child.eps)
                setattr(parent, name, ChannelAffine(scale, child.bias - child.running_mean * scale))
    return out


def quantize_pt2e(model: nn.Module, example_inputs: Mapping[str, torch.Tensor], calibration,
                  drop_stale: bool = True) -> nn.Module:
    """Static int8 of the convolutions and Linear layers through PT2E (torchao's ``prepare_pt2e`` / ``convert_pt2e``
    with ``X86InductorQuantizer``): fold the BatchNorms (:func:`fold_batchnorm`), export with a dynamic batch and
    caption length, insert observers, run the ``calibration`` batches, convert. Returns a :class:`FreshInputs`.

    ``convert_pt2e`` leaves the float weights it replaced as attributes of the module; ``drop_stale=True``
    deletes every parameter and buffer the graph no longer reads (:func:`drop_unused_attributes`).
    """
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = _fresh(example_inputs)
    exported = torch.export.export(fold_batchnorm(model), (example,),
                                   dynamic_shapes=(dynamic_shapes(example),)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(_fresh(inputs))
    converted = convert_pt2e(prepared)

    return FreshInputs(drop_unused_attributes(converted) if drop_stale else converted)


def _fresh(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in inputs.items()}


class FreshInputs(nn.Module):
    """An exported graph called on copies of its inputs: ``torch.export`` guards on whether an input is a view
    (a caption batch trimmed of its padding is a slice of a wider tensor), so every call passes fresh tensors."""

    def __init__(self, graph_module: nn.Module):
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        super().__init__()
        self.graph = allow_exported_model_train_eval(graph_module)   # eval() then leaves the graph as it is

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.graph(_fresh(inputs))


# The one rule of every export of this family (torch.export, PT2E, ONNX): dim 0 of every input is the
# batch, and dim 1 of the token ids is the caption length; both stay symbolic.
BATCH = torch.export.Dim("batch")
TOKENS = torch.export.Dim("tokens")


def export_dims(name: str) -> dict[int, torch.export.Dim]:
    """The dynamic dims of input ``name`` (a modality, or ``"present"``): the batch, and for ``"text"`` the length."""
    return {0: BATCH, 1: TOKENS} if name == "text" else {0: BATCH}


def dynamic_shapes(inputs: Mapping[str, torch.Tensor]) -> dict:
    """``torch.export`` dynamic shapes for a batch dict {name: (B, ...)} (:func:`export_dims` of every key)."""
    return {m: export_dims(m) for m in inputs}


def drop_unused_attributes(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph_module`` with every parameter and buffer that no node of its graph reads deleted (a ``get_attr``
    node reads an attribute, a ``call_module`` node everything inside its module)."""
    used = {node.target for node in graph_module.graph.nodes if node.op in ("get_attr", "call_module")}
    for name in [n for n, _ in list(graph_module.named_parameters()) + list(graph_module.named_buffers())]:
        if name not in used and not any(u.startswith(name + ".") or name.startswith(u + ".") for u in used):
            parent_path, _, attr = name.rpartition(".")
            parent = graph_module.get_submodule(parent_path) if parent_path else graph_module
            delattr(parent, attr)
    return graph_module


# ----------------------------------------------------------------------------- pruning

def magnitude_prune(model: nn.Module, amount: float, remove: bool = True) -> nn.Module:
    """A copy of ``model`` whose Conv2d and Linear weights lose their ``amount`` smallest entries (global L1).

    ``remove=False`` keeps ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` and ``weight_mask``
    stored beside each other); ``remove=True`` bakes the zeros into a dense ``weight`` of the same size.
    """
    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount!r}")
    out = copy.deepcopy(model)
    layers = [(m, "weight") for m in out.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    if remove:
        for module, name in layers:
            prune.remove(module, name)
    return out


def zero_fraction(model: nn.Module) -> float:
    """Fraction of exact zeros among the Conv2d and Linear weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def select_channels(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` output channels of a conv weight (C_out, C_in, k, k) with the largest L1 norms, in order."""
    check_tensor(weight, "weight", 4, float_=True)
    if not 1 <= keep <= weight.shape[0]:
        raise ValueError(f"keep must be in [1, {weight.shape[0]}] (the output channels), got {keep}")
    norms = weight.abs().sum((1, 2, 3))                                  # (C_out,)
    return norms.topk(keep).indices.sort().values                        # (keep,) ascending channel order


def _sliced_conv(conv: nn.Conv2d, out_idx, in_idx) -> nn.Conv2d:
    new = nn.Conv2d(len(in_idx), len(out_idx), conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    new.weight.data = conv.weight.data[out_idx][:, in_idx].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data[out_idx].clone()
    return new


def _sliced_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum)
    for name in ("weight", "bias"):
        getattr(new, name).data = getattr(bn, name).data[idx].clone()
    for name in ("running_mean", "running_var"):
        setattr(new, name, getattr(bn, name)[idx].clone())
    new.num_batches_tracked = bn.num_batches_tracked.clone()
    return new


def prune_channels(model: FusionModel, fraction: float) -> FusionModel:
    """A copy of ``model`` with ``fraction`` of every CNN encoder's conv channels removed (smallest L1 norms).

    Each block's Conv2d keeps its ``round((1 - fraction) * C_out)`` strongest filters (:func:`select_channels`);
    its BatchNorm keeps the same channels, the next conv (or the encoder's projection: a 1x1 Conv2d for images,
    a Linear on the channel axis for audio) keeps those input channels. The layers are rebuilt smaller, so the
    model really computes less (unlike a mask). ``fraction=0`` gives the same function.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    out = copy.deepcopy(model)
    for modality, encoder in out.encoders.items():
        blocks = getattr(encoder, "blocks", None)
        if blocks is None:
            continue
        idx = torch.arange(blocks[0][0].in_channels)
        for block in blocks:
            conv, bn = block[0], block[1]
            keep = select_channels(conv.weight, max(1, round((1 - fraction) * conv.out_channels)))
            block[0], block[1] = _sliced_conv(conv, keep, idx), _sliced_bn(bn, keep)
            idx = keep
        project = encoder.project
        if isinstance(project, nn.Conv2d):
            encoder.project = _sliced_conv(project, torch.arange(project.out_channels), idx)
        else:
            new = nn.Linear(len(idx), project.out_features)
            new.weight.data, new.bias.data = project.weight.data[:, idx].clone(), project.bias.data.clone()
            encoder.project = new
    return out.train(model.training)      # the rebuilt layers are born in training mode


# ----------------------------------------------------------------------------- distillation

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, alpha: float, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network").

    ``T² · KL(softmax(teacher / T) || softmax(student / T)) + α · CE(student, labels)``, the KL averaged over
    all B rows, the cross-entropy over the ``labelled`` rows only (none labelled: no CE term). The T² keeps the
    soft term's gradients at the scale of the hard one when T changes.

    Args:
        student_logits, teacher_logits: (B, C); labels: (B,) int64 (ignored where not ``labelled``) or None;
        labelled: (B,) bool, default all rows when ``labels`` is given.
    """
    check_tensor(student_logits, "student_logits", 2, float_=True)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits.detach() / t, 1),
                    reduction="batchmean", log_target=True) * t**2
    if labels is None or alpha == 0:
        return soft
    if labelled is None:
        labelled = torch.ones_like(labels, dtype=torch.bool)
    if labelled.shape != labels.shape or labelled.dtype != torch.bool:
        raise ValueError(f"labelled must be bool of the labels' shape {tuple(labels.shape)}, "
                         f"got {labelled.dtype} {tuple(labelled.shape)}")
    ce = F.cross_entropy(student_logits, labels, reduction="none")                      # (B,)
    ce = (ce * labelled).sum() / labelled.sum().clamp(min=1)
    return soft + alpha * ce


class DistillationData(BatchedDataset):
    """Scenes with the teacher's logits and a mask of the few labelled ones: batches
    ``(inputs, labels, {"teacher": (B, C), "labelled": (B,) bool})``."""

    def __init__(self, data: BatchedDataset, teacher_logits: torch.Tensor, labelled: torch.Tensor):
        if len(teacher_logits) != len(data) or len(labelled) != len(data):
            raise ValueError(f"teacher_logits ({len(teacher_logits)}) and labelled ({len(labelled)}) need one row "
                             f"per scene ({len(data)})")
        self.data, self.teacher_logits, self.labelled = data, teacher_logits, labelled
        self.labels = data.labels

    @property
    def tensors(self):
        return self.data.tensors

    def __getitems__(self, indices):
        inputs, labels = self.data.__getitems__(indices)
        rows = batch_index(indices)
        return inputs, labels, {"teacher": self.teacher_logits[rows], "labelled": self.labelled[rows]}


def distillation_objective(temperature: float, alpha: float):
    """The ``loss_fn(model, batch)`` of :func:`mmcourse.training.train` for :class:`DistillationData` batches."""
    def loss_fn(model, batch):
        inputs, labels, extra = batch
        return distillation_loss(model(inputs), extra["teacher"], labels, temperature, alpha, extra["labelled"])
    return loss_fn


def teacher_logits(teacher: nn.Module, data, device) -> torch.Tensor:
    """The teacher's logits (N, C) on every scene of ``data``, on the CPU."""
    return run_batches(teacher, lambda m, batch: m(batch[0]), data, device)


# ----------------------------------------------------------------------------- a diagram

def draw_int8_linear(batch: int, in_features: int, out_features: int,
                     title: str = "An int8 Linear layer: both operands quantised, summed in int32, dequantised once"):
    """The data flow of :func:`int8_linear` with the shapes of a (batch, in) x (out, in) product on the arrows."""
    import matplotlib.pyplot as plt

    from .diagrams import Box, render

    b, i, o = batch, in_features, out_features
    boxes = {"x": Box("x", (0, 1.2), f"({b}, {i}) float32", "data"),
             "w": Box("W", (0, -1.2), f"({o}, {i}) float32", "trained"),
             "qx": Box("quantise per row", (3.4, 1.2), "s_x = max|x| / 127"),
             "qw": Box("quantise per channel", (3.4, -1.2), "s_w = max|W_row| / 127 (once, offline)"),
             "mm": Box("int8 x int8 matmul", (7.2, 0), "sums in int32", "op"),
             "dq": Box("dequantise", (10.2, 0), "acc * s_x * s_w + bias"),
             "y": Box("y", (12.8, 0), f"({b}, {o}) float32", "data")}
    arrows = [("x", "qx", ""), ("w", "qw", ""), ("qx", "mm", f"({b}, {i}) int8 + ({b},)"),
              ("qw", "mm", f"({o}, {i}) int8 + ({o},)"), ("mm", "dq", f"({b}, {o}) int32"), ("dq", "y", "")]
    fig, ax = plt.subplots(figsize=(12, 3.2))
    return render(ax, boxes, arrows, title)
