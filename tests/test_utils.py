"""mmcourse.utils: seeding, device choice, autocast, build folder, run_python."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmcourse import utils
from mmcourse.utils import (autocast, build_dir, cpu_name, environment_report, get_device, project_root, run_python,
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
    assert report["cpu"] == cpu_name()


def test_cpu_name_reads_the_model_name_of_proc_cpuinfo(monkeypatch, tmp_path):
    import mmcourse.utils as utils
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    monkeypatch.setattr(utils, "CPUINFO", info)
    assert cpu_name() == "AMD EPYC 7B13"


def test_cpu_name_without_proc_cpuinfo_asks_the_platform(monkeypatch, tmp_path):
    import mmcourse.utils as utils
    monkeypatch.setattr(utils, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(utils.platform, "processor", lambda: "arm")
    assert cpu_name() == "arm"
    monkeypatch.setattr(utils.platform, "processor", lambda: "")
    monkeypatch.setattr(utils.platform, "machine", lambda: "")
    assert cpu_name() == "unknown CPU"


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


# --- chapter 10 ---

def _bn_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())


def test_maybe_compile_follows_the_mode_and_the_device():
    from mmcourse.utils import COMPILE_MODES, maybe_compile
    net = _bn_net()
    assert maybe_compile(net, "cpu") == (net, "Sequential: eager, not compiled on cpu (mode 'auto' compiles on CUDA only)")
    assert maybe_compile(net, "cuda", "off")[1] == "Sequential: eager, switched off"
    assert net._compiled_call_impl is None and COMPILE_MODES == ("auto", "on", "off")
    with pytest.raises(ValueError, match=r"mode must be one of \('auto', 'on', 'off'\), got 'fast'"):
        maybe_compile(net, "cpu", "fast")


def test_maybe_compile_tries_a_batch_and_leaves_state_and_gradients_as_they_were():
    from mmcourse.utils import maybe_compile
    torch.manual_seed(0)
    net, x = _bn_net().train(), torch.randn(2, 3, 6, 6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    same, message = maybe_compile(net, "cpu", "on", example=x, backend="eager")   # dynamo only: quick on a CPU
    assert same is net and message == "Sequential: compiled with torch.compile and tried on a batch"
    assert net._compiled_call_impl is not None and list(net.state_dict()) == list(before)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())     # BatchNorm statistics restored
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(net.eval()(x), net._call_impl(x))


def test_maybe_compile_falls_back_to_eager_with_the_reason(monkeypatch):
    from mmcourse.utils import maybe_compile

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler for this platform\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    net, x = _bn_net().eval(), torch.randn(2, 3, 6, 6)
    same, message = maybe_compile(net, "cuda", "auto")
    assert same is net and net._compiled_call_impl is None
    assert message == "Sequential: eager, torch.compile failed (RuntimeError: no compiler for this platform)"
    assert net(x).shape == (2, 64)


def test_maybe_compile_falls_back_when_the_first_call_fails():
    from mmcourse.utils import maybe_compile

    def failing_backend(graph, example_inputs):
        raise NotImplementedError("this backend compiles nothing")

    net, x = _bn_net().eval(), torch.randn(2, 3, 6, 6)
    _, message = maybe_compile(net, "cpu", "on", example=x, backend=failing_backend)
    assert message.startswith("Sequential: eager, torch.compile failed (") and net._compiled_call_impl is None
    torch.testing.assert_close(net(x), net._call_impl(x))


def test_channels_last_only_on_cuda():
    from mmcourse.utils import channels_last
    x, conv = torch.randn(2, 3, 8, 8), torch.nn.Conv2d(3, 4, 3)
    assert channels_last(x, "cpu") is x and channels_last(conv, "cpu") is conv
    y = channels_last(x, "cuda")               # the layout change itself runs on any tensor
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    assert channels_last(conv, "cuda").weight.is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(2, 3)
    assert channels_last(flat, "cuda") is flat


def test_precision_and_peak_memory_say_what_they_are():
    import warnings
    from mmcourse.utils import peak_memory, precision_name, reset_peak_memory
    assert precision_name("cpu") == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # no CUDA here: torch warns that autocast would be disabled
        assert precision_name("cuda") == "bfloat16 autocast"
    reset_peak_memory("cpu")                   # a no-op on a CPU
    mib, kind = peak_memory("cpu")
    assert 10 < mib < 1e6 and kind == "process peak RSS (CPU, since start)"


# --- configure_threads ---

def test_configure_threads_keeps_torchs_pool_and_gives_blas_one_thread(monkeypatch):
    from threadpoolctl import threadpool_info

    from mmcourse.utils import _TORCH_DEFAULT_THREADS, BLAS_THREADS, THREADS_ENV, configure_threads
    monkeypatch.delenv(THREADS_ENV, raising=False)
    torch.set_num_threads(1)
    assert configure_threads("cpu") == _TORCH_DEFAULT_THREADS == torch.get_num_threads()
    assert BLAS_THREADS == 1 and all(pool["num_threads"] == 1 for pool in threadpool_info()
                                     if pool["user_api"] == "blas")


def test_configure_threads_takes_an_argument_or_the_environment(monkeypatch):
    from mmcourse.utils import THREADS_ENV, configure_threads
    monkeypatch.setenv(THREADS_ENV, "2")
    assert configure_threads("cpu") == 2 == torch.get_num_threads()
    assert configure_threads("meta", threads=1) == 1 == torch.get_num_threads()   # any device: the CPU side


def test_wait_policy_reports_what_the_process_started_with(monkeypatch):
    from mmcourse.utils import SPIN_ENV, wait_policy
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv(SPIN_ENV, "1000")
    assert wait_policy() == "spin 1000 times, then sleep (GOMP_SPINCOUNT)"
    monkeypatch.delenv(SPIN_ENV)
    assert wait_policy().startswith("spin 300,000 times") and "GOMP_SPINCOUNT=1000" in wait_policy()
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert wait_policy() == "sleep at once (OMP_WAIT_POLICY=PASSIVE)"


def test_make_exports_the_course_spin_count():
    from mmcourse.utils import COURSE_SPIN_COUNT, SPIN_ENV
    assert f"export {SPIN_ENV} ?= {COURSE_SPIN_COUNT}" in (project_root() / "Makefile").read_text()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_configure_threads_rejects_a_bad_count(bad, monkeypatch):
    from mmcourse.utils import THREADS_ENV, configure_threads
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        configure_threads("cpu", threads=bad)
    monkeypatch.setenv(THREADS_ENV, str(bad))
    with pytest.raises(ValueError, match=r"\$MMCOURSE_THREADS must be a positive int"):
        configure_threads("cpu")


# --- evaluation: inference and prepare_inputs ---

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_inference_switches_gradients_off_and_autocast_follows_the_device():
    from mmcourse.utils import inference
    w = torch.ones(2, requires_grad=True)
    with inference("cpu"):
        out = w * 2
        assert not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    assert out.grad_fn is None and torch.is_grad_enabled()


@CUDA
def test_inference_on_cuda_is_bf16_autocast():
    from mmcourse.utils import inference
    a = torch.randn(4, 4, device="cuda")
    with inference("cuda"):
        assert (a @ a).dtype == torch.bfloat16 and not torch.is_grad_enabled()


def test_prepare_inputs_moves_nested_batches_and_keeps_their_structure():
    from mmcourse.utils import prepare_inputs
    image, text, label = torch.randn(2, 3, 8, 8), torch.ones(2, 5, dtype=torch.long), torch.tensor([0, 1])
    out = prepare_inputs(({"image": image, "text": text}, [label]), "cpu")
    assert isinstance(out, tuple) and isinstance(out[1], list) and list(out[0]) == ["image", "text"]
    assert torch.equal(out[0]["image"], image) and out[0]["image"].is_contiguous()   # no layout change on the CPU
    assert torch.equal(out[0]["text"], text) and torch.equal(out[1][0], label)
    with pytest.raises(TypeError, match="cannot move an object of type str to a device"):
        prepare_inputs({"caption": "a red disc"}, "cpu")


@CUDA
def test_prepare_inputs_on_cuda_puts_4d_tensors_in_channels_last():
    from mmcourse.utils import prepare_inputs
    image, audio = torch.randn(2, 3, 8, 8), torch.randn(2, 64)
    out = prepare_inputs({"audio": audio, "image": image}, "cuda")
    assert out["image"].is_cuda and out["image"].is_contiguous(memory_format=torch.channels_last)
    assert not out["image"].is_contiguous() and out["audio"].is_contiguous()
    assert torch.equal(out["image"].cpu(), image) and torch.equal(out["audio"].cpu(), audio)
