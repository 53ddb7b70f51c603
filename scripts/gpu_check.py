"""The course's GPU check: the three-stage pipeline on CUDA, its cost, and how well it uses the GPU.

    make gpu-check                                  # on a machine with a GPU
    PYTHONPATH=. python3 scripts/gpu_check.py --device cpu --profile smoke   # the same code path on a CPU

A plain script (no Jupyter, no papermill) that needs only torch, numpy, matplotlib's Pillow and the
checkout on ``PYTHONPATH``, so it runs on a lent GPU machine where nothing can be installed. It:

1. runs :func:`mmcourse.pipeline.run_pipeline` afresh in the ``full`` profile (64x64 images), with the
   stage sizes of ``GPU_CHECK_SIZES`` so that it finishes in ``BUDGET_S`` seconds;
2. takes the device policy of :mod:`mmcourse.utils` as it is: bf16 autocast and ``torch.compile``
   (falling back to eager with the reason) on CUDA, channels-last images, pinned memory;
3. reports samples/s, peak GPU memory and wall time per stage, the test accuracies against their
   exact Bayes limits, and the model FLOP utilisation (MFU) of the largest model: training FLOPs per
   sample (3 x a forward pass, the usual estimate for forward + backward) x samples/s over the GPU's
   dense bf16 peak;
4. launches chapter 15's measured run under ``torchrun`` with one process (``--nproc-per-node=1``: one GPU
   holds one NCCL rank), DDP and FSDP2, so the NCCL code path runs and its throughput is reported;
5. writes ``build/GPU_REPORT.md`` (or ``$MMCOURSE_BUILD/GPU_REPORT.md``) and prints it.

Exits with status 1 if a stage fails, and 2 if the run took longer than ``BUDGET_S``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mmcourse import distributed
from mmcourse.data import World, WorldConfig, bayes_table
from mmcourse.models import count_flops, count_parameters
from mmcourse.config import DOWNSTREAM_TASK, MAIN_TASK, pipeline_config
from mmcourse.pipeline import pipeline_data, run_pipeline, stats_table
from mmcourse.utils import build_dir, environment_report, get_device, precision_name

BUDGET_S = 240          # a lent GPU has 15 minutes for every try, machine starts included: leave room for a rerun
# Dense bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets (H100/H200 SXM: 989.4 TFLOP/s without
# sparsity; H100 PCIe: 756; A100: 312; L4: 121). Checked in order: the first name found in the GPU's name.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H200", 989.4e12), ("H100", 989.4e12), ("A100", 312e12), ("L4", 121e12))
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward ~ 3 forward passes (the backward computes two products per layer)
# pipeline_config overrides per profile. `full` keeps its data (60,000 scenes of 64x64 images) and batch
# sizes but runs stage 1 for 4 epochs instead of 10 and stage 2 for 2 instead of 4 (about 1,400 steps
# instead of 3,000): the check measures throughput and memory, which need no full-length run, and the
# whole call must leave room for a rerun within a lent GPU's 15 minutes.
GPU_CHECK_SIZES = {"full": {"pretrain": {"epochs": 4}, "joint": {"epochs": 2}}, "default": {}, "smoke": {}}


def bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``name`` in FLOP/s, or None if this script does not know it."""
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def training_flops_per_sample(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs per sample of a model's encoders on ``batch``: 3 x their forward FLOPs / B."""
    encoders = getattr(model, "encoders", {})
    flops = sum(count_flops(enc, batch[m]) for m, enc in encoders.items() if m in batch)
    return TRAIN_FLOPS_PER_FORWARD * flops / len(next(iter(batch.values())))


def utilisation_rows(result, data, device) -> list[str]:
    """Markdown rows: each stage's model, parameters, training FLOPs per sample, achieved FLOP/s and MFU."""
    from mmcourse.data import make_loader, to_device
    peak = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    inputs = to_device(next(iter(make_loader(data["main"]["dev"], 64)))[0], device)
    rows = []
    for stage, model in result.models.items():
        per_sample = training_flops_per_sample(model, inputs)
        achieved = per_sample * result.stats[stage].samples_per_s
        mfu = f"{100 * achieved / peak:.3f} %" if peak else "peak unknown"
        rows.append(f"| {stage} | {type(model).__name__} | {count_parameters(model):,} | {per_sample / 1e6:.2f} M | "
                    f"{achieved / 1e12:.3f} | {mfu} |")
    return rows


# Chapter 15's measured run per profile (scenes, per-rank batch, timed steps): about 10 s on a GPU in `full`.
SCALING_SIZES = {"full": (8192, 256, 100), "default": (4096, 64, 50), "smoke": (256, 32, 4)}


def scaling_rows(profile: str) -> list[str]:
    """Chapter 15's bench under ``torchrun --nproc-per-node=1`` (NCCL on CUDA, gloo on a CPU), as table rows."""
    scenes, batch, steps = SCALING_SIZES[profile]
    out = build_dir("gpu_check") / "scaling_1.json"
    run = ["bench", "--scenes", scenes, "--batch-size", batch, "--steps", steps, "--kinds", "ddp,fsdp", "--out", out]
    done = distributed.torchrun(run, nproc=1,
                                threads=torch.get_num_threads(), check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return [f"| failed (exit status {done.returncode}) | {tail[0][:200]} | | |"]
    bench = json.loads(out.read_text())
    return [f"| {kind} | {bench['backend']} on {bench['device']} | {bench[kind]['samples_per_s']:,.0f} | "
            f"{bench[kind]['local_params']:,} of {bench[kind]['total_params']:,} |" for kind in ("ddp", "fsdp")]


def report(result, data, device, seconds: float, scaling: list[str]) -> str:
    """The GPU report in Markdown."""
    config = result.config
    main = bayes_table(World(WorldConfig(image_size=config.image_size, label_rule=MAIN_TASK)))
    down = bayes_table(World(WorldConfig(image_size=config.image_size, label_rule=DOWNSTREAM_TASK)))
    env = environment_report()
    lines = [f"# GPU report: the pipeline in the `{config.profile}` profile",
             "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in env.items()],
             f"| precision | {precision_name(device)} |",
             f"| compile | {next(iter(result.stats.values())).compile} |",
             f"| wall time | {seconds:.1f} s (budget {BUDGET_S} s) |", "",
             "## Stages", "", stats_table(result.stats), "",
             "## Test accuracy against the exact Bayes limit", "",
             "| stage | task | test accuracy | Bayes limit |", "|---|---|---:|---:|",
             f"| joint | {MAIN_TASK} | {result.metrics.get('joint test accuracy', float('nan')):.4f} | "
             f"{max(main.values()):.4f} |",
             f"| adapt | {DOWNSTREAM_TASK} | {result.metrics.get('adapt test accuracy', float('nan')):.4f} | "
             f"{max(down.values()):.4f} |", "",
             "## Model FLOP utilisation", "",
             f"Training FLOPs per sample = {TRAIN_FLOPS_PER_FORWARD} x the encoders' forward FLOPs "
             "(torch's FLOP counter; the heads are negligible). MFU = achieved FLOP/s / the GPU's dense bf16 peak.",
             "", "| stage | model | parameters | training FLOPs per sample | achieved TFLOP/s | MFU |",
             "|---|---|---:|---:|---:|---:|", *utilisation_rows(result, data, device), "",
             "## Scaling out: one process under torchrun", "",
             "Chapter 15's contrastive run, one rank (a second NCCL rank needs a second GPU).", "",
             "| wrapper | backend | samples/s | parameters on the rank |", "|---|---|---:|---:|", *scaling]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(GPU_CHECK_SIZES))
    parser.add_argument("--device", default=None, help="default: cuda (the check is for a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="default: build/GPU_REPORT.md")
    args = parser.parse_args(argv)
    device = get_device(args.device or "cuda")
    start = time.perf_counter()
    config = pipeline_config(args.profile, args.seed, **GPU_CHECK_SIZES[args.profile])
    data = pipeline_data(config)
    result = run_pipeline(config, device, resume=False, progress=False, data=data, root=build_dir("gpu_check"))
    scaling = scaling_rows(args.profile)
    seconds = time.perf_counter() - start
    text = report(result, data, device, seconds, scaling)
    output = Path(args.output) if args.output else build_dir() / "GPU_REPORT.md"
    output.write_text(text)
    print(text)
    print(f"written to {output}")
    return 2 if seconds > BUDGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
