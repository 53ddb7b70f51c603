"""Shared fixtures: one world and a few generated datasets per test session.

Generated data are session-scoped (generating costs ~0.1 s per 1000 scenes);
tests must treat them as read-only.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: tests never open a window

import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mmcourse.data import World, generate  # noqa: E402

# Seeds of the session datasets: distinct, so "fresh" test data never overlap the training data.
SMALL_SEED, PROBE_TRAIN_SEED, PROBE_TEST_SEED = 0, 1, 2


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test depends on the caller's MMCOURSE_* variables or writes into the repo's build/."""
    for name in ("MMCOURSE_PROFILE", "MMCOURSE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path_factory.getbasetemp() / "build"))


@pytest.fixture(scope="session")
def world() -> World:
    """The default world (WorldConfig())."""
    return World()


@pytest.fixture(scope="session")
def small_dataset(world):
    """2000 generated scenes: for shapes, loaders, captions and short training runs."""
    return generate(world, 2000, seed=SMALL_SEED)


@pytest.fixture(scope="session")
def probe_train(world):
    """8000 scenes to train the attribute probes on."""
    return generate(world, 8000, seed=PROBE_TRAIN_SEED)


@pytest.fixture(scope="session")
def probe_test(world):
    """2000 fresh scenes (another seed) to score the probes on."""
    return generate(world, 2000, seed=PROBE_TEST_SEED)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Run torch, BLAS and OpenMP on one thread during the tests, then restore.

    Measured on the shared 2-core CI machine while another process was busy:
    two threads made a small CNN 4x slower and a scikit-learn logistic
    regression 100x slower (threads spinning on each other) than one thread.
    Tests check numbers, not speed, so one thread keeps their time predictable.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)
