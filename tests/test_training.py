"""mmcourse.training: a short CPU run whose loss falls, determinism, and errors."""
from __future__ import annotations

import pytest
import torch

from mmcourse.data.dataset import make_loader
from mmcourse.data.text import WORLD_VOCAB
from mmcourse.models import ReferenceConfig, ReferenceModel
from mmcourse.training import History, classification_loss, fit, predict, steps_to_reach, train_epoch
from mmcourse.utils import seed_everything

CPU = torch.device("cpu")


def _fit_run(dataset, epochs: int = 3, seed: int = 0) -> History:
    seed_everything(seed)
    model = ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB)))
    train = torch.utils.data.Subset(dataset, range(0, 1500))
    dev = torch.utils.data.Subset(dataset, range(1500, 2000))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, make_loader(train, 64, shuffle=True, seed=seed), make_loader(dev, 250), optimizer,
               epochs, CPU)


@pytest.fixture(scope="module")
def history(small_dataset) -> History:
    return _fit_run(small_dataset)


def test_training_loss_falls(history):
    assert len(history.train_loss) == len(history.dev_accuracy) == len(history.seconds) == 3
    assert history.train_loss[2] < history.train_loss[0]
    # Measured: dev accuracy 0.36 after 3 epochs on 1500 scenes; chance is 0.1.
    assert history.dev_accuracy[-1] > 0.2


def test_same_seed_same_history(small_dataset, history):
    again = _fit_run(small_dataset)
    assert again.train_loss == history.train_loss          # exactly: same seed, same numbers
    assert again.dev_accuracy == history.dev_accuracy      # (seconds are wall time and differ)


def test_fit_rejects_zero_epochs(small_dataset):
    model = ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB)))
    loader = make_loader(small_dataset, 64)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        fit(model, loader, loader, torch.optim.Adam(model.parameters()), epochs=0, device=CPU)


def test_train_epoch_rejects_an_empty_loader(small_dataset):
    model = ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB)))
    empty = make_loader(torch.utils.data.Subset(small_dataset, []), 8)
    with pytest.raises(ValueError, match="the training loader yielded no batches"):
        train_epoch(model, empty, torch.optim.Adam(model.parameters()), CPU)


def test_predict_returns_classes_and_labels_in_order(small_dataset):
    seed_everything(0)
    model = ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB)))
    subset = torch.utils.data.Subset(small_dataset, range(10))
    pred, true = predict(model, make_loader(subset, 3), CPU)
    assert pred.shape == true.shape == (10,) and pred.dtype == torch.int64
    assert torch.equal(true, small_dataset.labels[:10])
    assert model.training  # predict ran in eval mode and restored the training mode
    with torch.no_grad():
        direct = model.eval()(small_dataset.__getitems__(list(range(10)))[0]).argmax(-1)
    assert torch.equal(pred, direct)


def test_steps_to_reach():
    history = History(step=[10, 20, 30, 40], metrics={"dev_accuracy": [0.5, 0.8, 0.79, 0.9]})
    assert steps_to_reach(history, 0.8) == 20
    assert steps_to_reach(history, 0.85) == 40
    assert steps_to_reach(history, 0.95) is None
    assert steps_to_reach(history, 0.1, key="dev_accuracy") == 10


# ----------------------------------------------------------------------------- the general loop: train()

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from torch import nn  # noqa: E402

from mmcourse.fusion import FeatureDataset  # noqa: E402
from mmcourse.training import (NonFiniteLossError, TrainConfig, load_checkpoint, read_checkpoint,  # noqa: E402
                               save_checkpoint, train)

# A tiny task: 3 Gaussian blobs in 8 dimensions, and an MLP with dropout (so resume must restore the RNG).
TINY_SCRIPT = """
import torch
from torch import nn
from mmcourse.data import make_loader
from mmcourse.fusion import FeatureDataset

def tiny_data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * nn.functional.one_hot(y, 8).float()
    return FeatureDataset({"x": x}, y)

def tiny_model(seed=0, hidden=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 3))

def loss_fn(model, batch):
    inputs, y = batch
    logits = model(inputs["x"])
    return {"loss": nn.functional.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean()}

def loader(data, seed=0):
    return make_loader(data, 32, shuffle=True, seed=seed)
"""
_ns: dict = {}
exec(TINY_SCRIPT, _ns)
tiny_data, tiny_model, tiny_loss, tiny_loader = _ns["tiny_data"], _ns["tiny_model"], _ns["loss_fn"], _ns["loader"]


