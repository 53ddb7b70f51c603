"""One training loop for every stage: schedules, clipping, early stopping, checkpoints, resume.

:func:`train` runs any model on any loss: ``loss_fn(model, batch)`` returns a
scalar loss (or a dict with ``"loss"`` and other scalars to log), so the same
loop pretrains with a contrastive loss (chapter 06), trains jointly with
several losses (chapter 07) and adapts (chapter 08).

What the loop guarantees:

- **No host synchronisation per step.** Losses, counts and the NaN watch are
  accumulated in tensors on the device and read every ``log_every`` steps.
- **Mixed precision and the device** come from :mod:`mmcourse.utils`
  (bf16 autocast on CUDA, float32 on the CPU).
- **Warm-up + cosine schedule, gradient clipping, early stopping** on any
  metric that ``evaluate`` returns.
- **Checkpoints** are written atomically (temporary file, then rename), load
  with ``torch.load(..., weights_only=True)``, and hold everything a run needs
  to continue: weights, optimizer, schedule, the loader's shuffle state, the
  torch random state and the history. Resuming gives the same final weights
  and metrics as an uninterrupted run.
- **A NaN or infinite loss** stops the run with :class:`NonFiniteLossError`,
  naming the step where it appeared and the last finite loss.
- **A run can be paused** by ``train(..., stop=...)``: ``stop(state)`` is asked
  after each step with the :class:`RunState`; when it says yes, the checkpoint
  is written, the run is not finished, and ``resume=True`` continues it.
- **The TensorBoard writer is closed** on every way out (the end, a pause,
  early stopping, an error, Ctrl-C).

How :func:`train` reads, top-down: ``_Loop.resume`` (from a checkpoint), then
``_Loop.run`` → ``run_epoch`` → ``step`` (:func:`train_step`, the one optimizer step) and ``after_step`` (evaluate,
epoch end, stop, periodic checkpoint) → ``finish``; ``_Loop.contents`` is what
a checkpoint holds.

Distributed training (:mod:`mmcourse.distributed`, chapter 15: the same loop under ``torchrun``).
If the loader's sampler has ``set_epoch`` (``DistributedSampler``), it is
called at each epoch's start; only rank 0 (:func:`_rank`, 0 without a process
group) writes checkpoints, TensorBoard and progress bars, and every rank reads
the checkpoint on resume; the training means of the history go through
:func:`_reduce`, the identity without a process group and an ``all_reduce`` sum
with one.

``fit``, ``train_epoch``, ``predict`` and ``accuracy_on`` are the small
classification helpers of chapters 02–05; ``fit`` and ``train_epoch`` are
:func:`train` with a constant learning rate and no clipping.
:func:`steps_to_reach` reads a :class:`History`'s learning curve.
"""
from __future__ import annotations

import copy
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from .checks import check_int
from .evaluation import run_batches
from .metrics import accuracy
from .utils import atomic_write, autocast, build_dir, to_device

PROGRESS_ENV = "MMCOURSE_PROGRESS"   # "0" switches progress bars off (set by `make` for notebook runs)
CHECKPOINT_FORMAT = 1
SCHEDULES = ("cosine", "constant")
# Fields of TrainConfig that may change between a run and its resumption (they do not alter the numbers).
_RESUMABLE_CHANGES = {"progress", "tensorboard", "log_every", "checkpoint_every"}

