"""Seeding, device and precision choice, and project paths — decided here, once.

Every notebook and module asks this module for the device and the autocast
context, so the same code runs on a laptop CPU and on a GPU.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checks import check_int

DEVICE_ENV = "MMCOURSE_DEVICE"   # overrides the automatic device choice
BUILD_ENV = "MMCOURSE_BUILD"     # overrides where outputs are written
CPUINFO = Path("/proc/cpuinfo")  # Linux's description of the processors (its "model name" lines)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a seeded torch Generator."""
    check_int(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) numbers on ``device``; with a (CPU) generator they are drawn on it and moved.

    So a seeded draw gives the same numbers whatever the device.
    """
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the device: ``prefer`` or ``$MMCOURSE_DEVICE`` if given, else cuda, mps, cpu.

    Raises:
        ValueError: if the requested device is unknown or not available here.
    """
    name = prefer or os.environ.get(DEVICE_ENV) or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if not available.get(device.type, False):
        raise ValueError(f"device {name!r} was requested but is not available on this machine")
    return device


def autocast(device: torch.device):
    """Mixed precision where it pays: bf16 autocast on CUDA, a no-op elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def project_root() -> Path:
    """The repository root: the nearest folder above this file holding pyproject.toml."""
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd()


def build_dir(*parts: str) -> Path:
    """A folder under ``build/`` (or ``$MMCOURSE_BUILD``), created if missing."""
    base = Path(os.environ.get(BUILD_ENV) or project_root() / "build")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path, write) -> Path:
    """Write a file so that readers see the old version or the new one, never half of one.

    ``write(f)`` fills a temporary binary file in the same folder; it is flushed
    to disk and then renamed over ``path`` (a rename within a folder is atomic).
    If ``write`` fails, the temporary file is removed and ``path`` is untouched.
    The file gets the usual permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cpu_name() -> str:
    """The processor's model name: the first "model name" of ``/proc/cpuinfo`` on Linux, else
    ``platform.processor()`` (or the machine type); timings in the course name the CPU they ran on."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def environment_report() -> dict[str, str]:
    """Versions and hardware the course runs on, for notebooks and the results report."""
    device = get_device()
    report = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "cpu threads": str(torch.get_num_threads()),
        "openmp waits": wait_policy(),
        "cuda available": str(torch.cuda.is_available()),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    return report


def run_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python interpreter (used to show listings failing cleanly)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


# --- chapter 10 ---
# The rest of the device policy: what runs compiled, in which memory layout, and how much memory it took.

COMPILE_MODES = ("auto", "on", "off")


def precision_name(device) -> str:
    """What :func:`autocast` does on ``device``, in words: ``"bfloat16 autocast"`` or ``"float32"``."""
    context = autocast(device)
    return f"{str(context.fast_dtype).removeprefix('torch.')} autocast" if isinstance(context, torch.autocast) \
        else "float32"


def maybe_compile(module: torch.nn.Module, device, mode: str = "auto", example=None,
                  **options) -> tuple[torch.nn.Module, str]:
    """Compile ``module`` in place with ``torch.compile`` where it pays and works; say what was done.

    ``mode``: ``"auto"`` compiles on CUDA only (on a CPU, compiling costs tens of seconds that
    a short run never wins back), ``"on"`` compiles on any device, ``"off"`` never.
    ``Module.compile`` is used, so the state dict keeps its names (checkpoints load into an
    uncompiled model) and ``copy.deepcopy`` gives an uncompiled copy.

    ``torch.compile`` compiles lazily, at the first call. With ``example`` (a batch for
    ``module``), one forward (and backward, if a parameter is trainable) runs here under
    :func:`autocast` so a failure shows now; the module's state (e.g. BatchNorm statistics)
    and gradients are restored afterwards. If compiling fails, the module stays uncompiled
    and the message says why.

    Args:
        module: the module to compile in place.
        device: where it runs.
        mode: one of ``COMPILE_MODES``.
        example: optional input to try the compiled module on.
        options: passed to ``torch.compile`` (e.g. ``backend="eager"``).

    Returns:
        ``(module, message)``: the same module, and one line saying whether it is compiled.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    device = torch.device(device)
    name = type(module).__name__
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        why = "switched off" if mode == "off" else f"not compiled on {device.type} (mode 'auto' compiles on CUDA only)"
        return module, f"{name}: eager, {why}"
    try:
        module.compile(**options)
        if example is not None:
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            with autocast(device):
                out = module(example)
            if any(p.requires_grad for p in module.parameters()):
                out.float().sum().backward()
            module.load_state_dict(state)
            for p in module.parameters():
                p.grad = None
    except Exception as exc:  # a backend or graph the compiler cannot handle: run eagerly
        module._compiled_call_impl = None      # what Module.compile set; None is eager again
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return module, f"{name}: eager, torch.compile failed ({type(exc).__name__}: {first})"
    return module, f"{name}: compiled with torch.compile{' and tried on a batch' if example is not None else ''}"


