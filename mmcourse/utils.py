"""Seeding, device and precision choice, and project paths — decided here, once.

Every notebook and module asks this module for the device and the autocast
context, so the same code runs on a laptop CPU and on a GPU.
"""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

DEVICE_ENV = "MMCOURSE_DEVICE"   # overrides the automatic device choice
BUILD_ENV = "MMCOURSE_BUILD"     # overrides where outputs are written


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a seeded torch Generator."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
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


def environment_report() -> dict[str, str]:
    """Versions and hardware the course runs on, for notebooks and the results report."""
    device = get_device()
    report = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu threads": str(torch.get_num_threads()),
        "cuda available": str(torch.cuda.is_available()),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    return report


def run_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python interpreter (used to show listings failing cleanly)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
