"""How the CPU thread policy copes with a busy machine: training steps of the course's small models.

    python benchmarks/bench_threads.py [--steps 150] [--repeats 1]

Three workloads, each the kind of step a chapter runs: chapter 02's reference model (batch 32),
chapter 04's CNN image encoder (batch 128) and chapter 05's three-encoder fusion model (batch 128).
Each runs in a fresh interpreter (so ``OMP_WAIT_POLICY`` takes effect) under three policies:

- ``default``: torch's default pool (one thread per core), OpenMP threads spin while they wait;
- ``passive``: the same pool with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
- ``configure_threads``: :func:`mmcourse.utils.configure_threads` on the CPU (one thread).

and two conditions: an idle machine, and beside one CPU-bound process (a Python busy loop).
Prints the seconds per run and each policy's slow-down under load (busy / idle).
"""
import argparse
import json
import os
import subprocess
import sys
import time

POLICIES = ("default", "passive", "configure_threads")
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

workload, policy, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if policy == "configure_threads":
    configure_threads("cpu")
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
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", WORKER, workload, policy, str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(steps: int, repeats: int) -> dict:
    return {(w, p): min(run(w, p, steps)["seconds"] for _ in range(repeats)) for w in WORKLOADS for p in POLICIES}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the best is kept")
    args = parser.parse_args()
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
