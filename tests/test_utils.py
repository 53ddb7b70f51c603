"""mmcourse.utils: seeding, device choice, autocast, build folder, run_python."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmcourse import utils
from mmcourse.utils import (autocast, build_dir, environment_report, get_device, project_root, run_python,
                            seed_everything)


def _draws():
    return random.random(), np.random.rand(3), torch.rand(3)


def test_seed_everything_reproduces_python_numpy_and_torch():
    g1 = seed_everything(123)
    first, g1_draw = _draws(), torch.rand(2, generator=g1)
    g2 = seed_everything(123)
    second, g2_draw = _draws(), torch.rand(2, generator=g2)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])
    assert torch.equal(g1_draw, g2_draw)
    seed_everything(124)
    assert not torch.equal(torch.rand(3), first[2])


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int, got"):
        seed_everything(seed)


def test_get_device_cpu():
    assert get_device("cpu") == torch.device("cpu")


def test_get_device_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_default_is_available():
    device = get_device()
    assert device.type in {"cpu", "cuda", "mps"}
    torch.zeros(1, device=device)  # usable


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_get_device_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="device 'cuda' was requested but is not available on this machine"):
        get_device("cuda")


def test_get_device_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        get_device("gpu0")


def test_autocast_on_cpu_is_a_no_op():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        out = a @ b
        assert not torch.is_autocast_enabled("cpu")
    assert out.dtype == torch.float32
    assert torch.equal(out, a @ b)


def test_build_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path / "out"))
    path = build_dir("results", "x")
    assert path == tmp_path / "out" / "results" / "x" and path.is_dir()


def test_build_dir_defaults_to_build_under_the_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MMCOURSE_BUILD")
    monkeypatch.setattr(utils, "project_root", lambda: tmp_path)  # do not create build/ in the repository
    assert build_dir("results") == tmp_path / "build" / "results"


def test_project_root_holds_the_package():
    root = project_root()
    assert (root / "pyproject.toml").is_file() and (root / "mmcourse" / "utils.py").is_file()


def test_run_python_returns_output_and_stderr():
    ok = run_python("print(6 * 7)")
    assert ok.returncode == 0 and ok.stdout.strip() == "42"
    failed = run_python("raise ValueError('shapes do not match')")
    assert failed.returncode == 1
    assert "ValueError: shapes do not match" in failed.stderr


def test_environment_report_names_versions_and_device():
    report = environment_report()
    assert report["torch"] == torch.__version__ and report["numpy"] == np.__version__
    assert report["device"] == str(get_device())
    assert all(isinstance(v, str) and v for v in report.values())


def test_seed_must_not_be_a_bool():
    with pytest.raises(ValueError, match="seed must be a non-negative int, got True"):
        seed_everything(True)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from mmcourse.utils import atomic_write
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first" and oct(path.stat().st_mode & 0o777) != oct(0o600)

    def failing(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"first"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]
