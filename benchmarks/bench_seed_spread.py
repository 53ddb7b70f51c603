"""How far chapter 10's figures move with the seed: the pipeline run for several seeds.

    python benchmarks/bench_seed_spread.py [--profile smoke] [--seeds 0 1 2]

For each seed, :func:`mmcourse.pipeline.run_pipeline` trains the three stages afresh with
``pipeline_config(profile, seed)`` (into ``build/seed_spread/``, apart from the notebook's run
folder), and the figures the chapter states are measured as the chapter measures them: the
stage-2 test accuracy (main task), the stage-3 test accuracy (downstream task), and the
accuracy of ``predict()`` on the first ``PREDICT_SCENES`` downstream test scenes with every
modality, and with some missing (:func:`mmcourse.inference.accuracy_by_modalities`).

Prints a table of the figures per seed with their mean, min, max and spread (max - min), and
writes it to ``build/seed_spread_<profile>.json``. The seed changes the data, the initial
weights and the batch order; another machine changes the rounding of the same computation
(chapter 10 says how much, for seed 0); both move the trained models.
"""
import argparse
import json
import time

import numpy as np

from mmcourse.config import pipeline_config
from mmcourse.inference import accuracy_by_modalities
from mmcourse.modality import MODALITIES
from mmcourse.pipeline import pipeline_data, run_pipeline
from mmcourse.utils import atomic_write, build_dir, configure_threads, cpu_name, get_device

PREDICT_SCENES = 500          # chapter 10 scores predict() on the first 500 downstream test scenes
SUBSETS = (MODALITIES, ("audio", "text"), ("image", "text"), ("audio",))


def run_seed(profile: str, seed: int, device) -> dict[str, float]:
    """The chapter's figures for one seed, from a fresh pipeline run."""
    config = pipeline_config(profile, seed)
    data = pipeline_data(config)
    root = build_dir("seed_spread", f"spread_{config.name}")
    result = run_pipeline(config, device, resume=False, progress=False, root=root, data=data)
    test = data["downstream"]["test"]
    by_subset = accuracy_by_modalities(result.models["adapt"], test, SUBSETS, min(PREDICT_SCENES, len(test)))
    figures = {"stage 2 test accuracy": result.metrics["joint test accuracy"],
               "stage 3 test accuracy": result.metrics["adapt test accuracy"]}
    figures.update({f"predict() {' + '.join(s)}": acc for s, acc in by_subset.items()})
    return figures


def summary(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, min, max and spread (max - min) of every figure over the seeds."""
    names = next(iter(per_seed.values()))
    out = {}
    for name in names:
        values = np.array([figures[name] for figures in per_seed.values()])
        out[name] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
                     "spread": float(values.max() - values.min())}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", help="smoke (minutes), default (about 2 min per seed), full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    device = get_device()
    configure_threads(device)
    per_seed, start = {}, time.perf_counter()
    for seed in args.seeds:
        per_seed[seed] = run_seed(args.profile, seed, device)
    stats = summary(per_seed)
    header = f"{'figure':32s}" + "".join(f"{'seed ' + str(s):>9s}" for s in args.seeds)
    print(f"profile {args.profile}, device {device}, CPU {cpu_name()}; {time.perf_counter() - start:.0f} s")
    print(header + "".join(f"{k:>9s}" for k in ("mean", "min", "max", "spread")))
    for name, s in stats.items():
        print(f"{name:32s}" + "".join(f"{per_seed[seed][name]:9.3f}" for seed in args.seeds)
              + "".join(f"{s[k]:9.3f}" for k in ("mean", "min", "max", "spread")))
    record = {"profile": args.profile, "device": str(device), "cpu": cpu_name(),
              "per_seed": {str(k): v for k, v in per_seed.items()}, "summary": stats}
    path = build_dir() / f"seed_spread_{args.profile}.json"
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
