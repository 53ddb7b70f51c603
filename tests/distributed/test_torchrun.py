"""Data-parallel training under real torchrun launches (2 CPU processes, gloo): ``make torchrun``.

Two launches of ``worker.py`` (about 10-20 s each): ``checks`` (gathered loss and gradients, DDP, FSDP2,
and a run in which rank 1 crashes) and ``resume`` (the relaunch). Each rank writes what it measured as JSON;
the tests below read it. The reference is always one process on the same global batches.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]
# float32. Measured on two machines of this course (both 2-core Xeons): loss 0 and 0, gradients 4e-8, weights
# 2.5e-6 on one and 5.4e-5 on another (with AMX), the same on every run of each. The weights' tolerance is the
# widest because AdamW divides each step by the gradient's own size, so rounding in a tiny gradient becomes a
# visible change of its parameter; a real mistake (a rank on the wrong shard, a skipped all-reduce) changes
# the weights by the order of a whole step, lr = 1e-2, each step.
LOSS_TOL, GRAD_TOL, WEIGHT_TOL = 1e-6, 1e-5, 1e-4


def _launch(mode: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(WORKER), mode, str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _read(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    first = _launch("checks", out)
    if not (out / "checks_rank0.json").is_file() or not (out / "checks_rank1.json").is_file():
        pytest.fail(f"the checks launch wrote no results:\n{first.stdout[-3000:]}\n{first.stderr[-3000:]}")
    second = _launch("resume", out)
    return out, first, second


def test_gathered_contrastive_loss_and_gradients_equal_one_process(runs):
    for r in _read(runs[0], "checks"):
        assert r["backend"] == "gloo" and r["world_size"] == 2
        assert r["loss_diff"] < LOSS_TOL, "each rank's gathered loss is the loss of the global batch"
        assert r["grad_diff"] < GRAD_TOL, "the DDP-averaged gradient is the global batch's gradient"
        # the check must catch the classic bug: multiplying the loss by the world size doubles every gradient
        assert r["bug_grad_diff"] > 0.5 * r["grad_scale"] > 100 * GRAD_TOL


def test_ddp_and_fsdp2_training_equal_one_process(runs):
    for r in _read(runs[0], "checks"):
        assert r["ddp_weight_diff"] < WEIGHT_TOL
        assert r["evaluations"] == 3, "one evaluation per step"
        assert r["train_loss_diff"] < LOSS_TOL * 10, "training means reduced over the ranks: the global batch's"
        assert r["dev_loss_diff"] < LOSS_TOL * 10, "dev metric computed on rank 0 and broadcast to every rank"
        assert r["fsdp_weight_diff"] < WEIGHT_TOL
    local = [r["fsdp_local_params"] for r in _read(runs[0], "checks")]
    total = _read(runs[0], "checks")[0]["total_params"]
    assert sum(local) >= total and max(local) < 0.51 * total, "FSDP2 keeps about half of the parameters per rank"


def test_a_crashed_rank_stops_the_job_and_the_relaunch_resumes_exactly(runs):
    out, first, second = runs
    assert first.returncode != 0 and not (out / "uninterrupted_by_mistake_rank0.json").exists()
    assert second.returncode == 0, second.stderr[-3000:]
    for r in _read(out, "resume"):
        assert r["resumed_from"] == 4, "the last checkpoint before the crash at step 5 (one every 2 steps)"
        assert r["final_step"] == 8 and r["stop_reason"].startswith("max_steps")
        assert r["weight_diff"] < WEIGHT_TOL, "resumed run ends with the weights of an uninterrupted one"
