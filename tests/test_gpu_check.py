"""The GPU check script runs its whole code path on a CPU (smoke profile) and writes its report."""
import importlib.util
import sys

import pytest

from mmcourse.utils import project_root


def _load():
    path = project_root() / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_peak_knows_the_lent_gpu_and_says_when_it_does_not():
    gpu_check = _load()
    assert gpu_check.bf16_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert gpu_check.bf16_peak("Some Other GPU") is None


def test_the_check_runs_on_a_cpu_and_writes_its_report(tmp_path, capsys, monkeypatch):
    gpu_check = _load()
    # its torchrun launch is tested in tests/distributed (make torchrun), apart from the unit tests
    monkeypatch.setattr(gpu_check, "scaling_rows", lambda profile: ["| ddp | gloo on cpu | 1 | 2 of 2 |"])
    out = tmp_path / "GPU_REPORT.md"
    status = gpu_check.main(["--device", "cpu", "--profile", "smoke", "--output", str(out)])
    text = out.read_text()
    assert status in (0, 2)                      # 2: over the GPU budget, which a busy CPU may be
    for heading in ("## Stages", "## Test accuracy against the exact Bayes limit", "## Model FLOP utilisation",
                    "## Scaling out: one process under torchrun"):
        assert heading in text
    for stage in ("pretrain", "joint", "adapt"):
        assert f"| {stage} |" in text
    assert "| ddp | gloo on cpu |" in text
    assert "peak unknown" in text                # no GPU: no peak to divide by
    assert str(out) in capsys.readouterr().out
    assert "gpu_check" not in sys.modules
