"""Scaling out: data-parallel training over processes with ``torchrun`` (DDP, FSDP2), and the gathered contrastive loss.

Data parallelism runs W copies of one program, one per process ("rank"). Each rank reads its own shard of
every global batch (:func:`distributed_loader`, a ``DistributedSampler``), computes the gradient of its
shard's mean loss, and the ranks average their gradients (an ``all_reduce``) before every optimizer step,
so every copy takes the step of the global batch:

- **DDP** (:func:`wrap_ddp`, ``DistributedDataParallel``) keeps a whole copy of the parameters and of the
  optimizer state on every rank and all-reduces the gradients during backward;
- **FSDP2** (:func:`shard_fsdp`, ``torch.distributed.fsdp.fully_shard``) keeps only 1/W of each parameter
  (and so of its gradient and optimizer state) on a rank, gathers a layer's full weights just before its
  forward and backward, and reduce-scatters the gradients (ZeRO-3, Rajbhandari et al. 2020).

The loop is :func:`mmcourse.training.train` unchanged: it calls the sampler's ``set_epoch`` each epoch,
reduces the training means over ranks, and lets only rank 0 write checkpoints, TensorBoard and progress
bars; every rank reads the checkpoint when it resumes. Dev metrics are computed on rank 0 and broadcast
(:func:`rank0_evaluator`): with DDP every rank holds the same weights, so rank 0's numbers are exactly the
single-process ones, and every rank then takes the same early-stopping decision.

A contrastive loss is not a mean over samples: each pair's negatives are the other pairs of the *global*
batch. :func:`gather_features` concatenates every rank's embeddings with gradients (the autograd all-gather,
whose backward sums each rank's gradient of its slice), so :class:`GatheredContrastive` computes on every
rank the loss of the global batch, as one process would, and the averaged gradient is the single-process one
(the method of open_clip's ``ClipLoss``; CLIP, Radford et al. 2021). Multiplying that loss by W "because DDP
averages" is the classic bug: the gradients come out W times too large.

The process group's backend follows the device, in one place (:func:`backend_for`): NCCL for CUDA, gloo
for the CPU. Launch a script with ``python -m torch.distributed.run --nproc-per-node=W script.py``;
:func:`init_distributed` reads the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and is a no-op without it, so the same script also runs as one plain process.

``python -m mmcourse.distributed bench|resume ...`` (under torchrun) is the chapter's measured run: see :func:`main`.

Shape letters: W world size (processes), B global batch, b = B / W per-rank batch, E embedding width.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checks import check_int
from .config import _check_positive, _table_entry
from .utils import get_device

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")   # what torchrun sets for every process it starts
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}            # the collective library per device type


# ----------------------------------------------------------------------------- the process group

@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: this process's number, 0 .. world_size - 1 (0 is the one that writes files).
        world_size: W, the number of processes.
        local_rank: the number among the processes of this machine (selects the GPU).
        backend: ``"nccl"``, ``"gloo"``, or None without a process group (a plain single process).
        device: where this rank computes.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints and results."""
        return self.rank == 0


def backend_for(device) -> str:
    """The process-group backend of ``device``: ``"nccl"`` for CUDA, ``"gloo"`` for the CPU.

    Raises:
        ValueError: for a device type without a backend here (e.g. ``mps``).
    """
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise ValueError(f"no distributed backend for device type {kind!r}; supported: {sorted(BACKENDS)}")
    return BACKENDS[kind]


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip().isdigit():
        raise ValueError(f"${name} must be a non-negative integer when torchrun's variables are set, got {raw!r} "
                         f"(torchrun sets {', '.join(TORCHRUN_ENV)})")
    return int(raw)


def init_distributed(device=None) -> DistInfo:
    """Join the process group torchrun prepared; a no-op that returns rank 0 of 1 without torchrun.

    Args:
        device: None picks as :func:`mmcourse.utils.get_device` does, except that with CUDA each rank
            takes the GPU of its ``LOCAL_RANK`` (one GPU per process); or a device name.

    Returns:
        a :class:`DistInfo`.

    Raises:
        ValueError: if torchrun's variables are partly set or not integers, or a rank is out of range.
    """
    present = [name for name in TORCHRUN_ENV if name in os.environ]
    if not present:
        return DistInfo(0, 1, 0, None, get_device(device))
    rank, world_size, local_rank = (_env_int(name) for name in TORCHRUN_ENV)
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"$RANK ({rank}) must be below $WORLD_SIZE ({world_size}), which must be >= 1")
    device = get_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    backend = backend_for(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, backend, device)