def _evaluate(data):
    def evaluate(model):
        inputs, y = data.__getitems__(range(len(data)))
        return {"dev_accuracy": (model(inputs["x"]).argmax(1) == y).float().mean().item()}
    return evaluate


def _run(config, checkpoint=None, resume=False, loss_fn=tiny_loss, model=None):
    model = model if model is not None else tiny_model()
    history = train(model, loss_fn, tiny_loader(tiny_data()), config, CPU, evaluate=_evaluate(tiny_data(seed=1)),
                    checkpoint=checkpoint, resume=resume)
    return model, history


def _same_run(a, b):
    (model_a, hist_a), (model_b, hist_b) = a, b
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(p, q), name
    da, db = hist_a.as_dict(), hist_b.as_dict()
    da.pop("seconds"), db.pop("seconds")  # wall time differs
    assert da == db


CONFIG = TrainConfig(epochs=4, lr=3e-2, warmup_steps=5, grad_clip=1.0, eval_every=5, progress=False, log_every=4)


def test_train_loss_falls_and_history_is_complete():
    model, history = _run(CONFIG)
    steps = 4 * math.ceil(240 / 32)
    assert history.step[-1] == steps and history.step == sorted(history.step)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.dev_accuracy[-1] > 0.75     # measured 0.84; the blobs overlap (Bayes about 0.85), chance 0.33
    assert len(history.metrics["train_acc"]) == len(history.step)
    assert history.stop_reason == "completed" and history.best_step is not None
    assert history.lr[-1] == pytest.approx(0.0, abs=1e-12)     # cosine ends at 0


def test_same_seed_same_train_history():
    _same_run(_run(CONFIG), _run(CONFIG))


def test_lr_factor_is_linear_warmup_then_cosine():
    config = TrainConfig(warmup_steps=4, schedule="cosine")
    factors = [config.lr_factor(s, 14) for s in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    for s in range(4, 14):
        assert factors[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 4) / 10)))
    assert TrainConfig(schedule="constant").lr_factor(99, 100) == 1.0


def test_learning_rates_follow_the_schedule():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    config = TrainConfig(epochs=2, lr=0.1, warmup_steps=3, progress=False)
    train(model, tiny_loss, tiny_loader(tiny_data()), config, CPU, optimizer=optimizer)
    total = 2 * math.ceil(240 / 32)
    assert seen == pytest.approx([0.1 * config.lr_factor(s, total) for s in range(total)])


def test_gradients_are_clipped_to_the_max_norm():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    norms = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: norms.append(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()))
    big_loss = lambda m, b: 1000.0 * tiny_loss(m, b)["loss"]  # noqa: E731  (gradients far above the cap)
    train(model, big_loss, tiny_loader(tiny_data()), TrainConfig(grad_clip=0.5, progress=False), CPU,
          optimizer=optimizer)
    assert max(norms) == pytest.approx(0.5, rel=1e-4)


def test_max_steps_stops_inside_an_epoch_and_shortens_the_schedule():
    config = TrainConfig(epochs=3, max_steps=11, eval_every=4, progress=False)
    model, history = _run(config)
    assert history.step == [4, 8, 11] and history.stop_reason == "max_steps (11) reached"
    assert history.lr[-1] == pytest.approx(0.0, abs=1e-12)      # the cosine spans the 11 steps
    _same_run((model, history), _run(config))
    with pytest.raises(ValueError, match="TrainConfig.max_steps must be a positive int or None, got 0"):
        TrainConfig(max_steps=0)


