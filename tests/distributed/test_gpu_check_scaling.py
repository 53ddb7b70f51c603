"""The GPU check's torchrun launch (scripts/gpu_check.py, ``scaling_rows``): one process, gloo on a CPU.

On the lent GPU the same call runs one NCCL rank; here it proves the launch, the JSON it writes and the
report rows, in the smoke sizes (a few seconds beside the launch's start-up).
"""
import importlib.util

from mmcourse.utils import project_root


def test_scaling_rows_launch_one_process_and_report_ddp_and_fsdp():
    path = project_root() / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_scaling", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rows = gpu_check.scaling_rows("smoke")
    assert [row.split("|")[1].strip() for row in rows] == ["ddp", "fsdp"], rows
    assert all("gloo on cpu" in row for row in rows), rows
    params = [row.split("|")[4].strip() for row in rows]
    assert params[0] == params[1] and params[0].split(" of ")[0] == params[0].split(" of ")[1]   # one rank holds all
