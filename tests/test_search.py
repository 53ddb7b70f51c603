"""Tests of mmcourse.search: the objective, studies (seeded, fresh, resumed), importances, selection optimism."""
import numpy as np
import optuna
import pytest
import torch

from mmcourse import search
from mmcourse.applications import driving

PARAMS = {"lr": 1e-2, "weight_decay": 1e-3, "modality_dropout": 0.2, "width": 8}
TINY = search.SearchConfig(train=96, dev=64, test=32, audit=32, epochs=1, trials=3, startup_trials=2,
                           repro_trials=2, repro_epochs=1, batch_size=32, halvings=20)


@pytest.fixture(scope="module")
def data():
    return search.make_data(TINY, seed=0)


def _objective(data, params=PARAMS, seed=0):
    return search.objective(params, data["train"], data["dev"], TINY.epochs, TINY.batch_size, "cpu", seed)


def test_profiles_and_config_errors():
    for profile in ("smoke", "default", "full"):
        assert search.search_config(profile).trials >= search.search_config(profile).startup_trials
    with pytest.raises(ValueError, match="startup_trials"):
        search.SearchConfig(train=1, dev=1, test=1, audit=1, epochs=1, trials=2, startup_trials=3,
                            repro_trials=1, repro_epochs=1, repro_startup_trials=1)
    with pytest.raises(ValueError, match="no search settings"):
        search._table_entry({}, "smoke", "search")


def test_splits_are_distinct_and_sized(data):
    assert {k: len(v) for k, v in data.items()} == {"train": 96, "dev": 64, "test": 32, "audit": 32}
    assert data["train"].inputs["camera"].shape[1:] == (3, 24, 24)
    assert not torch.equal(data["test"].inputs["lidar"], data["audit"].inputs["lidar"])


def test_model_shapes_batch_one_and_width():
    for width in search.WIDTHS:
        model = search.build_model({**PARAMS, "width": width}).eval()
        x = {"camera": torch.rand(1, 3, 24, 24), "lidar": torch.rand(1, driving.LIDAR_BEAMS),
             "radar": torch.rand(1, 3 * driving.RADAR_POINTS)}
        assert model(x).shape == (1, len(driving.LABELS))
    small, wide = (sum(p.numel() for p in search.build_model({**PARAMS, "width": w}).parameters()) for w in (8, 32))
    assert wide > 4 * small


@pytest.mark.parametrize("bad, message", [
    ({"lr": 1e-2}, "missing"),
    ({**PARAMS, "momentum": 0.9}, "unknown"),
    ({**PARAMS, "lr": 1.0}, r"params\['lr'\] must lie in"),
    ({**PARAMS, "modality_dropout": 0.9}, "modality_dropout"),
    ({**PARAMS, "width": 12}, r"params\['width'\] must be one of"),
])
def test_bad_params_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        search.check_params(bad)


def test_objective_same_seed_same_score_and_learns(data):
    first, second = _objective(data), _objective(data)
    assert first == second                                   # seeded: same parameters and seed, same score
    assert 0.0 <= first <= 1.0
    with pytest.raises(ValueError, match="dev must hold"):
        search.objective(PARAMS, data["train"], data["dev"].select(np.zeros(len(data["dev"]), bool)),
                         1, 32, "cpu")


def test_training_loss_falls(data):
    torch.manual_seed(0)
    model = search.build_model(PARAMS)
    batch = next(iter(driving.make_loader(data["train"], 96)))
    loss = lambda: torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    before = loss().item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before - 0.1


def test_suggest_reads_the_space_from_a_trial():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = search.suggest(study.ask())
    assert search.check_params(params) == params
    fixed = search.suggest(optuna.trial.FixedTrial(PARAMS))
    assert fixed == PARAMS


def test_two_fresh_studies_agree_and_reopening_resumes(data, tmp_path):
    run = lambda path, resume=False: search.run_search(
        search.create_study(path, seed=3, startup_trials=1, resume=resume), data, 2, 1, 32, "cpu")
    a, b = run(tmp_path / "a.db"), run(tmp_path / "b.db")
    first = [t.params for t in a.trials]                    # read now: a Study object reads its file each time
    assert first == [t.params for t in b.trials]
    assert list(search.trial_values(a)) == list(search.trial_values(b))
    assert a.best_params == b.best_params
    resumed = run(tmp_path / "a.db", resume=True)           # the trap: the same file continues the first study
    assert len(resumed.trials) == 4
    again = run(tmp_path / "a.db")                          # resume=False deletes the file first
    assert len(again.trials) == 2 and [t.params for t in again.trials] == first


def test_run_search_keeps_models_and_times(data, tmp_path):
    models = {}
    study = search.run_search(search.create_study(tmp_path / "m.db", 0, 1), data, 2, 1, 32, "cpu", models=models)
    assert sorted(models) == [0, 1] and all(t.user_attrs["seconds"] > 0 for t in study.trials)
    correct = search.correct_on(models[0], data["dev"], "cpu")
    assert correct.shape == (64,) and correct.mean() == pytest.approx(study.trials[0].value)


def test_importances_are_seeded_and_sum_to_one():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -np.log10(search.suggest(t)["lr"] / 3e-3) ** 2, n_trials=12)
    first, second = search.param_importances(study, 0), search.param_importances(study, 0)
    assert first == second and sum(first.values()) == pytest.approx(1.0)
    assert max(first, key=first.get) == "lr"


def test_selection_optimism_equals_a_loop():
    rng = np.random.default_rng(0)
    correct = rng.random((5, 40)) < np.linspace(0.6, 0.7, 5)[:, None]       # (T, N)
    mean, se, gaps = search.selection_optimism(correct, 30, seed=1)
    order = np.random.default_rng(1).permuted(np.tile(np.arange(40), (30, 1)), axis=1)
    expected = []
    for h in range(30):
        a, b = order[h, :20], order[h, 20:]
        w = int(np.argmax(correct[:, a].mean(1)))
        expected.append(correct[w, a].mean() - correct[w, b].mean())
    np.testing.assert_allclose(gaps, expected, atol=1e-12)
    assert mean == pytest.approx(np.mean(expected)) and se > 0
    same = np.tile(correct[:1], (3, 1))                                     # identical trials: no selection effect
    assert search.selection_optimism(same, 30)[0] == pytest.approx(np.mean(search.selection_optimism(
        same[:1], 30)[2]))


@pytest.mark.parametrize("bad, halvings, message", [(np.zeros(5, bool), 10, "correct must be"),
                                                    (np.zeros((2, 5), bool), 1, "halvings must be")])
def test_selection_optimism_bad_input(bad, halvings, message):
    with pytest.raises(ValueError, match=message):
        search.selection_optimism(bad, halvings)


def test_study_path_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path))
    assert search.study_path("main") == tmp_path / "search" / "main.db"
    with pytest.raises(ValueError, match="plain file stem"):
        search.study_path("a/b")
    import matplotlib
    matplotlib.use("Agg")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: search.suggest(t)["modality_dropout"], n_trials=4)
    for fig in (search.plot_history(study, 0.8, "t"), search.plot_importances({"lr": 0.7, "width": 0.3}, "t"),
                search.plot_param(study, "lr", "t", log=True), search.draw_search_loop()):
        assert fig.axes[0].get_title()
