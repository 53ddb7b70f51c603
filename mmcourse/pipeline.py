"""The three stages as one configured run.

:func:`run_pipeline` trains, in order and with one training loop
(:func:`mmcourse.training.train`):

1. ``"pretrain"``: the contrastive stage-1 model of chapter 06 on unlabeled pairs
   (:func:`mmcourse.pretrain.make_stage1_model`, :func:`~mmcourse.pretrain.contrastive_step`);
2. ``"joint"``: the joint model of chapter 07 on the labelled main task ``shape_and_sound``
   (:meth:`mmcourse.joint.JointModel.from_stage1`, :class:`~mmcourse.joint.MultitaskLoss`,
   modality dropout);
3. ``"adapt"``: the stage-2 encoders adapted to the downstream task ``size_and_material``
   from a few labels per class (:mod:`mmcourse.adapt`, chapter 08).

Its settings, a :class:`mmcourse.config.PipelineConfig` (:func:`mmcourse.config.pipeline_config`),
nest one settings object per stage, each the chapter's with a shorter budget.

Every stage writes its checkpoint to ``build/pipeline/<profile>_seed<seed>/stage<k>.pt``
and its TensorBoard scalars to ``build/tensorboard/pipeline_<profile>_seed<seed>/stage<k>_<name>``.
A run that stops (``stop_after``, a crash, a lost machine) continues where it stopped
with ``resume=True``: finished stages load, the unfinished one continues exactly (same
final weights and metrics as a run that never stopped).

The device policy comes from :mod:`mmcourse.utils`, the same code on every device: on
CUDA, bf16 autocast, ``torch.compile`` of the encoders where it works, channels-last
images, pinned host memory and non-blocking copies; on a CPU, float32 and none of those.
Every stage measures its throughput (samples/s), peak memory and wall time
(:class:`StageStats`, :func:`stats_table`).

Every trained model gets ``model.input_spec`` (:class:`mmcourse.inference.InputSpec`), so that
:func:`mmcourse.inference.predict` can classify raw inputs with it.

Shape letters: N samples, B batch, C classes.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapt import few_shot, make_downstream_model, prepare
from .config import DOWNSTREAM_TASK, MAIN_TASK, PipelineConfig
from .data.dataset import MultimodalDataset, Split, make_loader, make_splits, take
from .data.world import World, WorldConfig
from .inference import InputSpec
from .joint import AnnotatedDataset, JointModel, MultitaskLoss
from .metrics import accuracy
from .modality import ModalityDropout
from .pretrain import contrastive_step, make_contrastive_model, stage1_evaluator
from .training import (History, TrainConfig, accuracy_on, classification_loss, predict as predict_loader,
                       read_checkpoint, train)
from .utils import (atomic_write, build_dir, channels_last, get_device, maybe_compile, peak_memory,
                    precision_name, project_root, reset_peak_memory, to_device)

STAGES = ("pretrain", "joint", "adapt")
STATS_FILE = "stats.json"


class PipelineInterrupted(RuntimeError):
    """The run stopped on purpose (``stop_after``) with the stage's checkpoint written.

    Attributes:
        stage: the stage that was stopped; step: its optimizer steps done; checkpoint: its file.
    """

    def __init__(self, message: str, stage: str, step: int, checkpoint: Path):
        super().__init__(message)
        self.stage, self.step, self.checkpoint = stage, step, checkpoint


def _shown(path: Path) -> str:
    """``path`` relative to the project root when it lies inside it (messages stay free of machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- run folders

def run_dir(config: PipelineConfig) -> Path:
    """Where a run's checkpoints and stats go: ``build/pipeline/<profile>_seed<seed>/``."""
    return build_dir("pipeline", config.name)


def stage_checkpoint(root: Path, stage: str) -> Path:
    """The checkpoint of ``stage`` in a run folder: ``stage1.pt``, ``stage2.pt``, ``stage3.pt``."""
    return Path(root) / f"stage{_stage_index(stage)}.pt"


def _stage_index(stage: str) -> int:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return STAGES.index(stage) + 1


# ----------------------------------------------------------------------------- data

def pipeline_data(config: PipelineConfig) -> dict[str, dict[str, MultimodalDataset]]:
    """The data of a run: ``{"main": splits of shape_and_sound, "downstream": splits of size_and_material}``.

    Stage 1 reads the first ``pretrain.train_size`` main training scenes (without their labels),
    stage 2 the first ``joint.train_size`` (with them). The downstream task has fresh scenes
    (another seed); its ``"train"`` is the pool of ``adapt.train_size`` scenes the few labels are drawn from.
    """
    main = World(WorldConfig(image_size=config.image_size, label_rule=MAIN_TASK))
    down = World(WorldConfig(image_size=config.image_size, label_rule=DOWNSTREAM_TASK))
    adapt = config.adapt
    n = max(config.pretrain.train_size, config.joint.train_size)
    return {"main": make_splits(main, Split(n, config.dev_size, config.test_size), config.seed),
            "downstream": make_splits(down, Split(adapt.train_size, adapt.dev_size, adapt.test_size),
                                      config.seed + 1)}


# ----------------------------------------------------------------------------- statistics

@dataclass
class StageStats:
    """What one stage cost, over every session that trained it (an interrupted stage has two).

    Attributes:
        stage: its name; status: ``"trained"``, ``"resumed"`` (continued from a checkpoint in this
            call) or ``"loaded"`` (finished earlier, nothing trained in this call).
        sessions: calls of :func:`run_pipeline` that trained part of it.
        steps: optimizer steps in all; samples: training samples processed in all.
        train_seconds: time inside the training loop, evaluations excluded.
        wall_seconds: the stages' whole time (model set-up, compiling, evaluations, checkpoints).
        peak_memory_mib: the largest peak over its sessions; memory_kind says what it measures.
        device, precision, compile: how it ran (of the last session).
    """

    stage: str
    status: str = "loaded"
    sessions: int = 0
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_memory_mib: float = float("nan")
    memory_kind: str = ""
    device: str = ""
    precision: str = ""
    compile: str = ""

    @property
    def samples_per_s(self) -> float:
        """Training throughput: samples / train_seconds (NaN if nothing was timed)."""
        return self.samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def _read_stats(root: Path) -> dict[str, list[dict]]:
    path = Path(root) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_stats(root: Path, stats: dict[str, list[dict]]) -> None:
    atomic_write(Path(root) / STATS_FILE, lambda f: f.write(json.dumps(stats, indent=1).encode()))


def _summarise(stage: str, sessions: list[dict], status: str) -> StageStats:
    out = StageStats(stage, status=status, sessions=len(sessions))
    for s in sessions:
        out.steps = max(out.steps, s["end_step"])
        out.samples += s["samples"]
        out.train_seconds += s["train_seconds"]
        out.wall_seconds += s["wall_seconds"]
        out.peak_memory_mib = s["peak_memory_mib"] if math.isnan(out.peak_memory_mib) else max(
            out.peak_memory_mib, s["peak_memory_mib"])
        out.memory_kind, out.device, out.precision, out.compile = (s["memory_kind"], s["device"], s["precision"],
                                                                   s["compile"])
    return out


def stats_table(stats: Mapping[str, StageStats]) -> str:
    """A Markdown table of the stages' cost: steps, samples, samples/s, peak memory, times."""
    lines = ["| stage | status | steps | samples | samples/s | peak memory (MiB) | train s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in stats.values():
        lines.append(f"| {_stage_index(s.stage)} {s.stage} | {s.status} ({s.sessions} session"
                     f"{'s' if s.sessions != 1 else ''}) | {s.steps} | {s.samples} | {s.samples_per_s:.0f} | "
                     f"{s.peak_memory_mib:.0f} | {s.train_seconds:.1f} | {s.wall_seconds:.1f} |")
    kinds = sorted({s.memory_kind for s in stats.values() if s.memory_kind})
    if kinds:
        lines.append(f"\nPeak memory: {'; '.join(kinds)}.")
    return "\n".join(lines)


def _samples_between(start: int, end: int, steps_per_epoch: int, n: int, batch: int) -> int:
    """Samples processed from optimizer step ``start`` to ``end`` (the last batch of an epoch may be short)."""
    def upto(step):
        epochs, rest = divmod(step, steps_per_epoch)
        return epochs * n + rest * batch
    return upto(end) - upto(start)


# ----------------------------------------------------------------------------- one stage

class _Loss:
    """The stage's loss with the device policy: images channels-last."""

    def __init__(self, loss_fn, device):
        self.loss_fn, self.device = loss_fn, device

    def __call__(self, model, batch):
        inputs, *rest = batch                   # (inputs, labels) or (inputs, labels, annotations)
        if "image" in inputs:
            inputs = {**inputs, "image": channels_last(inputs["image"], self.device)}
        return self.loss_fn(model, (inputs, *rest))


class _TimedEvaluate:
    def __init__(self, evaluate):
        self.evaluate, self.seconds = evaluate, 0.0

    def __call__(self, model):
        start = time.perf_counter()
        out = self.evaluate(model)              # returns floats: the device is synchronised
        self.seconds += time.perf_counter() - start
        return out


def _start_step(path: Path) -> tuple[int, bool]:
    """(steps done, finished) of a stage's checkpoint; (0, False) without one."""
    if not path.is_file():
        return 0, False
    run = read_checkpoint(path)["run"]
    return int(run["step"]), bool(run["finished"])


@dataclass
class _Run:
    """What every stage of one :func:`run_pipeline` call shares."""

    config: PipelineConfig
    data: Mapping
    device: torch.device
    root: Path
    stop: tuple[str, int] | None
    progress: bool | None
    stats: dict[str, list[dict]]

    def train_config(self, stage: str, **fields) -> TrainConfig:
        """The stage's TrainConfig: ``fields`` plus the run's checkpoints, progress bars and TensorBoard folder."""
        return TrainConfig(**fields, checkpoint_every=self.config.checkpoint_every, progress=self.progress,
                           tensorboard=f"pipeline_{self.root.name}/stage{_stage_index(stage)}_{stage}")


def _train_stage(run: _Run, stage: str, model: nn.Module, loss_fn, dataset, batch: int, config: TrainConfig,
                 evaluate) -> History:
    """Train one stage with the device policy, checkpoint in the run folder, record its session in the stats."""
    device, root, seed, compile_mode = run.device, run.root, run.config.seed, run.config.compile
    stop_step = run.stop[1] if run.stop is not None and run.stop[0] == stage else None
    wall = time.perf_counter()
    path = stage_checkpoint(root, stage)
    start, finished = _start_step(path)
    loader = make_loader(dataset, batch, shuffle=True, seed=seed, pin_memory=device.type == "cuda")
    total = min(config.epochs * len(loader), config.max_steps or math.inf)
    if stop_step is not None and not (start < stop_step < total):
        raise ValueError(f"stop_after step for {stage!r} must be in ({start}, {total}): the stage has {total} steps "
                         f"and {start} are done, got {stop_step}")
    if finished:
        return train(model, loss_fn, loader, config, device, evaluate=evaluate, checkpoint=path, resume=True)
    reset_peak_memory(device)
    if "image" in getattr(model, "encoders", {}):
        channels_last(model.encoders["image"], device)
    example = None
    if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda"):   # a batch to try compiling on
        example = to_device(next(iter(make_loader(dataset, min(batch, len(dataset)))))[0], device)
        example["image"] = channels_last(example["image"], device)
    messages = [maybe_compile(enc, device, compile_mode, None if example is None else example[m])[1]
                for m, enc in model.encoders.items()]
    notes = sorted({msg.split(": ", 1)[1] for msg in messages})
    compile_note = notes[0] if len(notes) == 1 else "; ".join(messages)
    timed = _TimedEvaluate(evaluate)
    stop = None if stop_step is None else (lambda state: state.step >= stop_step)   # pauses with the checkpoint
    clock = time.perf_counter()
    history = train(model, _Loss(loss_fn, device), loader, config, device, evaluate=timed, checkpoint=path,
                    resume=True, stop=stop)
    seconds = time.perf_counter() - clock - timed.seconds
    end = stop_step if history.stopped else history.step[-1] if history.step else start
    peak, kind = peak_memory(device)
    session = {"start_step": start, "end_step": end, "samples": _samples_between(start, end, len(loader),
                                                                                 len(dataset), batch),
               "train_seconds": seconds, "wall_seconds": time.perf_counter() - wall, "peak_memory_mib": peak,
               "memory_kind": kind, "device": str(device), "precision": precision_name(device),
               "compile": compile_note}
    run.stats.setdefault(stage, []).append(session)
    _write_stats(root, run.stats)
    if history.stopped:
        raise PipelineInterrupted(
            f"stage {_stage_index(stage)} ({stage}) stopped after step {stop_step} of {total}; its checkpoint is "
            f"{path.name} in {_shown(root)}. Call run_pipeline(config, device, resume=True) to continue.",
            stage, stop_step, path)
    return history


# ----------------------------------------------------------------------------- the run

@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns.

    Attributes:
        config: the run's configuration; device: where it ran; root: its folder.
        models: {stage: model} (eval mode), stages not run are absent.
        histories: {stage: History}; stats: {stage: StageStats}.
        metrics: final test figures: ``"joint test accuracy"`` (main task, every modality),
            ``"adapt test accuracy"`` (downstream task).
        test_pred, test_true: the adapted model's predictions and the labels on the downstream test split (N,).
        class_names: {"main": ..., "downstream": ...}.
    """

    config: PipelineConfig
    device: torch.device
    root: Path
    models: dict[str, nn.Module] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)
    stats: dict[str, StageStats] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    test_pred: torch.Tensor | None = None
    test_true: torch.Tensor | None = None
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _input_spec(world: World) -> InputSpec:
    return InputSpec(world.class_names, world.config.image_size, world.config.audio_samples, world.config.sample_rate)


def _eval_every(n: int, batch: int, epochs: int, evals: int) -> int:
    """Steps between ``evals`` evaluations spread over ``epochs`` passes of ``n`` samples in batches of ``batch``."""
    return max(1, -(-(epochs * -(-n // batch)) // evals))


def _stage1(run: _Run, previous: None):
    cfg, data = run.config.pretrain, run.data
    torch.manual_seed(run.config.seed)
    model = make_contrastive_model(embed_dim=cfg.embed_dim).to(run.device)
    tc = run.train_config("pretrain", epochs=cfg.epochs, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                          eval_every=_eval_every(cfg.train_size, cfg.batch_size, cfg.epochs, run.config.evals),
                          monitor="dev_zero_shot")
    history = _train_stage(run, "pretrain", model, contrastive_step, take(data["main"]["train"], cfg.train_size),
                           cfg.batch_size, tc, stage1_evaluator(data["main"]["dev"], run.device, cfg.eval_size))
    return model.eval(), history


def _stage2(run: _Run, stage1: nn.Module):
    cfg, data = run.config.joint, run.data
    torch.manual_seed(run.config.seed + 1)
    world = World(WorldConfig(image_size=run.config.image_size, label_rule=MAIN_TASK))
    model = JointModel.from_stage1(stage1, len(world.class_names), hidden=cfg.hidden, embed_dim=stage1.embed_dim,
                                   modality_dropout=cfg.modality_dropout).to(run.device)
    train_set = AnnotatedDataset(take(data["main"]["train"], cfg.train_size), world)
    dev = make_loader(take(data["main"]["dev"], min(cfg.eval_size, run.config.dev_size)), 500)
    tc = run.train_config("joint", epochs=cfg.epochs, lr=cfg.lr,
                          eval_every=_eval_every(cfg.train_size, cfg.batch_size, cfg.epochs, run.config.evals))
    # No generator for the mining draws: they come from torch's global generator, which checkpoints hold.
    loss = MultitaskLoss(cfg.aux_weight, cfg.aux_weight, "sample")
    history = _train_stage(run, "joint", model, loss, train_set, cfg.batch_size, tc,
                           lambda m: {"dev_accuracy": accuracy_on(m, dev, run.device)})
    model.input_spec = _input_spec(world)
    return model.eval(), history


def _stage3(run: _Run, joint: nn.Module):
    cfg, data = run.config.adapt, run.data
    torch.manual_seed(run.config.seed + 2)
    world = World(WorldConfig(image_size=run.config.image_size, label_rule=DOWNSTREAM_TASK))
    model = make_downstream_model(joint, num_classes=len(world.class_names), fusion="concat")   # a linear head
    model.modality_dropout = ModalityDropout(cfg.modality_dropout)
    report = prepare(model, cfg.method)
    model = model.to(run.device)
    labelled = few_shot(data["downstream"]["train"], per_class=cfg.per_class, seed=run.config.seed)
    scored = cfg.dev_size if cfg.eval_size is None else min(cfg.eval_size, cfg.dev_size)
    dev = make_loader(take(data["downstream"]["dev"], scored), 500)
    steps_per_epoch = -(-len(labelled) // cfg.batch_size)
    tc = run.train_config("adapt", epochs=-(-cfg.steps // steps_per_epoch), max_steps=cfg.steps,
                          lr=cfg.lr, eval_every=max(1, cfg.steps // run.config.evals))
    history = _train_stage(run, "adapt", model, classification_loss, labelled, cfg.batch_size, tc,
                           lambda m: {"dev_accuracy": accuracy_on(m, dev, run.device)})
    model.input_spec = _input_spec(world)
    model.adapt_report = report
    return model.eval(), history


def run_pipeline(config: PipelineConfig, device=None, *, resume: bool = True,
                 stop_after: tuple[str, int] | None = None, until: str | None = None, progress: bool | None = None,
                 root=None, data: Mapping | None = None) -> PipelineResult:
    """Run pretrain -> joint -> adapt as ``config`` says; return the models, histories, costs and test figures.

    Args:
        config: a :class:`~mmcourse.config.PipelineConfig` (:func:`mmcourse.config.pipeline_config`).
        device: where to train (None: :func:`mmcourse.utils.get_device`).
        resume: continue from the run folder's checkpoints: finished stages load, an unfinished
            one continues exactly. False deletes the run's checkpoints, stats and TensorBoard logs first.
        stop_after: ``(stage, step)``: stop that stage after ``step`` optimizer steps, with its
            checkpoint written, by raising :class:`PipelineInterrupted` (what a crash or a lost
            machine does, on purpose, for teaching and tests).
        until: the last stage to run (None: all three).
        progress: progress bars (None: on unless ``$MMCOURSE_PROGRESS=0``).
        root: the run folder (default :func:`run_dir`).
        data: the output of :func:`pipeline_data` for this config, if already generated.

    Raises:
        PipelineInterrupted: when ``stop_after`` stops a stage.
        ValueError: for an unknown stage, a stop step outside the stage, or checkpoints of another config.
    """
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a PipelineConfig (see pipeline_config), got {type(config).__name__}")
    device = get_device() if device is None else torch.device(device)
    last = _stage_index(until) - 1 if until is not None else len(STAGES) - 1
    stop = None
    if stop_after is not None:
        if not (isinstance(stop_after, tuple) and len(stop_after) == 2 and isinstance(stop_after[1], int)):
            raise ValueError(f"stop_after must be a (stage, step) tuple, got {stop_after!r}")
        if _stage_index(stop_after[0]) > last + 1:
            raise ValueError(f"stop_after names stage {stop_after[0]!r}, which comes after until={until!r}")
        stop = stop_after
    root = Path(root) if root is not None else run_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stage in STAGES:
            stage_checkpoint(root, stage).unlink(missing_ok=True)
        (root / STATS_FILE).unlink(missing_ok=True)
        (root / "config.json").unlink(missing_ok=True)
        shutil.rmtree(build_dir("tensorboard") / f"pipeline_{root.name}", ignore_errors=True)
    saved = root / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != asdict(config):
        raise ValueError(f"{root} holds a run of another configuration; use resume=False to start afresh, "
                         f"or another root")
    atomic_write(saved, lambda f: f.write(json.dumps(asdict(config), indent=1).encode()))
    data = data if data is not None else pipeline_data(config)
    stats = _read_stats(root)
    before = {s: len(v) for s, v in stats.items()}
    result = PipelineResult(config, device, root)
    run = _Run(config, data, device, root, stop, progress, stats)
    previous = None
    for stage, step in zip(STAGES[: last + 1], (_stage1, _stage2, _stage3)):
        previous, history = step(run, previous)
        result.models[stage], result.histories[stage] = previous, history
    for stage in result.models:
        new = len(stats.get(stage, [])) - before.get(stage, 0)
        status = "loaded" if new == 0 else "trained" if len(stats[stage]) == 1 else "resumed"
        result.stats[stage] = _summarise(stage, stats.get(stage, []), status)
    main_test = make_loader(data["main"]["test"], 500)
    if "joint" in result.models:
        result.metrics["joint test accuracy"] = accuracy_on(result.models["joint"], main_test, device)
        result.class_names["main"] = result.models["joint"].input_spec.class_names
    if "adapt" in result.models:
        pred, true = predict_loader(result.models["adapt"], make_loader(data["downstream"]["test"], 500), device)
        result.test_pred, result.test_true = pred, true
        result.metrics["adapt test accuracy"] = accuracy(pred, true)
        result.class_names["downstream"] = result.models["adapt"].input_spec.class_names
    return result