LossFn = Callable[[nn.Module, object], "torch.Tensor | Mapping[str, torch.Tensor]"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
StopFn = Callable[["RunState"], bool]
STOP_REQUESTED = "stop requested"    # how History.stop_reason begins when train's `stop` paused the run


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------- configuration and history

@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train` trains. Every field is a plain value, so a checkpoint can store it.

    Attributes:
        epochs: passes over the training loader.
        max_steps: stop after this many optimizer steps, even inside an epoch (None: no cap);
            the schedule then spans ``min(epochs * len(loader), max_steps)`` steps.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) when > 0, else plain Adam.
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        schedule: ``"cosine"`` (decay to 0 at the last step) or ``"constant"``.
        grad_clip: maximum global gradient norm, or None for no clipping.
        eval_every: steps between evaluations; None evaluates at the end of each epoch.
        patience: stop after this many evaluations without improving ``monitor`` (None: never).
        monitor: the ``evaluate()`` key that early stopping and ``restore_best`` follow.
        mode: ``"max"`` or ``"min"``: which direction of ``monitor`` is better.
        restore_best: at the end, load the weights of the best evaluation.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        log_every: steps between host synchronisations (progress bar and NaN check).
        progress: show a ``tqdm.auto`` bar per epoch; None shows it unless ``$MMCOURSE_PROGRESS=0``.
        tensorboard: name of a run folder under ``build/tensorboard/`` to log to, or None.
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = 1.0
    eval_every: int | None = None
    patience: int | None = None
    monitor: str = "dev_accuracy"
    mode: str = "max"
    restore_best: bool = False
    checkpoint_every: int | None = None
    log_every: int = 50
    progress: bool | None = None
    tensorboard: str | None = None

    def __post_init__(self):
        for name in ("epochs", "log_every"):
            check_int(getattr(self, name), f"TrainConfig.{name}")
        for name in ("max_steps", "eval_every", "patience", "checkpoint_every"):
            check_int(getattr(self, name), f"TrainConfig.{name}", allow_none=True)
        check_int(self.warmup_steps, "TrainConfig.warmup_steps", minimum=0)
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"TrainConfig.mode must be 'max' or 'min', got {self.mode!r}")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        decay_steps = max(total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class History:
    """What a run measured, one entry per evaluation (plots and reports read these lists).

    Attributes:
        step: optimizer steps done at each evaluation.
        epoch: epochs done (fractional when evaluating inside an epoch).
        train_loss: mean training loss since the previous evaluation.
        lr: learning rate at the evaluation.
        seconds: wall time since the previous evaluation (not part of any equality test).
        metrics: the ``evaluate()`` values and ``train_<name>`` means of extra training scalars.
        best_step: step of the best ``monitor`` value (None without evaluations).
        stop_reason: why training ended (``"completed"``, early stopping, ...).
    """

    step: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    best_step: int | None = None
    stop_reason: str = ""

    @property
    def stopped(self) -> bool:
        """True when ``train``'s ``stop`` paused the run: it is not finished, ``resume=True`` continues it."""
        return self.stop_reason.startswith(STOP_REQUESTED)

    @property
    def dev_accuracy(self) -> list[float]:
        """``metrics["dev_accuracy"]`` (empty if the run did not report it)."""
        return self.metrics.get("dev_accuracy", [])

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "History":
        return cls(**{f.name: copy.deepcopy(data[f.name]) for f in fields(cls)})


@dataclass
class RunState:
    """Where a run stands: checkpoints store it, and ``train``'s ``stop(state)`` reads it after each step.

    Attributes:
        step: optimizer steps done.
        epoch: epochs done.
        batch: batches done in the current epoch.
        finished: the run ended (completed, early stopping, ``max_steps``); resuming returns at once.
        bad_evals: evaluations since ``monitor`` last improved.
        best: the best ``monitor`` value so far (None before the first evaluation).
        epoch_rng: the loader generator's state when the current epoch began (to replay its order).
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    finished: bool = False
    bad_evals: int = 0
    best: float | None = None
    epoch_rng: torch.Tensor | None = None

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------- checkpoints

def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Name and shape of every entry of the model's state dict."""
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def _check_signature(saved: Mapping[str, list[int]], model: nn.Module, path) -> None:
    current = model_signature(model)
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [f"{k}: {tuple(saved[k])} in the file, {tuple(current[k])} in the model"
              for k in sorted(set(saved) & set(current)) if list(saved[k]) != current[k]]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing from the file: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"not in the model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            problems.append("shape mismatch: " + "; ".join(shapes[:5]))
        raise ValueError(f"checkpoint {path} was saved from a different model than {type(model).__name__}: "
                         + " | ".join(problems))


def read_checkpoint(path) -> dict:
    """The raw contents of a checkpoint file, read with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not a readable mmcourse checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, unsafe pickle ...
        raise ValueError(f"could not read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT or "model" not in data:
        raise ValueError(f"{path} is not an mmcourse checkpoint (format {CHECKPOINT_FORMAT})")
    return data


def load_checkpoint(path, model: nn.Module) -> dict:
    """Load the weights of checkpoint ``path`` into ``model``; return the whole checkpoint dict.

    Raises:
        ValueError: naming the differing keys or shapes when the checkpoint is from another model.
    """
    data = read_checkpoint(path)
    _check_signature(data["signature"], model, path)
    model.load_state_dict(data["model"])
    return data


def save_checkpoint(path, contents: Mapping) -> Path:
    """Write ``contents`` atomically: an interrupted write leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save(dict(contents), buffer)          # serialise fully before touching the disk
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_or_train(path, build_model: Callable[[], nn.Module], train_fn: Callable[[bool], nn.Module],
                  device) -> nn.Module:
    """An earlier chapter's model from its declared checkpoint ``path``, trained first when it is not there.

    A finished checkpoint loads into ``build_model()``; an unfinished one is continued by
    ``train_fn(True)`` (resume), and a missing one trained by it; one saved from a different
    model (e.g. after a code change) is retrained afresh by ``train_fn(False)``, with a warning.
    ``train_fn(resume)`` must train with ``checkpoint=path`` and return the trained model.

    Returns:
        the model on ``device``, in eval mode.
    """
    path = Path(path)
    if path.is_file():
        model = build_model()
        try:
            finished = load_checkpoint(path, model)["run"]["finished"]
        except ValueError as exc:
            warnings.warn(f"retraining {path.name}: {exc}", stacklevel=2)
            return train_fn(False).to(device).eval()
        if finished:
            return model.to(device).eval()
    return train_fn(True).to(device).eval()


# ----------------------------------------------------------------------------- distributed training

def _rank() -> int:
    """This process's rank in the default process group; 0 without one (a single-process run)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor); ``tensor`` itself without a process group."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def _set_epoch(loader, epoch: int) -> None:
    """Tell the loader's sampler which epoch starts, if it asks (``DistributedSampler`` reshuffles by epoch)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


# ----------------------------------------------------------------------------- the loop's parts

def _batch_size(batch) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        n = _batch_size(item)
        if n:
            return n
    return 0


def _split_loss(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        loss, extras = out, {}
    elif isinstance(out, Mapping) and "loss" in out:
        loss, extras = out["loss"], {k: v for k, v in out.items() if k != "loss"}
    else:
        raise TypeError(f"loss_fn must return a scalar tensor or a dict with a 'loss' entry, got {type(out).__name__}")
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(getattr(loss, 'shape', ()))}")
    return loss, extras


class _Meter:
    """Sums on the device between evaluations, and the NaN watch; read only at sync points."""

    def __init__(self, device):
        self.device = device
        # float64 sums keep long runs exact; MPS has no float64.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.reset()
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.last_finite = torch.full((), float("nan"), device=device)
        self.last_finite_step = torch.zeros((), dtype=torch.long, device=device)

    def reset(self):
        self.loss_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        self.extra_sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, loss: torch.Tensor, extras: Mapping[str, torch.Tensor], n: int):
        loss = loss.detach().float()
        self.step += 1
        finite = torch.isfinite(loss)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, self.step, self.first_bad)
        ok = finite & (self.first_bad < 0)
        self.last_finite = torch.where(ok, loss, self.last_finite)
        self.last_finite_step = torch.where(ok, self.step, self.last_finite_step)
        self.loss_sum += loss.to(self.dtype) * n
        for k, v in extras.items():
            v = torch.as_tensor(v, device=self.device).detach().to(self.dtype)
            self.extra_sums[k] = self.extra_sums.get(k, torch.zeros((), dtype=self.dtype, device=self.device)) + v * n
        self.count += n

    def check_finite(self):
        """Raise :class:`NonFiniteLossError` if a loss since the start was NaN or infinite (one sync)."""
        bad = int(self.first_bad)
        if bad >= 0:
            last, at = float(self.last_finite), int(self.last_finite_step)
            before = (f"the last finite loss was {last:.6g} at step {at}" if at > 0
                      else "no step had a finite loss")
            raise NonFiniteLossError(
                f"the training loss became non-finite (NaN or inf) at step {bad}; {before}. "
                "Lower the learning rate, enable grad_clip, or check the inputs; resume from the last "
                "checkpoint, which holds only finite weights.")

    def mean_loss(self) -> float:
        """This process's mean loss since the last reset (for its progress bar)."""
        return float(self.loss_sum) / max(self.count, 1)

    def means(self) -> tuple[float, dict[str, float]]:
        """Mean loss and mean extra scalars since the last reset, over all ranks (:func:`_reduce`)."""
        count = max(float(_reduce(torch.tensor(float(self.count), dtype=self.dtype, device=self.device))), 1)
        extras = {k: float(_reduce(v)) / count for k, v in self.extra_sums.items()}
        return float(_reduce(self.loss_sum)) / count, extras

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "count": self.count,
                "extra_sums": {k: v.cpu() for k, v in self.extra_sums.items()},
                "step": self.step.cpu(), "first_bad": self.first_bad.cpu(),
                "last_finite": self.last_finite.cpu(), "last_finite_step": self.last_finite_step.cpu()}

    def load(self, state: Mapping):
        self.loss_sum = state["loss_sum"].to(self.device)
        self.count = int(state["count"])
        self.extra_sums = {k: v.to(self.device) for k, v in state["extra_sums"].items()}
        for name in ("step", "first_bad", "last_finite", "last_finite_step"):
            setattr(self, name, state[name].to(self.device))


def _progress_enabled(config: TrainConfig) -> bool:
    if config.progress is not None:
        return config.progress
    return os.environ.get(PROGRESS_ENV, "1") != "0"


class _Progress:
    """One epoch's progress bar (``tqdm.auto``), updated at sync points only; does nothing when switched off."""

    def __init__(self, config: TrainConfig, state: RunState, steps_per_epoch: int):
        self.bar = None
        if _progress_enabled(config) and _rank() == 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps_per_epoch, initial=state.batch, unit="step", leave=True,
                            desc=f"epoch {state.epoch + 1}/{config.epochs}")
        self.synced_at, self.samples, self.tick = state.step, 0, time.perf_counter()

    def add(self, samples: int) -> None:
        self.samples += samples

    def sync(self, step: int, meter: _Meter) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        self.bar.update(step - self.synced_at)
        self.bar.set_postfix(loss=f"{meter.mean_loss():.4f}", samples_per_s=f"{self.samples / (now - self.tick):.0f}",
                             refresh=False)
        self.synced_at, self.samples, self.tick = step, 0, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _shuffle_generator(loader) -> torch.Generator | None:
    """The generator that decides a shuffled loader's order (None if the loader does not shuffle)."""
    if not isinstance(loader, DataLoader):
        if not hasattr(loader, "__len__") or not hasattr(loader, "__iter__") or isinstance(loader, (str, bytes)):
            raise TypeError("loader must be a DataLoader (see mmcourse.data.make_loader) or a list of batches, "
                            f"got {type(loader).__name__}")
        return None             # a fixed sequence of batches: the same order every epoch
    if not isinstance(loader.sampler, RandomSampler):
        return None             # in order, or a sampler that orders by epoch (DistributedSampler, see _set_epoch)
    generator = loader.sampler.generator
    if generator is None:
        raise ValueError("the loader shuffles without its own torch.Generator, so a resumed run could not replay its "
                         "order; build it with mmcourse.data.make_loader(..., shuffle=True, seed=...)")
    return generator


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or AdamW when ``config.weight_decay > 0``."""
    if config.weight_decay > 0:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr)


def _state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _open_writer(config: TrainConfig, step: int):
    """The TensorBoard writer of ``config.tensorboard`` (rank 0 only), or None."""
    if not config.tensorboard or _rank() != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError("TrainConfig.tensorboard needs the tensorboard package (pip install tensorboard)") from exc
    return SummaryWriter(str(build_dir("tensorboard", config.tensorboard)), purge_step=step or None)


def _check_setup(config, evaluate, checkpoint, resume: bool) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.patience is not None and evaluate is None:
        raise ValueError("TrainConfig.patience needs an evaluate function to watch")
    if config.restore_best and evaluate is None:
        raise ValueError("TrainConfig.restore_best needs an evaluate function")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")


def _check_resumable(data: Mapping, config: TrainConfig, steps_per_epoch: int, path: Path) -> None:
    """Refuse a checkpoint made with settings that would change the numbers."""
    changed = sorted(k for k, v in data["config"].items()
                     if k not in _RESUMABLE_CHANGES and asdict(config).get(k) != v)
    if changed:
        raise ValueError(f"checkpoint {path} was made with a different TrainConfig ({', '.join(changed)} "
                         "differ); resume with the same settings or start afresh (resume=False)")
    if data["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(f"checkpoint {path} had {data['steps_per_epoch']} steps per epoch, this loader has "
                         f"{steps_per_epoch}: resume with the same data and batch size")


def _rng_state(generator: torch.Generator | None, device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "loader": generator.get_state() if generator is not None else None}


def _restore_rng(saved: Mapping, generator: torch.Generator | None, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if generator is not None and saved["loader"] is not None:
        generator.set_state(saved["loader"])
    if saved["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state_all(saved["cuda"])


# ----------------------------------------------------------------------------- one optimizer step

class StepResult(NamedTuple):
    """What :func:`train_step` did.

    Attributes:
        loss: the scalar loss of the batch, detached (on the device: reading it waits for the device).
        extras: the other scalars ``loss_fn`` returned, by name.
        grad_norm: the total gradient norm before clipping (``clip_grad_norm_``'s return value),
            None without clipping.
    """

    loss: torch.Tensor
    extras: dict[str, torch.Tensor]
    grad_norm: torch.Tensor | None


def optimized_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters ``optimizer`` steps, in the order of its parameter groups (the ones clipping scales)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def train_step(model: nn.Module, batch, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
               clip: float | None, autocast, scaler: "torch.amp.GradScaler | None" = None) -> StepResult:
    """One optimizer step: the loss under ``autocast``, backward, gradient clipping, the optimizer's step.

    :func:`train` runs every step through this function. In order: the forward pass and the loss run
    inside ``autocast``; the gradients are cleared and the loss is back-propagated; if ``clip`` is
    given, :func:`torch.nn.utils.clip_grad_norm_` rescales the gradients of the optimizer's parameters
    by ``min(1, clip / (norm + 1e-6))``, ``norm`` being the 2-norm of all of them together; the
    optimizer steps. With a ``scaler`` (float16 autocast), the loss is scaled before backward, the
    gradients are unscaled before clipping, and ``scaler.step`` skips a step whose gradients overflowed.

    Args:
        model: in train mode, on the batch's device.
        batch: already on the device (:func:`mmcourse.utils.to_device`).
        loss_fn: ``loss_fn(model, batch)``: a scalar loss, or a dict with ``"loss"`` and other scalars.
        optimizer: steps its parameters (:func:`optimized_params`).
        clip: the largest total gradient norm, or None for no clipping.
        autocast: the precision context of the forward pass, e.g. :func:`mmcourse.utils.autocast` of
            the device (bf16 autocast on CUDA, a no-op on a CPU).
        scaler: a ``torch.amp.GradScaler`` for float16 autocast; None for float32 and bfloat16, whose
            exponent range needs no loss scaling (the course's policy uses none).

    Returns:
        a :class:`StepResult`: the loss, the extra scalars and the gradient norm before clipping.

    Raises:
        TypeError, ValueError: if ``loss_fn`` returns neither a scalar tensor nor a dict with a scalar ``"loss"``.
    """
    with autocast:
        loss, extras = _split_loss(loss_fn(model, batch))
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = None if clip is None else nn.utils.clip_grad_norm_(optimized_params(optimizer), clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return StepResult(loss.detach(), extras, norm)


# ----------------------------------------------------------------------------- the loop

class _Loop:
    """What one call of :func:`train` works on, and its parts: resume, step, evaluate, checkpoint."""

    def __init__(self, model, loss_fn, loader, config: TrainConfig, device: torch.device, evaluate, optimizer,
                 extra_params, checkpoint):
        self.model, self.loss_fn, self.loader, self.config, self.device = model, loss_fn, loader, config, device
        self.evaluate_fn, self.extra_params = evaluate, list(extra_params)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.generator = _shuffle_generator(loader)
        self.steps_per_epoch = len(loader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training loader yields no batches")
        self.total_steps = min(config.epochs * self.steps_per_epoch, config.max_steps or math.inf)
        self.params = [p for p in [*model.parameters(), *self.extra_params] if p.requires_grad]
        self.optimizer = optimizer or make_optimizer(self.params, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: config.lr_factor(s, self.total_steps))
        self.meter, self.history, self.state = _Meter(device), History(), RunState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.writer, self.clock = None, time.perf_counter()

    # -- resume and checkpoint

    def resume(self) -> None:
        """Continue from the checkpoint: weights, optimizer, schedule, history, meter and random states."""
        data = load_checkpoint(self.checkpoint, self.model)
        _check_resumable(data, self.config, self.steps_per_epoch, self.checkpoint)
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        with torch.no_grad():
            for p, saved in zip(self.extra_params, data["extra_params"]):
                p.copy_(saved)
        self.state = RunState(**data["run"])
        self.history = History.from_dict(data["history"])
        if not self.state.finished:
            self.history.stop_reason = ""        # a paused run goes on: why it paused no longer holds
        self.meter.load(data["meter"])
        self.best_state = data["best_state"]
        _restore_rng(data["rng"], self.generator, self.device)

    def contents(self) -> dict:
        """Everything a checkpoint holds (after a NaN check: never write weights that a NaN has touched)."""
        self.meter.check_finite()
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "signature": model_signature(self.model), "model_class": type(self.model).__name__,
                "config": asdict(self.config), "steps_per_epoch": self.steps_per_epoch,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "extra_params": [p.detach() for p in self.extra_params], "run": self.state.as_dict(),
                "history": self.history.as_dict(), "meter": self.meter.state(), "best_state": self.best_state,
                "rng": _rng_state(self.generator, self.device)}

    def save(self) -> None:
        """Write the checkpoint, if the run has one, from rank 0 only."""
        if self.checkpoint is not None and _rank() == 0:
            save_checkpoint(self.checkpoint, self.contents())

    # -- one step, one epoch

    def step(self, batch) -> int:
        """:func:`train_step` on ``batch``, then the schedule and the meter; returns the batch's number of samples.

        Nothing here waits for the device.
        """
        batch = to_device(batch, self.device)
        done = train_step(self.model, batch, self.loss_fn, self.optimizer, clip=self.config.grad_clip,
                          autocast=autocast(self.device))
        self.scheduler.step()
        n = _batch_size(batch)
        self.meter.add(done.loss, done.extras, n)
        self.state.step += 1
        self.state.batch += 1
        return n

    def run_epoch(self, stop) -> None:
        """The rest of the current epoch (a resumed epoch replays its order and skips the batches done)."""
        state = self.state
        if self.generator is not None:
            if state.batch == 0 or state.epoch_rng is None:
                state.epoch_rng = self.generator.get_state()
            else:
                self.generator.set_state(state.epoch_rng)
        _set_epoch(self.loader, state.epoch)
        batches = iter(self.loader)
        for _ in range(state.batch):
            next(batches)
        progress = _Progress(self.config, state, self.steps_per_epoch)
        try:
            for batch in batches:
                progress.add(self.step(batch))
                if state.step % self.config.log_every == 0 or state.batch == self.steps_per_epoch:
                    self.meter.check_finite()
                    progress.sync(state.step, self.meter)
                if self.after_step(stop):
                    break
        finally:
            progress.close()

    def after_step(self, stop) -> bool:
        """Evaluate, end the epoch, decide whether to stop, checkpoint; True when the run stops here."""
        state, config, history = self.state, self.config, self.history
        if config.eval_every is not None and state.step % config.eval_every == 0:
            self.evaluate()
        if state.batch == self.steps_per_epoch:
            state.epoch, state.batch, state.epoch_rng = state.epoch + 1, 0, None
            if config.eval_every is None:
                self.evaluate()
        if config.max_steps is not None and state.step >= config.max_steps and not history.stop_reason:
            history.stop_reason = f"max_steps ({config.max_steps}) reached"
        if stop is not None and not history.stop_reason and state.step < self.total_steps and stop(state):
            history.stop_reason = f"{STOP_REQUESTED} at step {state.step}"
        if history.stop_reason:
            return True
        if (config.checkpoint_every is not None and state.step % config.checkpoint_every == 0
                and state.step < self.total_steps):        # the last one is written by finish()
            self.save()
        return False

    # -- evaluation

    def evaluate(self) -> None:
        """Evaluate, append to the history (and TensorBoard), reset the meter, watch for early stopping."""
        self.meter.check_finite()
        self.model.eval()
        with torch.no_grad(), autocast(self.device):
            values = dict(self.evaluate_fn(self.model)) if self.evaluate_fn is not None else {}
        self.model.train()
        train_loss, extras = self.meter.means()
        values.update({f"train_{k}": v for k, v in extras.items()})
        self.record(train_loss, values)
        self.meter.reset()
        if self.evaluate_fn is not None:
            self.watch(values)

    def record(self, train_loss: float, values: Mapping[str, float]) -> None:
        history, step, now = self.history, self.state.step, time.perf_counter()
        history.step.append(step)
        history.epoch.append(step / self.steps_per_epoch)
        history.train_loss.append(train_loss)
        history.lr.append(self.optimizer.param_groups[0]["lr"])
        history.seconds.append(now - self.clock)
        self.clock = now
        for k, v in values.items():
            history.metrics.setdefault(k, []).append(float(v))
        if self.writer is not None:
            self.writer.add_scalar("train/loss", train_loss, step)
            self.writer.add_scalar("train/lr", history.lr[-1], step)
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)

    def watch(self, values: Mapping[str, float]) -> None:
        """Track the best ``monitor`` value (and its weights); set the stop reason when patience runs out."""
        config, state, history = self.config, self.state, self.history
        if config.monitor not in values:
            raise ValueError(f"evaluate() returned {sorted(values)}, which lacks TrainConfig.monitor "
                             f"{config.monitor!r}")
        value, sign = float(values[config.monitor]), 1.0 if config.mode == "max" else -1.0
        if state.best is None or sign * value > sign * state.best:
            state.best, state.bad_evals = value, 0
            history.best_step = state.step
            if config.restore_best:
                self.best_state = _state_dict_copy(self.model)
            return
        state.bad_evals += 1
        if config.patience is not None and state.bad_evals >= config.patience:
            history.stop_reason = (f"early stop at step {state.step}: {config.monitor} did not improve for "
                                   f"{config.patience} evaluations (best {state.best:.4f} at step "
                                   f"{history.best_step})")

    # -- the whole run

    def run(self, stop) -> History:
        """Train from where the state stands to the end of the run, or until ``stop``; write the checkpoint."""
        self.writer, self.clock = _open_writer(self.config, self.state.step), time.perf_counter()
        try:
            self.model.train()
            while self.state.epoch < self.config.epochs and not self.history.stop_reason:
                self.run_epoch(stop)
            if self.history.stopped:
                self.save()                 # paused, not finished: a resume continues from here
                return self.history
            self.finish()
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.history

    def finish(self) -> None:
        """The last evaluation, the stop reason, the best weights, and the final checkpoint."""
        self.meter.check_finite()
        if self.evaluate_fn is not None and self.history.step and self.history.step[-1] != self.state.step:
            self.evaluate()                  # the last steps after the last scheduled evaluation
        self.history.stop_reason = self.history.stop_reason or "completed"
        self.state.finished = True
        if self.config.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.save()


def train(model: nn.Module, loss_fn: LossFn, loader: DataLoader, config: TrainConfig, device, *,
          evaluate: EvalFn | None = None, checkpoint=None, resume: bool = False,
          optimizer: torch.optim.Optimizer | None = None, extra_params=(),
          stop: StopFn | None = None) -> History:
    """Train ``model`` on ``loss_fn`` over ``loader`` as ``config`` says; return the :class:`History`.

    Args:
        model: already on ``device``; trained in place.
        loss_fn: ``loss_fn(model, batch)`` with the batch on ``device``; returns a scalar loss or a
            dict with ``"loss"`` and other scalars (logged as ``train_<name>``). Runs under autocast.
        loader: a DataLoader (a shuffling one needs its own generator; ``make_loader`` gives one),
            or a list of ready batches.
        config: a :class:`TrainConfig`.
        device: where the batches go.
        evaluate: ``evaluate(model) -> {name: float}``, called in eval mode without gradients
            every ``config.eval_every`` steps (or each epoch).
        checkpoint: file to write checkpoints to (atomically); None writes none.
        resume: continue from ``checkpoint`` if it exists (a finished run returns its history at once).
        optimizer: defaults to :func:`make_optimizer` over the model's parameters and ``extra_params``.
        extra_params: parameters trained besides the model's (e.g. a loss's learnable temperature).
        stop: ``stop(state) -> bool``, asked after every step before the last with the :class:`RunState`
            (read it, do not change it); True pauses the run there: the checkpoint is written, the run is
            not finished (``resume=True`` continues it exactly), and ``History.stopped`` is True.
            ``stop=lambda s: s.step >= 100`` stops after 100 steps.

    Raises:
        NonFiniteLossError: when the loss becomes NaN or infinite (step and last finite loss named).
        ValueError: for an inconsistent setup (early stopping without ``evaluate``, a checkpoint of
            another model or configuration, ...).
    """
    _check_setup(config, evaluate, checkpoint, resume)
    loop = _Loop(model, loss_fn, loader, config, torch.device(device), evaluate, optimizer, extra_params, checkpoint)
    if resume and loop.checkpoint.is_file():
        loop.resume()
        if loop.state.finished:
            return loop.history
    return loop.run(stop)


# ----------------------------------------------------------------------------- classification helpers

def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """The loss function of plain classification for :func:`train`: cross-entropy of ``model(inputs)`` (B, C)
    against ``target`` (B,), for a batch ``(inputs, target)``."""
    inputs, target = batch
    return nn.functional.cross_entropy(model(inputs), target)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device) -> float:
    """One pass over ``loader`` with cross-entropy and ``optimizer`` as it is; returns the mean training loss."""
    if len(loader) == 0:
        raise ValueError("the training loader yielded no batches")
    config = TrainConfig(epochs=1, schedule="constant", grad_clip=None, progress=False,
                         log_every=max(len(loader), 1))
    return train(model, classification_loss, loader, config, device, optimizer=optimizer).train_loss[-1]


def predict(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and true labels over ``loader``: (N,), (N,) on the CPU.

    Runs in eval mode at the training loop's precision (:func:`mmcourse.evaluation.run_batches`);
    the model's train/eval mode is restored afterwards.
    """
    return run_batches(model, lambda m, batch: (m(batch[0]).argmax(-1), batch[1]), loader, device)


def accuracy_on(model: nn.Module, loader, device) -> float:
    """Fraction of correct predictions of ``model`` over ``loader``."""
    return accuracy(*predict(model, loader, device))


def fit(model: nn.Module, train_loader, dev_loader, optimizer, epochs: int, device) -> History:
    """Train for ``epochs`` epochs at a constant learning rate, recording train loss and dev accuracy after each."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    config = TrainConfig(epochs=epochs, schedule="constant", grad_clip=None, progress=False,
                         log_every=max(len(train_loader), 1))
    return train(model, classification_loss, train_loader, config, device, optimizer=optimizer,
                 evaluate=lambda m: {"dev_accuracy": accuracy_on(m, dev_loader, device)})


# ----------------------------------------------------------------------------- reading a run

def steps_to_reach(history, target: float, key: str = "dev_accuracy") -> int | None:
    """The first evaluated step at which ``history.metrics[key]`` reaches ``target`` (None if it never does)."""
    values = history.metrics[key] if hasattr(history, "metrics") else getattr(history, key)
    for step, value in zip(history.step, values):
        if value >= target:
            return int(step)
    return None