def test_early_stopping_and_restore_best():
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    snapshots = []

    def evaluate(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"dev_accuracy": next(scores)}

    model = tiny_model()
    config = TrainConfig(epochs=10, eval_every=2, patience=2, restore_best=True, progress=False)
    history = train(model, tiny_loss, tiny_loader(tiny_data()), config, CPU, evaluate=evaluate)
    assert history.dev_accuracy == [0.5, 0.7, 0.6, 0.65]
    assert history.step == [2, 4, 6, 8] and history.best_step == 4
    assert "did not improve for 2 evaluations" in history.stop_reason and "step 8" in history.stop_reason
    for k, v in model.state_dict().items():       # the weights of the evaluation at step 4
        assert torch.equal(v, snapshots[1][k]), k


def test_min_mode_monitors_a_loss():
    values = iter([3.0, 2.0, 2.5, 2.6])
    config = TrainConfig(epochs=10, eval_every=2, patience=2, monitor="dev_loss", mode="min", progress=False)
    history = train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), config, CPU,
                    evaluate=lambda m: {"dev_loss": next(values)})
    assert history.best_step == 4 and history.step[-1] == 8


@pytest.mark.parametrize("stop_at", [9, 16])   # mid-epoch, and right after an epoch's end (8 steps per epoch)
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, stop_at):
    config = TrainConfig(**{**CONFIG.__dict__, "checkpoint_every": 3})
    reference = _run(config, checkpoint=tmp_path / "ref.pt")
    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] > stop_at:
            raise KeyboardInterrupt
        return tiny_loss(model, batch)

    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(config, checkpoint=path, loss_fn=crashing_loss)
    assert read_checkpoint(path)["run"]["step"] == stop_at - stop_at % 3
    torch.manual_seed(12345)                      # the resumed process's RNG starts elsewhere
    _same_run(reference, _run(config, checkpoint=path, resume=True, model=tiny_model(seed=7)))


