"""Measure what mmcourse.training.train costs over a bare PyTorch loop: steps per second.

    python benchmarks/bench_training.py [--steps 2000] [--batch 64] [--width 64] [--repeats 3]

Both loops run the same model, data, optimizer and steps; ``train`` adds the
schedule, clipping, the on-device loss and NaN bookkeeping and its host sync
every ``log_every`` steps. A tiny model makes the loop's own overhead visible
(a real model hides it). Prints the best of ``repeats`` runs of each.
"""
import argparse
import time

import torch
from torch import nn

from mmcourse.data import make_loader
from mmcourse.fusion import FeatureDataset
from mmcourse.training import TrainConfig, train


def _setup(args):
    torch.manual_seed(0)
    x = torch.randn(args.steps * args.batch, args.width)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(args.width, args.width), nn.ReLU(), nn.Linear(args.width, 2))
    return make_loader(FeatureDataset({"x": x}, y), args.batch, shuffle=True, seed=0), model


def _loss(model, batch):
    inputs, y = batch
    return nn.functional.cross_entropy(model(inputs["x"]), y)


def bare(args) -> float:
    loader, model = _setup(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in loader:
        loss = _loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def loop(args, log_every: int, clip: bool = True) -> float:
    loader, model = _setup(args)
    config = TrainConfig(epochs=1, warmup_steps=100, grad_clip=1.0 if clip else None, progress=False,
                         log_every=log_every)
    start = time.perf_counter()
    train(model, _loss, loader, config, torch.device("cpu"))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"bare PyTorch loop": lambda: bare(args),
            "train(), no gradient clipping": lambda: loop(args, 50, clip=False),
            "train(), log_every=50": lambda: loop(args, 50),
            "train(), log_every=1 (a sync every step)": lambda: loop(args, 1)}
    base = None
    for name, run in runs.items():
        best = min(run() for _ in range(args.repeats))
        base = base or best
        print(f"{name:42s} {args.steps / best:8,.0f} steps/s  ({best / base:.2f}x the bare loop's time, "
              f"+{(best - base) / args.steps * 1e6:.0f} us per step)")
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, MLP width {args.width}")


if __name__ == "__main__":
    main()
