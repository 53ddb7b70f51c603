"""Chapter 13's driving world: its Bayes limits against brute force and Monte-Carlo, its design constraints,
renders that show each observed variable unambiguously, the reliability gate, and a short training run."""
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from mmcourse.applications import driving as d
from mmcourse.config import get_profile

WORLD = d.driving_world()
SMALL = replace(d.driving_config("smoke"), dim=8, hidden=16, camera_widths=(4, 8, 8))


def brute_force_accuracy(world, sensors):
    """Bayes accuracy by enumerating every assignment of every variable with itertools and the CPTs."""
    names = list(world.variables)
    observed = sorted({v for m in sensors for v in world.observes[m]})
    joint = {}                                                      # (observation, label) -> probability
    for values in itertools.product(*[range(world.variables[n].card) for n in names]):
        x = dict(zip(names, values))
        p = 1.0
        for n in names:
            v = world.variables[n]
            p *= v.cpt[tuple(x[q] for q in v.parents) + (x[n],)]
        if p > 0:
            key = (tuple(x[o] for o in observed), x[world.label])
            joint[key] = joint.get(key, 0.0) + p
    best = {}
    for (obs, _), p in joint.items():
        best[obs] = max(best.get(obs, 0.0), p)
    return sum(best.values())


def test_bayes_table_equals_brute_force_enumeration():
    for subset in WORLD.subsets():
        assert abs(WORLD.table(subset).accuracy() - brute_force_accuracy(WORLD, subset)) < 1e-12, subset


def test_bayes_accuracy_against_monte_carlo():
    cases = WORLD.sample(100_000, np.random.default_rng(0))
    for subset in WORLD.subsets()[1:]:
        correct = WORLD.posterior(cases, subset).argmax(1) == cases["obstacle"]
        exact = WORLD.table(subset).accuracy()
        assert abs(correct.mean() - exact) < 4 * np.sqrt(exact * (1 - exact) / len(correct)) + 1e-3, subset
    fog = cases["fog"] == 1
    correct = WORLD.posterior(cases, d.SENSORS).argmax(1) == cases["obstacle"]
    assert abs(correct[fog].mean() - d.condition_accuracy(WORLD, d.SENSORS, "fog", 1)) < 0.012


def test_world_design_constraints():
    acc = d.bayes_accuracies(WORLD)
    values = sorted(acc.values())
    assert min(np.diff(values)) > 0.005, "every sensor subset has its own Bayes accuracy"
    assert acc[d.SENSORS] < 0.99
    assert max(acc[(m,)] for m in d.SENSORS) < acc[d.SENSORS] - 0.05, "no single sensor within 5 points of all"
    for subset in WORLD.subsets():                                  # no tie decides a Bayes answer
        top = np.sort(WORLD.table(subset).posterior, 1)
        assert (top[:, -1] - top[:, -2] > 1e-9).all(), subset
    assert d.condition_accuracy(WORLD, d.SENSORS, "fog", 1) < d.condition_accuracy(WORLD, d.SENSORS, "fog", 0)


def test_renders_show_each_observed_variable_unambiguously():
    """Hand-written decoders read every observed variable back from its render (>= 99 %; here all)."""
    scenes = d.make_scenes(WORLD, 600, seed=3)
    c, x = scenes.cases, scenes.inputs
    img = x["camera"].numpy()                                       # (N, 3, S, S)
    fog = img.mean((1, 2, 3)) > 0.5
    assert (fog == (c["fog"] == 1)).mean() >= 0.99
    background = np.where(fog, d.FOG_GREY, d.ROAD)[:, None, None]
    mask = np.abs(img - background[:, None]).max(1) > 0.3           # (N, S, S) object pixels
    width = mask.any(1).sum(1)                                       # columns the object spans
    seen = np.select([~mask.any((1, 2)), width >= 13, width <= 4], [3, 0, 1], 2)   # nothing, car, pedestrian, disc
    assert (seen == c["camera_sees"]).mean() >= 0.99
    lid = x["lidar"].numpy()
    beams = (lid < 0.8).sum(1)
    footprint = np.select([beams >= 8, beams >= 2], [0, 1], 2)
    assert (footprint == c["lidar_footprint"]).mean() >= 0.99
    assert ((lid.min(1) > 0.42) == (c["lidar_range"] == 1)).mean() >= 0.99
    rad = x["radar"].numpy().reshape(-1, d.RADAR_POINTS, 3)        # (N, points, (range, speed, amplitude))
    assert ((rad[:, 1, 2] > 0) == (c["radar_state"] == 1)).mean() >= 0.99
    assert ((rad[:, 0, 0] > 0.45) == (c["radar_range"] == 1)).mean() >= 0.99
    speed = np.abs(rad[:, 0, 1:2] - np.asarray(d.RADAR_SPEEDS)[None]).argmin(1)
    assert (speed == c["radar_speed"]).mean() >= 0.99