def test_resume_after_the_process_was_killed(tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "checkpoint_every": 4})
    reference = _run(config)
    path = tmp_path / "killed.pt"
    script = TINY_SCRIPT + textwrap.dedent(f"""
        import os, signal
        from mmcourse.training import TrainConfig, train
        torch.set_num_threads(1)
        calls = 0
        def dying_loss(model, batch):
            global calls
            calls += 1
            if calls == 11:
                os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no exception handlers
            return loss_fn(model, batch)
        def evaluate(model):
            data = tiny_data(seed=1)
            inputs, y = data.__getitems__(range(len(data)))
            return {{"dev_accuracy": (model(inputs["x"]).argmax(1) == y).float().mean().item()}}
        train(tiny_model(), dying_loss, loader(tiny_data()), TrainConfig(**{CONFIG.__dict__ | {'checkpoint_every': 4}!r}),
              "cpu", evaluate=evaluate, checkpoint={str(path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    assert read_checkpoint(path)["run"]["step"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    _same_run(reference, _run(config, checkpoint=path, resume=True))


def test_a_finished_checkpoint_returns_its_history_at_once(tmp_path):
    path = tmp_path / "done.pt"
    first = _run(CONFIG, checkpoint=path)

    def never(model, batch):
        raise AssertionError("a finished run must not train again")

    again = _run(CONFIG, checkpoint=path, resume=True, loss_fn=never, model=tiny_model(seed=3))
    _same_run(first, again)


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "w.pt"
    _run(CONFIG, checkpoint=path)
    data = torch.load(path, weights_only=True)
    assert data["run"]["finished"] and data["model_class"] == "Sequential"


def test_an_interrupted_save_leaves_the_previous_checkpoint_readable(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    model, _ = _run(CONFIG, checkpoint=path)
    before = path.read_bytes()

    def broken_write(buffer):          # the disk fills up half-way through
        buffer.write(b"partial")
        raise OSError("No space left on device")

    import mmcourse.utils as utils
    real = utils.atomic_write
    monkeypatch.setattr("mmcourse.training.atomic_write", lambda p, write: real(p, broken_write))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"format": 1, "model": {}})
    assert path.read_bytes() == before
    load_checkpoint(path, tiny_model())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]   # no temporary file left behind


def test_a_nan_loss_stops_with_the_step_and_the_last_finite_loss(tmp_path):
    calls = {"n": 0}

    def exploding(model, batch):
        calls["n"] += 1
        loss = tiny_loss(model, batch)["loss"]
        return loss * float("nan") if calls["n"] == 7 else loss

    path = tmp_path / "nan.pt"
    config = TrainConfig(epochs=2, log_every=4, checkpoint_every=3, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(NaN or inf\) at step 7; the last finite loss was "
                                                 r"[0-9.]+ at step 6"):
        train(tiny_model(), exploding, tiny_loader(tiny_data()), config, CPU, checkpoint=path)
    data = read_checkpoint(path)
    assert data["run"]["step"] == 6                 # the step-9 checkpoint was never written
    assert all(torch.isfinite(v).all() for v in data["model"].values())


def test_an_infinite_loss_at_the_first_step_is_reported():
    def infinite(model, batch):
        return tiny_loss(model, batch)["loss"] + float("inf")

    with pytest.raises(NonFiniteLossError, match="at step 1; no step had a finite loss"):
        train(tiny_model(), infinite, tiny_loader(tiny_data()), TrainConfig(progress=False), CPU)


def test_a_checkpoint_of_another_model_is_rejected_clearly(tmp_path):
    path = tmp_path / "other.pt"
    _run(CONFIG, checkpoint=path)
    with pytest.raises(ValueError, match=r"different model .*shape mismatch: .*0.weight: \(16, 8\) in the file, "
                                         r"\(32, 8\) in the model"):
        load_checkpoint(path, tiny_model(hidden=32))
    with pytest.raises(ValueError, match=r"missing from the file: \['extra.bias', 'extra.weight'\]"):
        bigger = tiny_model()
        bigger.add_module("extra", nn.Linear(2, 2))
        load_checkpoint(path, bigger)
    with pytest.raises(ValueError, match="different model"):
        _run(CONFIG, checkpoint=path, resume=True, model=tiny_model(hidden=32))


def test_unreadable_and_foreign_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint .*junk.pt"):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="is not an mmcourse checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pt")


def test_resume_with_another_config_is_rejected(tmp_path):
    path = tmp_path / "cfg.pt"
    config = TrainConfig(**{**CONFIG.__dict__, "checkpoint_every": 3})
    with pytest.raises(KeyboardInterrupt):
        def crash(model, batch, calls=[0]):
            calls[0] += 1
            if calls[0] > 5:
                raise KeyboardInterrupt
            return tiny_loss(model, batch)
        _run(config, checkpoint=path, loss_fn=crash)
    with pytest.raises(ValueError, match="different TrainConfig \\(lr differ\\)"):
        _run(TrainConfig(**{**config.__dict__, "lr": 0.1}), checkpoint=path, resume=True)


def test_host_syncs_happen_every_log_every_steps_not_every_step(monkeypatch):
    from mmcourse import training
    calls = {"n": 0}
    real = training._Meter.check_finite

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(training._Meter, "check_finite", counting)
    data = FeatureDataset({"x": torch.randn(2048, 8)}, torch.randint(0, 3, (2048,)))
    config = TrainConfig(epochs=1, log_every=16, progress=False)
    train(tiny_model(), tiny_loss, make_loader(data, 8, shuffle=True), config, CPU)
    assert calls["n"] <= 256 // 16 + 3          # 256 steps: one sync per 16 steps, plus the end


def test_progress_bar_per_epoch_shows_loss_and_throughput(capsys):
    train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), TrainConfig(epochs=2, progress=True, log_every=4), CPU)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "loss=" in err and "samples_per_s=" in err


def test_progress_follows_the_environment(monkeypatch):
    from mmcourse.training import _progress_enabled
    monkeypatch.setenv("MMCOURSE_PROGRESS", "0")
    assert not _progress_enabled(TrainConfig())
    assert _progress_enabled(TrainConfig(progress=True))
    monkeypatch.delenv("MMCOURSE_PROGRESS")
    assert _progress_enabled(TrainConfig())


def test_tensorboard_logs_go_under_build(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path / "b"))
    _run(TrainConfig(**{**CONFIG.__dict__, "tensorboard": "tiny"}))
    events = list((tmp_path / "b" / "tensorboard" / "tiny").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize("bad, message", [
    ({"epochs": 0}, "TrainConfig.epochs must be a positive int, got 0"),
    ({"eval_every": 0}, "TrainConfig.eval_every must be a positive int or None, got 0"),
    ({"lr": 0.0}, "TrainConfig.lr must be > 0"),
    ({"schedule": "linear"}, "TrainConfig.schedule must be one of"),
    ({"mode": "best"}, "TrainConfig.mode must be 'max' or 'min'"),
    ({"grad_clip": -1.0}, "TrainConfig.grad_clip must be > 0 or None"),
    ({"warmup_steps": -2}, "TrainConfig.warmup_steps must be a non-negative int"),
])
def test_bad_config_is_rejected_with_the_field_name(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**bad)


def test_bad_setups_are_rejected_clearly():
    data = tiny_data()
    with pytest.raises(ValueError, match="patience needs an evaluate function"):
        train(tiny_model(), tiny_loss, tiny_loader(data), TrainConfig(patience=2), CPU)
    unseeded = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, collate_fn=lambda b: b)
    with pytest.raises(ValueError, match="shuffles without its own torch.Generator"):
        train(tiny_model(), tiny_loss, unseeded, TrainConfig(), CPU)
    with pytest.raises(TypeError, match="loader must be a DataLoader .* or a list of batches, got generator"):
        train(tiny_model(), tiny_loss, (b for b in tiny_loader(data)), TrainConfig(), CPU)
    with pytest.raises(ValueError, match="lacks TrainConfig.monitor 'dev_accuracy'"):
        train(tiny_model(), tiny_loss, tiny_loader(data), TrainConfig(progress=False), CPU,
              evaluate=lambda m: {"dev_f1": 0.5})
    with pytest.raises(ValueError, match="must return a scalar loss, got shape \\(32,\\)"):
        train(tiny_model(), lambda m, b: nn.functional.cross_entropy(m(b[0]["x"]), b[1], reduction="none"),
              tiny_loader(data), TrainConfig(progress=False), CPU)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        train(tiny_model(), tiny_loss, tiny_loader(data), TrainConfig(), CPU, resume=True)


def test_classification_loss_is_the_cross_entropy_of_the_models_logits():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 3, 1, 1, 2])
    expected = -torch.log_softmax(model(x), 1)[torch.arange(5), y].mean()
    torch.testing.assert_close(classification_loss(model, (x, y)), expected)


# ----------------------------------------------------------------------------- pausing a run: train(..., stop=...)

@pytest.mark.parametrize("stop_at", [6, 8])   # mid-epoch, and exactly at an epoch's end (8 steps per epoch)
def test_a_stop_callback_pauses_with_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path, stop_at):
    reference = _run(CONFIG)
    seen = []

    def stop(state):
        seen.append(state.step)
        return state.step >= stop_at

    path = tmp_path / "paused.pt"
    model = tiny_model()
    history = train(model, tiny_loss, tiny_loader(tiny_data()), CONFIG, CPU, evaluate=_evaluate(tiny_data(seed=1)),
                    checkpoint=path, stop=stop)
    assert seen == list(range(1, stop_at + 1))                 # asked after every step, until it said yes
    assert history.stopped and history.stop_reason == f"stop requested at step {stop_at}"
    saved = read_checkpoint(path)
    assert saved["run"]["step"] == stop_at and not saved["run"]["finished"]
    for k, v in model.state_dict().items():                    # the checkpoint holds the weights of the pause
        assert torch.equal(saved["model"][k], v), k
    torch.manual_seed(12345)                                   # the resumed process's RNG starts elsewhere
    resumed = _run(CONFIG, checkpoint=path, resume=True, model=tiny_model(seed=7))
    assert not resumed[1].stopped and resumed[1].stop_reason == "completed"
    _same_run(reference, resumed)


def test_a_stop_at_the_last_step_or_after_early_stopping_does_not_pause():
    steps = 4 * math.ceil(240 / 32)
    _, history = _run(CONFIG)
    model = tiny_model()
    at_end = train(model, tiny_loss, tiny_loader(tiny_data()), CONFIG, CPU, evaluate=_evaluate(tiny_data(seed=1)),
                   stop=lambda state: state.step >= steps)
    assert at_end.stop_reason == "completed" and not at_end.stopped and at_end.step == history.step
    scores = iter([0.5, 0.4, 0.3, 0.9])
    config = TrainConfig(epochs=10, eval_every=2, patience=2, progress=False)
    early = train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), config, CPU,
                  evaluate=lambda m: {"dev_accuracy": next(scores)}, stop=lambda state: state.step >= 6)
    assert early.stop_reason.startswith("early stop at step 6") and not early.stopped


def test_a_paused_run_without_a_checkpoint_returns_its_history():
    history = train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), CONFIG, CPU,
                    evaluate=_evaluate(tiny_data(seed=1)), stop=lambda state: state.step >= 11)
    assert history.stopped and history.step == [5, 10]       # no evaluation is added at a pause


# ----------------------------------------------------------------------------- the TensorBoard writer is always closed

class _FakeWriter:
    """Stands in for SummaryWriter: records scalars and whether it was closed."""

    made: list["_FakeWriter"] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_writer(monkeypatch):
    import types
    _FakeWriter.made = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    return _FakeWriter.made


def _exploding(model, batch):
    return tiny_loss(model, batch)["loss"] * float("nan")


def _interrupted(model, batch):
    raise KeyboardInterrupt


@pytest.mark.parametrize("how, loss_fn, stop, error", [
    ("completed", tiny_loss, None, None),
    ("paused", tiny_loss, lambda state: state.step >= 3, None),
    ("NaN", _exploding, None, NonFiniteLossError),
    ("Ctrl-C", _interrupted, None, KeyboardInterrupt),
])
def test_the_tensorboard_writer_is_closed_on_every_exit(fake_writer, tmp_path, how, loss_fn, stop, error):
    config = TrainConfig(**{**CONFIG.__dict__, "tensorboard": "closed", "eval_every": 2})
    run = lambda: train(tiny_model(), loss_fn, tiny_loader(tiny_data()), config, CPU,  # noqa: E731
                        evaluate=_evaluate(tiny_data(seed=1)), checkpoint=tmp_path / "c.pt", stop=stop)
    if error is None:
        run()
    else:
        with pytest.raises(error):
            run()
    assert len(fake_writer) == 1 and fake_writer[0].closed, how
    if how == "paused":
        assert ("train/loss", 2) in fake_writer[0].scalars


def test_a_resumed_run_purges_tensorboard_steps_after_its_checkpoint(fake_writer, tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "tensorboard": "purged"})
    path = tmp_path / "p.pt"
    train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), config, CPU, checkpoint=path,
          stop=lambda state: state.step >= 5)
    train(tiny_model(), tiny_loss, tiny_loader(tiny_data()), config, CPU, checkpoint=path, resume=True)
    assert [w.purge_step for w in fake_writer] == [None, 5] and all(w.closed for w in fake_writer)


# ----------------------------------------------------------------------------- room for distributed training

class _EpochSampler(torch.utils.data.Sampler):
    """A sampler that orders by epoch, as DistributedSampler does, and records set_epoch calls."""

    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epochs[-1])).tolist())

    def __len__(self):
        return self.n


def test_the_samplers_epoch_is_set_at_each_epoch_start_also_after_a_resume(tmp_path):
    data, path = tiny_data(), tmp_path / "e.pt"
    sampler = _EpochSampler(len(data))
    loader = make_loader(data, 32)
    loader = torch.utils.data.DataLoader(data, 32, sampler=sampler, collate_fn=loader.collate_fn)
    config = TrainConfig(epochs=3, progress=False)
    train(tiny_model(), tiny_loss, loader, config, CPU, checkpoint=path, stop=lambda state: state.step >= 12)
    assert sampler.epochs == [0, 1]
    train(tiny_model(), tiny_loss, loader, config, CPU, checkpoint=path, resume=True)
    assert sampler.epochs == [0, 1, 1, 2]          # the resumed epoch 1 replays its order, then epoch 2


def test_a_distributed_sampler_of_one_rank_resumes_exactly(tmp_path):
    data = tiny_data()
    collate = make_loader(data, 32).collate_fn

    def run(**kwargs):
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
        # Its own generator, as make_loader gives: without one, each iter(loader) draws from torch's global RNG.
        loader = torch.utils.data.DataLoader(data, 32, sampler=sampler, collate_fn=collate,
                                             generator=torch.Generator())
        model = tiny_model()
        return model, train(model, tiny_loss, loader, CONFIG, CPU, evaluate=_evaluate(tiny_data(seed=1)), **kwargs)

    reference = run()
    path = tmp_path / "d.pt"
    assert run(checkpoint=path, stop=lambda state: state.step >= 11)[1].stopped
    _same_run(reference, run(checkpoint=path, resume=True))


def test_only_rank_zero_writes_checkpoints_and_tensorboard(monkeypatch, tmp_path, fake_writer):
    from mmcourse import training
    monkeypatch.setattr(training, "_rank", lambda: 1)
    config = TrainConfig(**{**CONFIG.__dict__, "checkpoint_every": 2, "tensorboard": "rank1"})
    _run(config, checkpoint=tmp_path / "r.pt")
    assert not (tmp_path / "r.pt").exists() and fake_writer == []


def test_reduce_is_the_identity_without_a_process_group_and_a_sum_with_one(tmp_path):
    from mmcourse.training import _rank, _reduce
    dist = torch.distributed
    t = torch.tensor(2.5, dtype=torch.float64)
    assert not dist.is_initialized() and _reduce(t) is t and _rank() == 0
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = _reduce(t)
        assert reduced is not t and torch.equal(reduced, t) and _rank() == 0    # one rank: the sum is itself
        _same_run(_run(CONFIG), _run(CONFIG))    # the loop runs its all_reduce path and stays deterministic
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- an earlier chapter's model: load_or_train

def test_load_or_train_loads_a_finished_checkpoint_and_trains_a_missing_or_unfinished_one(tmp_path):
    from mmcourse.training import load_or_train
    path, calls = tmp_path / "stage.pt", []

    def train_fn(resume, stop=None):
        calls.append(resume)
        model = tiny_model()
        train(model, tiny_loss, tiny_loader(tiny_data()), CONFIG, CPU, checkpoint=path, resume=resume, stop=stop)
        return model

    trained = load_or_train(path, tiny_model, train_fn, CPU)          # missing: trained, checkpoint written
    assert calls == [True] and path.is_file() and not trained.training
    loaded = load_or_train(path, lambda: tiny_model(seed=9), train_fn, CPU)   # finished: loaded, not trained
    assert calls == [True] and not loaded.training
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    train_fn(False, stop=lambda state: state.step >= 3)               # an unfinished checkpoint: continued
    calls.clear()
    resumed = load_or_train(path, tiny_model, train_fn, CPU)
    assert calls == [True] and read_checkpoint(path)["run"]["finished"]
    for k, v in trained.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_load_or_train_retrains_a_checkpoint_of_another_model_with_a_warning(tmp_path):
    from mmcourse.training import load_or_train
    path, calls = tmp_path / "old.pt", []
    _run(CONFIG, checkpoint=path)                                     # a 16-wide model's checkpoint

    def train_fn(resume):
        calls.append(resume)
        model = tiny_model(hidden=32)
        train(model, tiny_loss, tiny_loader(tiny_data()), CONFIG, CPU, checkpoint=path, resume=resume)
        return model

    with pytest.warns(UserWarning, match=r"retraining old.pt: checkpoint .* different model .*\(16, 8\) in the file"):
        model = load_or_train(path, lambda: tiny_model(hidden=32), train_fn, CPU)
    assert calls == [False] and model[0].weight.shape == (32, 8)
    assert read_checkpoint(path)["signature"]["0.weight"] == [32, 8]


# ----------------------------------------------------------------------------- train_step: the one optimizer step

from mmcourse.training import StepResult, make_optimizer, optimized_params, train_step  # noqa: E402
import contextlib  # noqa: E402


def _tiny_batch(n=32, seed=0):
    inputs, y = tiny_data(n, seed).__getitems__(range(n))
    return inputs, y


def _hand_step(model, batch, optimizer, clip, context=contextlib.nullcontext()):
    """The step written out: loss, backward, torch's clipping formula, the optimizer's step."""
    with context:
        loss = tiny_loss(model, batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    optimizer.step()
    return loss.detach(), norm


@pytest.mark.parametrize("clip", [0.05, 100.0])        # clipped, and a norm below the cap (scale 1)
def test_train_step_is_the_hand_written_step(clip):
    model, batch = tiny_model().eval(), _tiny_batch()   # eval: no dropout, so both steps see one function
    twin = tiny_model().eval()
    config = TrainConfig(lr=1e-2, weight_decay=0.01)
    opt_a, opt_b = make_optimizer(model.parameters(), config), make_optimizer(twin.parameters(), config)
    loss, norm = _hand_step(model, batch, opt_a, clip)
    done = train_step(twin, batch, tiny_loss, opt_b, clip=clip, autocast=contextlib.nullcontext())
    assert isinstance(done, StepResult) and set(done.extras) == {"acc"}
    torch.testing.assert_close(done.loss, loss)
    torch.testing.assert_close(done.grad_norm, norm)
    assert (norm > clip) == (clip == 0.05)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p)
        torch.testing.assert_close(q.grad, p.grad)


def test_train_step_without_clipping_reports_no_norm_and_leaves_the_gradients():
    model, batch = tiny_model().eval(), _tiny_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    done = train_step(model, batch, lambda m, b: 1000.0 * tiny_loss(m, b)["loss"], optimizer, clip=None,
                      autocast=contextlib.nullcontext())
    assert done.grad_norm is None and done.extras == {}
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total > 1.0        # a thousand times the loss: far above any cap, and not scaled down


def test_train_step_runs_the_forward_pass_under_the_given_autocast():
    model, batch = tiny_model().eval(), _tiny_batch()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_step(model, batch, tiny_loss, optimizer, clip=1.0, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen == [torch.bfloat16] and all(p.dtype == torch.float32 for p in model.parameters())


def test_train_step_with_a_grad_scaler_unscales_before_clipping_and_skips_an_overflow():
    batch = _tiny_batch()
    plain, scaled = tiny_model().eval(), tiny_model().eval()
    opt_a, opt_b = torch.optim.SGD(plain.parameters(), lr=0.1), torch.optim.SGD(scaled.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)    # a power of 2: scaling is exact in float32
    a = train_step(plain, batch, tiny_loss, opt_a, clip=0.05, autocast=contextlib.nullcontext())
    b = train_step(scaled, batch, tiny_loss, opt_b, clip=0.05, autocast=contextlib.nullcontext(), scaler=scaler)
    torch.testing.assert_close(b.grad_norm, a.grad_norm)           # the norm of the unscaled gradients
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(q, p)
    before = [p.detach().clone() for p in scaled.parameters()]
    overflow = train_step(scaled, batch, lambda m, b: tiny_loss(m, b)["loss"] * float("inf"), opt_b, clip=0.05,
                          autocast=contextlib.nullcontext(), scaler=scaler)
    assert not torch.isfinite(overflow.grad_norm)
    assert all(torch.equal(p, q) for p, q in zip(scaled.parameters(), before))   # the step was skipped
    assert scaler.get_scale() == 2.0 ** 9                                        # and the scale halved


def test_train_step_rejects_a_loss_that_is_not_a_scalar():
    model, batch = tiny_model(), _tiny_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(32,\)"):
        train_step(model, batch, lambda m, b: torch.zeros(32, requires_grad=True), optimizer, clip=1.0,
                   autocast=contextlib.nullcontext())


def test_train_runs_every_step_through_train_step_and_clips_the_optimizers_params(monkeypatch):
    import mmcourse.training as training
    calls = []

    def spy(model, batch, loss_fn, optimizer, *, clip, autocast, scaler=None):
        calls.append((clip, optimized_params(optimizer)))
        return train_step(model, batch, loss_fn, optimizer, clip=clip, autocast=autocast, scaler=scaler)

    monkeypatch.setattr(training, "train_step", spy)
    model, temperature = tiny_model(), nn.Parameter(torch.ones(()))
    train(model, tiny_loss, tiny_loader(tiny_data()), TrainConfig(grad_clip=0.5, progress=False), CPU,
          extra_params=[temperature])
    assert len(calls) == math.ceil(240 / 32)
    assert all(clip == 0.5 for clip, _ in calls)
    assert calls[0][1] == [*model.parameters(), temperature]       # the extra parameter is clipped too
