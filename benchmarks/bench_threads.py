"""How the CPU thread policy copes with a busy machine: training steps of the course's small models.

    python benchmarks/bench_threads.py [--steps 150] [--repeats 1]

Three workloads, each the kind of step a chapter runs: chapter 02's reference model (batch 32),
chapter 04's CNN image encoder (batch 128) and chapter 05's three-encoder fusion model (batch 128).
Each runs in a fresh interpreter (so the OpenMP environment takes effect) under these policies:

- ``default``: torch's default pool (one thread per core); a waiting OpenMP thread spins 300,000 times;
- ``course``: what ``make`` runs, ``GOMP_SPINCOUNT=1000`` and :func:`mmcourse.utils.configure_threads`;
- ``one thread``: ``configure_threads(threads=1)``: nothing left to wait for;
- with ``--spin N ...``, also torch's default pool with ``GOMP_SPINCOUNT=N``, and with ``--passive``,
  with ``OMP_WAIT_POLICY=PASSIVE`` (a waiting thread sleeps at once).

and two conditions: an idle machine, and beside one CPU-bound process (a Python busy loop).
Prints the seconds per run and each policy's slow-down under load (busy / idle).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from mmcourse.utils import COURSE_SPIN_COUNT

# name -> (environment, threads passed to configure_threads or None for torch's untouched default)
POLICIES = {"default": ({}, None), "course": ({"GOMP_SPINCOUNT": str(COURSE_SPIN_COUNT)}, 0),
            "one thread": ({}, 1)}
WORKLOADS = ("02 reference, batch 32", "04 CNN image, batch 128", "05 fusion of 3 encoders, batch 128")

WORKER = r"""
import json, sys, time
import torch
from mmcourse.data import WORLD_VOCAB, World, WorldConfig, generate, make_loader
from mmcourse.encoders import UnimodalClassifier, make_encoder
from mmcourse.fusion import FusionModel, make_fusion
from mmcourse.models import ReferenceConfig, ReferenceModel
from mmcourse.training import train_epoch
from mmcourse.utils import configure_threads

workload, steps = sys.argv[1], int(sys.argv[3])
threads = int(sys.argv[4])
if threads >= 0:
    configure_threads("cpu", threads or None)
torch.manual_seed(0)
batch = 32 if workload.startswith("02") else 128
data = generate(World(WorldConfig()), batch * steps, seed=0)
if workload.startswith("02"):
    model = ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB), image_size=32))
elif workload.startswith("04"):
    model = UnimodalClassifier(make_encoder("image", "cnn"), 10)
else:
    encoders = {"audio": make_encoder("audio", "cnn"), "image": make_encoder("image", "cnn"),
                "text": make_encoder("text", "mean_pool")}
    fusion = make_fusion("concat", {m: e.out_dim for m, e in encoders.items()}, 64, 10)
    model = FusionModel(fusion, 10, encoders)
loader = make_loader(data, batch, shuffle=True, seed=0)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
start = time.perf_counter()
train_epoch(model, loader, optimizer, "cpu")
print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}))
"""


def run(workload: str, policy: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MMCOURSE_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    extra, threads = POLICIES[policy]
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", WORKER, workload, policy, str(steps),
                          str(-1 if threads is None else threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(steps: int, repeats: int) -> dict:
    return {(w, p): min(run(w, p, steps)["seconds"] for _ in range(repeats)) for w in WORKLOADS for p in POLICIES}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the best is kept")
    parser.add_argument("--spin", type=int, nargs="*", default=[],
                        help="also try torch's default pool with GOMP_SPINCOUNT set to each of these")
    parser.add_argument("--passive", action="store_true", help="also try OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args()
    POLICIES.update({f"GOMP_SPINCOUNT={n}": ({"GOMP_SPINCOUNT": str(n)}, None) for n in args.spin})
    if args.passive:
        POLICIES["passive"] = ({"OMP_WAIT_POLICY": "PASSIVE"}, None)
    print(f"{os.cpu_count()} CPU cores, {args.steps} steps per run, best of {args.repeats}")
    idle = measure(args.steps, args.repeats)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        busy = measure(args.steps, args.repeats)
    finally:
        hog.kill()
        hog.wait()
    print("| workload | policy | idle s | beside one busy process s | slow-down |")
    print("|---|---|---:|---:|---:|")
    for w in WORKLOADS:
        for p in POLICIES:
            print(f"| {w} | {p} | {idle[w, p]:.2f} | {busy[w, p]:.2f} | {busy[w, p] / idle[w, p]:.1f}x |")


if __name__ == "__main__":
    main()