def test_same_seed_same_scenes_and_shapes():
    a, b = d.make_scenes(WORLD, 5, seed=7), d.make_scenes(WORLD, 5, seed=7)
    for m in d.SENSORS:
        assert torch.equal(a.inputs[m], b.inputs[m])
    assert torch.equal(a.labels, b.labels)
    assert a.inputs["camera"].shape == (5, 3, 32, 32) and a.inputs["lidar"].shape == (5, d.LIDAR_BEAMS)
    assert a.inputs["radar"].shape == (5, 3 * d.RADAR_POINTS)
    assert not torch.equal(d.make_scenes(WORLD, 5, seed=8).inputs["camera"], a.inputs["camera"])


def test_bad_input_raises_a_clear_error():
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        d.make_scenes(WORLD, 0, seed=0)
    cases = WORLD.sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 24 pixels"):
        d.render_camera(cases, np.random.default_rng(0), size=16)
    with pytest.raises(ValueError, match="lack the variables"):
        d.render_lidar({k: v for k, v in cases.items() if k != "lidar_start"}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown fusion"):
        d.make_fusion("mean", SMALL)
    model = d.make_model("reliability", SMALL, dropout=True)
    scenes = d.make_scenes(WORLD, 4, seed=0)
    with pytest.raises(ValueError, match="non-empty subset"):
        d.predict_with(model, scenes, ("sonar",), "cpu")
    with pytest.raises(TypeError, match="single str"):
        d.predict_with(model, scenes, "camera", "cpu")
    with pytest.raises(ValueError, match="unknown variable"):
        d.condition_accuracy(WORLD, d.SENSORS, "rain", 1)
    with pytest.raises(ValueError, match="no driving settings"):
        d.driving_config(get_profile("smoke", name="tiny"))


def test_reliability_gate_matches_by_hand_and_ignores_flagged_sensors():
    torch.manual_seed(0)
    fusion = d.ReliabilityGatedFusion({m: 5 for m in d.SENSORS}, 7)
    feats = {m: torch.randn(4, 5) for m in d.SENSORS}
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    w = torch.stack([torch.sigmoid(fusion.gate[m](feats[m])).squeeze(1) for m in d.SENSORS], 1) * present
    z = torch.stack([fusion.project[m](feats[m]) for m in d.SENSORS], 1)          # (B, M, H)
    assert torch.allclose(fusion(feats, present), (w.unsqueeze(-1) * z).sum(1), atol=1e-6)
    assert torch.allclose(fusion.weights(feats, present), w)
    junk = {m: torch.where(present[:, [j]], f, torch.full_like(f, float("nan"))) for j, (m, f) in enumerate(feats.items())}
    assert torch.allclose(fusion(junk, present), fusion(feats, present), atol=1e-6), "a flagged sensor leaked"
    assert fusion({m: f[:1] for m, f in feats.items()}).shape == (1, 7)


def test_model_shapes_batch_one_and_failure_patterns():
    model = d.make_model("reliability", SMALL, dropout=True)
    scenes = d.make_scenes(WORLD, 3, seed=0)
    model.eval()
    one = {m: x[:1] for m, x in scenes.inputs.items()}
    assert model(one).shape == (1, len(d.LABELS))
    for subset in WORLD.subsets()[1:]:
        assert d.predict_with(model, scenes, subset, "cpu").shape == (3,)
    assert d.gate_weights(model, scenes, "cpu").shape == (3, 3)


def test_bayes_on_scores_the_exact_posterior():
    scenes = d.make_scenes(WORLD, 400, seed=2)
    acc, se = d.bayes_on(WORLD, scenes, ("lidar",))
    correct = WORLD.posterior(scenes.cases, ("lidar",)).argmax(1) == scenes.cases["obstacle"]
    assert acc == correct.mean() and 0 < se < 0.05


def test_short_training_run_lowers_the_loss():
    scenes = d.make_scenes(WORLD, 1024, seed=0)
    config = replace(SMALL, epochs=3, batch_size=32, lr=1e-2)
    torch.manual_seed(0)
    history = d.fit(d.make_model("reliability", config, dropout=True), scenes, config, "cpu")
    assert history.train_loss[-1] < history.train_loss[0] - 0.1, history.train_loss
