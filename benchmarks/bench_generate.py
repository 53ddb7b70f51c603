"""Measure how fast the world is generated: scenes per second, all modalities.

    python benchmarks/bench_generate.py [--n 20000] [--size 32] [--repeats 3]

Prints the best of ``repeats`` runs (the README quotes this number).
"""
import argparse
import time

import torch

from mmcourse.data import World, WorldConfig, generate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    world = World(WorldConfig(image_size=args.size))
    generate(world, 256, seed=0)  # warm-up
    best = float("inf")
    for r in range(args.repeats):
        start = time.perf_counter()
        generate(world, args.n, seed=r)
        best = min(best, time.perf_counter() - start)
    print(f"{args.n} scenes ({args.size}x{args.size} images, captions, "
          f"{world.config.audio_samples}-sample audio) in {best:.2f} s: "
          f"{args.n / best:,.0f} scenes/s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