def cleanup() -> None:
    """Leave the process group (at the end of a torchrun script); nothing without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait until every rank gets here (e.g. after rank 0 wrote a file the others read); nothing without a group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- sharding the data

def shard_indices(n: int, world_size: int, rank: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  drop_last: bool = True) -> torch.Tensor:
    """The sample indices rank ``rank`` reads in epoch ``epoch``: ``DistributedSampler``'s rule, written out.

    The permutation of epoch e is drawn from a generator seeded with ``seed + e`` (the same on every rank, so
    the shards are disjoint and cover the data); ``drop_last`` cuts it to a multiple of W, otherwise its
    first indices are repeated to fill it up; rank r takes every W-th index from position r.

    Returns:
        (n // W,) or (ceil(n / W),) int64 indices.
    """
    check_int(n, "n")
    check_int(world_size, "world_size")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))   # (n,)
    else:
        order = torch.arange(n)                                                              # (n,)
    if drop_last:
        order = order[: n - n % world_size]                                                  # (W * (n // W),)
    else:
        pad = -n % world_size
        order = torch.cat([order, order.repeat(pad // n + 1)[:pad]])                         # (W * ceil(n / W),)
    return order[rank::world_size]


def distributed_loader(dataset: Dataset, batch_size: int, seed: int, *, shuffle: bool = True,
                       drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """This rank's loader: ``batch_size`` samples per step from its shard (a ``DistributedSampler``).

    The global batch is ``batch_size * W``. The order is decided by ``seed`` and the epoch, which
    :func:`mmcourse.training.train` passes to ``set_epoch``; a resumed run replays it (the loop skips the
    batches done). ``drop_last`` drops the tail that would leave ranks with unequal shards, so every
    rank takes the same number of steps (a rank with one step more would wait forever in its all-reduce).
    Without a process group it is the loader of a world of one.
    """
    from .data.dataset import collate
    check_int(batch_size, "batch_size")
    rank, world_size = world()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=drop_last,
                      pin_memory=pin_memory)


# ----------------------------------------------------------------------------- wrapping the model

def wrap_ddp(model: nn.Module, device) -> nn.Module:
    """``DistributedDataParallel(model)`` on ``device`` (the model itself without a process group).

    Raises:
        ValueError: if the model holds batch-norm layers, whose statistics would differ per rank
            (convert them with ``nn.SyncBatchNorm.convert_sync_batchnorm`` first, or use a model without).
    """
    device = torch.device(device)
    model = model.to(device)
    if not (dist.is_available() and dist.is_initialized()):
        return model
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ValueError(f"the model has batch-norm layers ({norms[:3]}...): each rank would normalise with its own "
                         "shard's statistics; convert them with nn.SyncBatchNorm.convert_sync_batchnorm")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_fsdp(model: nn.Module, units: Callable[[nn.Module], list[nn.Module]] | None = None) -> nn.Module:
    """Shard ``model`` with FSDP2 (``fully_shard``): each unit, then the root; the model is changed in place.

    A scalar parameter cannot be split along dimension 0, so scalars (the contrastive temperatures) stay
    whole on every rank and FSDP2 does not average their gradients: that is exact when every rank computes
    the same loss of them, as :class:`GatheredContrastive` does (the global batch's loss on every rank).

    Args:
        units: which submodules get their own all-gather (default: every ``nn.Linear`` and ``nn.Embedding``,
            which hold the weights); one unit's weights are gathered just before its forward and freed after.

    Returns:
        the model, whose other parameters are now ``DTensor`` shards (dimension 0 split over the ranks).
    """
    from torch.distributed.fsdp import fully_shard
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_fsdp needs a process group: call init_distributed() under torchrun first")
    chosen = units(model) if units is not None else [m for m in model.modules()
                                                     if isinstance(m, (nn.Linear, nn.Embedding))]
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for unit in chosen:
        fully_shard(unit, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def local_numel(model: nn.Module) -> int:
    """Parameter entries this rank stores: all of them under DDP, about 1/W of them under FSDP2."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in full on the CPU, by name (an FSDP2 shard is gathered; a collective: call on every rank)."""
    out = {}
    for name, p in unwrap(model).named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = p.detach().cpu().clone()
    return out


# ----------------------------------------------------------------------------- gathered contrastive loss

def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (b, E) concatenated in rank order, (W * b, E), with gradients; ``x`` itself alone.

    The one place the course all-gathers with autograd. It uses
    ``torch.distributed._functional_collectives.all_gather_single``, whose backward reduce-scatters
    (sums) the gradient of every rank's copy back to the rank that owns the slice. Torch 2.14 deprecates
    the two older ways: ``torch.distributed.nn.functional.all_gather`` (and ``all_gather_tensor_autograd``)
    point to it, and ``torch.distributed.all_gather_into_tensor`` (no gradient) points to
    ``torch.distributed.all_gather_single``.

    Raises:
        ValueError: if ``x`` has no batch dimension.
    """
    if x.dim() < 1:
        raise ValueError(f"gather_features needs a batch dimension, got shape {tuple(x.shape)}")
    rank, world_size = world()
    if world_size == 1:
        return x
    from torch.distributed import _functional_collectives as fc
    out = fc.all_gather_single(x.contiguous(), 0, dist.group.WORLD)            # (W * b, E)
    return out.wait() if hasattr(out, "wait") else out


class GatheredContrastive(nn.Module):
    """A :class:`mmcourse.pretrain.ContrastiveModel` whose ``forward`` is its loss over the global batch.

    ``forward`` embeds this rank's shard (b, E) per modality, gathers every rank's embeddings
    (:func:`gather_features`, (B, E)) and applies each pair's InfoNCE with its learnable temperature: the
    loss of the whole global batch, the same number on every rank and the same as one process's
    ``model.loss`` on the global batch. The loss sits inside ``forward`` so that DDP and FSDP2, which act
    around ``forward``, see all of it (the temperatures included).

    Args:
        model: a ContrastiveModel (its ``losses`` give the pairs and temperatures).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        needed = sorted({m for pair in self.model.pairs for m in pair})
        z = {m: gather_features(v) for m, v in self.model.embed(inputs, needed).items()}   # {m: (B, E)}
        per_pair = {f"{a}-{b}": self.model.losses[f"{a}-{b}"](z[a], z[b]) for a, b in self.model.pairs}
        return {"loss": torch.stack(list(per_pair.values())).mean(), **per_pair}


def gathered_contrastive_step(module: nn.Module, batch) -> dict[str, torch.Tensor]:
    """The ``loss_fn`` of :func:`mmcourse.training.train` for a (wrapped) :class:`GatheredContrastive`."""
    inputs, _labels = batch
    return module(inputs)


# ----------------------------------------------------------------------------- metrics

def rank0_evaluator(evaluate: Callable[[nn.Module], Mapping[str, float]]) -> Callable[[nn.Module], dict]:
    """``evaluate`` run on rank 0 (on the unwrapped model) and its values broadcast to every rank.

    Why not reduce: with DDP every rank holds the same weights, so rank 0's numbers are exactly the
    single-process ones (a sharded evaluation would be faster for a large dev set, but sums in another
    order), and every rank must take the same early-stopping decision. ``evaluate`` runs on rank 0 alone, so it
    must not call a collective (not :class:`GatheredContrastive`'s forward: use ``module.model.loss`` or
    embeddings); and not FSDP2, whose forward needs every rank.
    """
    def evaluate_on_rank0(model: nn.Module) -> dict:
        rank, world_size = world()
        values = [dict(evaluate(unwrap(model))) if rank == 0 else None]
        if world_size > 1:
            dist.broadcast_object_list(values, src=0)
        return values[0]
    return evaluate_on_rank0


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the ranks (a new tensor; a copy of ``x`` without a process group)."""
    out = x.detach().clone()
    rank, world_size = world()
    if world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size
    return out


# ----------------------------------------------------------------------------- the chapter's measured run

@dataclass(frozen=True)
class RunConfig:
    """The run ``python -m mmcourse.distributed`` makes (the same on every rank).

    Attributes:
        scenes: training scenes generated (the same on every rank; each reads its shard).
        batch_size: b, samples per rank per step (the global batch is b * W).
        steps: optimizer steps timed, after ``warmup`` untimed ones.
        warmup: steps run before the clock starts (allocations, first collectives).
        dim: encoder width; embed_dim: E.
        lr: Adam's learning rate.
        seed: data, initial weights and shuffle.
    """

    scenes: int = 2048
    batch_size: int = 64
    steps: int = 20
    warmup: int = 3
    dim: int = 64
    embed_dim: int = 32
    lr: float = 1e-3
    seed: int = 0


def make_model(config: RunConfig) -> nn.Module:
    """The chapter's model: image MLP + text mean-pool, no batch-dependent layer (DDP equals one process)."""
    from .pretrain import make_contrastive_model
    torch.manual_seed(config.seed)
    return GatheredContrastive(make_contrastive_model(embed_dim=config.embed_dim, image="mlp", text="mean_pool",
                                                      audio=None, dim=config.dim))


def make_data(config: RunConfig):
    """``config.scenes`` training scenes of the course's world (32 x 32 images)."""
    from .data import World, generate
    return generate(World(), config.scenes, config.seed)


def _bench(args, info: DistInfo) -> dict:
    from .training import TrainConfig, train
    config = RunConfig(scenes=args.scenes, batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    data = make_data(config)
    out = {"world_size": info.world_size, "backend": info.backend, "device": str(info.device),
           "threads": torch.get_num_threads(), "config": asdict(config)}
    for kind in args.kinds.split(","):
        model = make_model(config).to(info.device)
        if kind not in ("ddp", "fsdp", "single"):
            raise ValueError(f"--kinds: unknown kind {kind!r}; valid: ddp, fsdp, single")
        if kind == "single" and info.world_size > 1:
            raise ValueError("--kinds single is the plain model of one process: run it without torchrun")
        model = wrap_ddp(model, info.device) if kind == "ddp" else shard_fsdp(model) if kind == "fsdp" else model
        loader = distributed_loader(data, config.batch_size, config.seed)
        train_config = TrainConfig(epochs=100, max_steps=config.warmup, lr=config.lr, schedule="constant",
                                   grad_clip=None, eval_every=config.warmup, progress=False, log_every=10**6)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        train(model, gathered_contrastive_step, loader, train_config, info.device, optimizer=optimizer)
        barrier()
        start = time.perf_counter()
        timed = TrainConfig(epochs=100, max_steps=config.steps, lr=config.lr, schedule="constant", grad_clip=None,
                            eval_every=config.steps, progress=False, log_every=10**6)
        history = train(model, gathered_contrastive_step, loader, timed, info.device, optimizer=optimizer)
        barrier()
        seconds = time.perf_counter() - start
        out[kind] = {"seconds": seconds, "samples_per_s": config.steps * config.batch_size * info.world_size / seconds,
                     "local_params": local_numel(model),
                     "total_params": sum(t.numel() for t in full_state(model).values()),
                     "optimizer_entries": sum(v.to_local().numel() if hasattr(v, "to_local") else v.numel()
                                              for s in optimizer.state.values() for v in s.values()
                                              if torch.is_tensor(v) and v.dim() > 0),
                     "train_loss": history.train_loss[-1]}
    return out


def _resume(args, info: DistInfo) -> dict:
    """Train ``steps`` steps with a checkpoint every ``every``; with ``kill_at`` rank 1 dies after that step."""
    from .training import TrainConfig, train
    config = RunConfig(scenes=args.scenes, batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    model = wrap_ddp(make_model(config), info.device)
    loader = distributed_loader(make_data(config), config.batch_size, config.seed)
    train_config = TrainConfig(epochs=100, max_steps=config.steps, lr=config.lr, warmup_steps=2,
                               checkpoint_every=args.every, eval_every=args.every, progress=False,
                               log_every=10**6)

    def crash(state) -> bool:
        if args.kill_at is not None and info.rank == 1 and state.step == args.kill_at:
            os._exit(17)                        # a crashed process: no cleanup, no checkpoint of its own
        return False

    checkpoint = Path(args.checkpoint)
    history = train(model, gathered_contrastive_step, loader, train_config, info.device, checkpoint=checkpoint,
                    resume=args.resume, stop=crash)
    weights = full_state(model)
    return {"world_size": info.world_size, "steps": history.step[-1] if history.step else None,
            "train_loss": history.train_loss, "weights_sum": float(sum(w.double().sum() for w in weights.values())),
            "weights_file": str(args.out.with_suffix(".pt"))}, weights


@dataclass(frozen=True)
class ScaleConfig:
    """What chapter 15 runs in a profile.

    Attributes:
        scenes: training scenes of the measured runs.
        batch_size: b, per rank (the one-process run takes W * b, the same global batch).
        steps: timed steps per measurement (after ``RunConfig.warmup`` untimed ones).
        resume_steps: steps of the crash-and-resume run (a checkpoint every ``resume_every``).
        resume_every: steps between its checkpoints.
        relaunch: whether the chapter crashes a rank and relaunches (three more launches, ~25 s).
    """

    scenes: int
    batch_size: int
    steps: int
    resume_steps: int
    resume_every: int
    relaunch: bool

    def __post_init__(self):
        _check_positive(self, ("scenes", "batch_size", "steps", "resume_steps", "resume_every"))


SCALE = {
    "smoke": ScaleConfig(scenes=1024, batch_size=32, steps=8, resume_steps=8, resume_every=2, relaunch=False),
    "default": ScaleConfig(scenes=4096, batch_size=64, steps=120, resume_steps=12, resume_every=4, relaunch=True),
    "full": ScaleConfig(scenes=16384, batch_size=256, steps=100, resume_steps=20, resume_every=5, relaunch=True),
}


def scale_config(profile=None) -> ScaleConfig:
    """Chapter 15's settings of ``profile`` (a name or a Profile; default ``$MMCOURSE_PROFILE``)."""
    return _table_entry(SCALE, profile, "scaling-out")[1]


def torchrun(args: list[str], nproc: int, threads: int = 1, timeout: float = 300.0,
             check: bool = True) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node=nproc -m mmcourse.distributed *args``.

    ``--standalone`` picks a free port on this machine (no clash with another job). Each process gets
    ``threads`` CPU threads (``OMP_NUM_THREADS``); this package is put on ``PYTHONPATH`` so the workers
    import the same sources.

    Raises:
        RuntimeError: if ``check`` and the launch failed, with the end of its output.
    """
    check_int(nproc, "nproc")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mmcourse.distributed", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def main(argv=None) -> None:
    """``python -m torch.distributed.run --nproc-per-node=W -m mmcourse.distributed bench|resume --out FILE ...``.

    ``bench`` times ``steps`` training steps of the chapter's model with each of ``--kinds`` (``ddp``,
    ``fsdp``, ``single``) and writes samples per second, per-rank parameter and optimizer entries;
    ``resume`` trains with checkpoints (``--kill-at S`` makes rank 1 die after step S, ``--resume``
    continues) and writes the final weights. Rank 0 writes ``--out`` (JSON) atomically.
    """
    from .utils import atomic_write, configure_threads
    parser = argparse.ArgumentParser(prog="python -m mmcourse.distributed")
    parser.add_argument("mode", choices=("bench", "resume"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=RunConfig.scenes)
    parser.add_argument("--batch-size", type=int, default=RunConfig.batch_size)
    parser.add_argument("--steps", type=int, default=RunConfig.steps)
    parser.add_argument("--seed", type=int, default=RunConfig.seed)
    parser.add_argument("--kinds", default="ddp")
    parser.add_argument("--device", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    info = init_distributed(args.device)
    if info.device.type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        configure_threads(info.device, int(os.environ["OMP_NUM_THREADS"]))
    try:
        if args.mode == "bench":
            result, weights = _bench(args, info), None
        else:
            if args.checkpoint is None:
                parser.error("resume needs --checkpoint")
            result, weights = _resume(args, info)
        if info.is_main:
            if weights is not None:
                buffer = io.BytesIO()
                torch.save(weights, buffer)
                atomic_write(args.out.with_suffix(".pt"), lambda f: f.write(buffer.getbuffer()))
            atomic_write(args.out, lambda f: f.write(json.dumps(result, indent=1).encode()))
        barrier()
    finally:
        cleanup()


if __name__ == "__main__":
    main()
