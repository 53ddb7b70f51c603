"""Measure how fast manifest data reach a model: images per second, in memory vs read lazily from PNG files.

    python benchmarks/bench_data_loading.py [--n 512] [--size 32] [--batch 64] [--repeats 3] [--threads 1]

Writes ``n`` generated scenes as PNG files plus a manifest under ``build/bench_data_loading``
(the way a user's data arrive), then times one pass of a ``DataLoader`` over:

- the in-memory dataset (``load_manifest``: decoded once, batches by fancy indexing),
- the lazy dataset (``lazy=True``: every image read from disk per batch), without and with a
  per-sample ``torchvision.transforms.v2`` augmentation plus ``normalize``,

each with ``num_workers`` 0 and 2. Also prints the one-off cost of decoding everything into
memory. Prints the best of ``repeats`` passes as a small table. ``--threads`` sets torch's
intra-op threads of the main process (0: torch's default); on a machine shared with other
jobs, one thread avoids measuring thread contention instead of loading.
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader

from mmcourse.data import World, WorldConfig, collate, generate, load_manifest, write_manifest
from mmcourse.utils import build_dir

# ImageNet channel statistics, the usual normalize() constants (torchvision's pretrained-model docs).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _augmentation(size: int):
    from torchvision.transforms import v2
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True)])


def _images_per_second(dataset, batch: int, workers: int, repeats: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, collate_fn=collate, num_workers=workers,
                        persistent_workers=workers > 0)
    best = float("inf")
    for _ in range(repeats + (workers > 0)):        # with workers, the first pass also starts them: not counted
        start = time.perf_counter()
        for inputs, _ in loader:
            inputs["image"].sum()                   # touch the batch
        best = min(best, time.perf_counter() - start)
    return len(dataset) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = build_dir("bench_data_loading")
    manifest = write_manifest(generate(World(WorldConfig(image_size=args.size)), args.n, seed=0), root)
    start = time.perf_counter()
    eager = load_manifest(manifest, image_size=args.size)
    decode_s = time.perf_counter() - start
    variants = {
        "in memory": eager,
        "lazy": load_manifest(manifest, image_size=args.size, tokenizer=eager.tokenizer, lazy=True),
        "lazy + v2 transform + normalize": load_manifest(
            manifest, image_size=args.size, tokenizer=eager.tokenizer, lazy=True,
            transform=_augmentation(args.size), normalize=(IMAGENET_MEAN, IMAGENET_STD)),
    }
    print(f"{args.n} PNG files ({args.size}x{args.size}), batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; decoding all into memory once: {decode_s:.2f} s")
    print(f"{'dataset':34s} {'workers':>7s} {'images/s':>10s}")
    for name, dataset in variants.items():
        for workers in (0, 2):
            rate = _images_per_second(dataset, args.batch, workers, args.repeats)
            print(f"{name:34s} {workers:7d} {rate:10,.0f}")


if __name__ == "__main__":
    main()