def channels_last(x, device):
    """On CUDA, a 4-D tensor or a module in channels-last memory layout (faster convolutions); elsewhere ``x``."""
    if torch.device(device).type != "cuda":
        return x
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def reset_peak_memory(device) -> None:
    """Start a new peak-memory measurement on CUDA; elsewhere nothing (a process's peak RSS cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> tuple[float, str]:
    """Peak memory in MiB and what it measures.

    On CUDA: the most memory tensors held on the GPU since :func:`reset_peak_memory`
    (``torch.cuda.max_memory_allocated``). Elsewhere: the peak resident memory of the whole
    Python process since it started (``resource.getrusage``), which includes the data and
    every earlier step and cannot be reset.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU memory allocated, peak since reset"
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS (CPU, since start)"


# --- CPU threads ---
# The course's models are small: a training step is many short ops, which PyTorch splits over its
# intra-op threads; a thread that finishes first waits for the others. GNU OpenMP (torch's thread pool
# on Linux) makes a waiting thread spin 300,000 times before it sleeps. When another process keeps a
# core busy, the spinning thread takes the very core its partner needs, and chapters ran 5-14x slower.
# Spinning 1,000 times keeps the short waits of an idle machine fast and yields the core soon on a busy
# one; one thread would never spin, but ran convolution-heavy steps up to 1.9x slower on an idle machine.
# benchmarks/bench_threads.py measures all three.

THREADS_ENV = "MMCOURSE_THREADS"   # overrides torch's CPU thread count (default: torch's own, one per core)
SPIN_ENV = "GOMP_SPINCOUNT"        # GNU OpenMP's spin count, read once, when torch is imported
COURSE_SPIN_COUNT = 1000           # what `make` exports (see above)
BLAS_THREADS = 1                   # NumPy / scikit-learn on the course's small problems (probes, PCA)
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def wait_policy() -> str:
    """How waiting OpenMP threads behave in this process, in words (the environment torch started with)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return "sleep at once (OMP_WAIT_POLICY=PASSIVE)"
    spin = os.environ.get(SPIN_ENV)
    if spin:
        return f"spin {spin} times, then sleep ({SPIN_ENV})"
    return (f"spin 300,000 times, then sleep (GNU OpenMP's default; start Jupyter with {SPIN_ENV}="
            f"{COURSE_SPIN_COUNT}, as `make` does, for busy machines)")


def configure_threads(device, threads: int | None = None) -> int:
    """Set the CPU threads for the course's small models; return torch's thread count.

    Torch's intra-op pool gets ``threads`` if given, else ``$MMCOURSE_THREADS``, else torch's own
    default (one per core); NumPy's and scikit-learn's BLAS get ``BLAS_THREADS`` (one: their problems
    here are small, and two threads made a logistic-regression probe 100x slower on a busy machine).
    How long waiting threads spin is fixed when torch is imported, by ``$GOMP_SPINCOUNT``, which
    ``make`` sets to ``COURSE_SPIN_COUNT``; :func:`wait_policy` says what this process got.
    On a GPU the same settings apply to the CPU side (data preparation).

    Raises:
        ValueError: if ``threads`` (or ``$MMCOURSE_THREADS``) is not a positive int.
    """
    torch.device(device)                     # a clear error for a malformed device
    value = threads if threads is not None else os.environ.get(THREADS_ENV) or _TORCH_DEFAULT_THREADS
    source = "threads" if threads is not None else f"${THREADS_ENV}"
    if isinstance(value, str):
        value = int(value) if value.strip().isdigit() else value
    count = check_int(value, source)
    from threadpoolctl import threadpool_limits
    # BLAS only: an "openmp" limit would also shrink torch's own pool. Not a context manager: it stays.
    threadpool_limits(limits=BLAS_THREADS, user_api="blas")
    torch.set_num_threads(count)
    return count


# --- evaluation ---
# What every evaluation pass runs under; the loop itself is mmcourse.evaluation.run_batches.

@contextlib.contextmanager
def inference(device):
    """No gradients, and the training loop's precision (:func:`autocast`: bf16 on CUDA, float32 elsewhere).

    ``torch.no_grad`` rather than ``torch.inference_mode``: features computed here may
    later feed a model that is trained (chapter 05 trains fusions on cached features).
    """
    with torch.no_grad(), autocast(device):
        yield


def to_device(batch, device, transform=None):
    """Move a batch (tensor, or dict / list / tuple of them, nested) to ``device``, non-blocking.

    ``transform``, if given, is applied to every moved tensor (e.g. a memory-layout change).
    """
    if isinstance(batch, torch.Tensor):
        moved = batch.to(device, non_blocking=True)
        return moved if transform is None else transform(moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device, transform) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, transform) for v in batch)
    raise TypeError(f"cannot move an object of type {type(batch).__name__} to a device")


def prepare_inputs(batch, device):
    """Move a batch (tensor, or dict / list / tuple of them, nested) to ``device``; on CUDA every 4-D tensor
    (images (B, C, S, S)) in channels-last layout (:func:`channels_last`)."""
    return to_device(batch, device, lambda t: channels_last(t, device))
