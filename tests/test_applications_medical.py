"""Chapter 12's world (mmcourse.applications.medical): Bayes values against brute force and Monte-Carlo, the renders
against a decoder, the world's design constraints, temperature scaling, subgroups, shapes, seeds, bad input, a
training run whose loss falls."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from mmcourse.applications import medical as med
from mmcourse.metrics import average_precision, binary_brier, reliability_bins, roc_auc

WORLD = med.medical_world()
CFG = med.MedicalWorldConfig()
SUBSETS = [("image",), ("record",), ("image", "record")]
OBSERVES = {"image": ("density", "lesion"), "record": ("age", "gene", "lab")}


def brute_force_joint():
    """{(density, age, gene, disease, lab, lesion): probability}, written out from the CPTs by hand."""
    joint = {}
    for d, a, g, y, l, s in itertools.product(range(2), range(3), range(2), range(2), range(3), range(3)):
        risk = (CFG.gene_risk if g else CFG.risk)[a]
        lesion = CFG.lesion_healthy if y == 0 else (CFG.lesion_fatty, CFG.lesion_dense)[d]
        lab = (CFG.lab_healthy, CFG.lab_disease)[y]
        joint[d, a, g, y, l, s] = (CFG.density[d] * CFG.age[a] * CFG.gene[g] * (risk if y else 1 - risk)
                                   * lab[l] * lesion[s])
    return joint


NAMES = ("density", "age", "gene", "disease", "lab", "lesion")


def brute_force_metrics(sensors):
    """AUROC by all pairs of observations, AP by integrating the PR curve in small steps, Brier, accuracy."""
    seen = [NAMES.index(v) for m in sensors for v in OBSERVES[m]]
    pos, neg = {}, {}
    for state, p in brute_force_joint().items():
        key = tuple(state[i] for i in seen)
        target = pos if state[3] else neg
        target[key] = target.get(key, 0.0) + p
        (neg if state[3] else pos).setdefault(key, 0.0)
    keys = sorted(pos)
    score = {k: pos[k] / (pos[k] + neg[k]) for k in keys}
    P, N = sum(pos.values()), sum(neg.values())
    auroc = sum(pos[i] * neg[j] * (1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0)
                for i in keys for j in keys) / (P * N)
    tied = {}                                           # tie groups: equal posteriors are ordered at random
    for k in keys:
        p, n = tied.get(round(score[k], 12), (0.0, 0.0))
        tied[round(score[k], 12)] = (p + pos[k], n + neg[k])
    ap, a, b, steps = 0.0, 0.0, 0.0, 4000
    for value in sorted(tied, reverse=True):
        m, r = sum(tied[value]), tied[value][0] / sum(tied[value])
        for t in (np.arange(steps) + 0.5) * m / steps:  # midpoint rule over the group's mass
            ap += (a + r * t) / (b + t) * r * (m / steps) / P
        a, b = a + tied[value][0], b + m
    brier = sum((pos[k] + neg[k]) * score[k] * (1 - score[k]) for k in keys)
    accuracy = sum(max(pos[k], neg[k]) for k in keys)
    return auroc, ap, brier, accuracy


@pytest.mark.parametrize("sensors", SUBSETS)
def test_bayes_table_equals_brute_force(sensors):
    t = WORLD.table(sensors)
    auroc, ap, brier, accuracy = brute_force_metrics(sensors)
    assert abs(t.auroc() - auroc) < 1e-12
    assert abs(t.average_precision() - ap) < 1e-5          # midpoint rule, 4000 steps per group
    assert abs(t.brier() - brier) < 1e-12
    assert abs(t.accuracy() - accuracy) < 1e-12


def test_monte_carlo_agrees_with_the_exact_values():
    cases = WORLD.sample(200_000, np.random.default_rng(1))
    y = cases["disease"]
    assert abs(y.mean() - WORLD.table(()).joint[:, 1].sum()) < 0.004     # SE of a 10 % rate: 0.0007
    for sensors in SUBSETS:
        t, s = WORLD.table(sensors), WORLD.posterior(cases, sensors)[:, 1]
        assert abs(roc_auc(s, y) - t.auroc()) < 0.01, sensors            # SE about 0.002 at this size
        assert abs(average_precision(s, y) - t.average_precision()) < 0.015, sensors
        assert abs(binary_brier(s, y) - t.brier()) < 0.002, sensors
    assert reliability_bins(s, y)["ece"] < 0.01                          # the posterior is calibrated


def test_world_design_constraints():
    auroc = {s: WORLD.table(s).auroc() for s in WORLD.subsets()}
    both = auroc[("image", "record")]
    assert len({round(v, 4) for v in auroc.values()}) == len(auroc), "every subset has its own Bayes AUROC"
    assert all(auroc[(m,)] < both - 0.05 for m in med.SENSORS), "no single sensor within 0.05 of both"
    assert both < 0.99
    prevalence = WORLD.table(()).joint[:, 1].sum()
    assert 0.08 < prevalence < 0.12, "about 10 % prevalence"
    assert WORLD.table(("image", "record")).accuracy() - (1 - prevalence) < 0.06, "accuracy barely above 'healthy'"
    dense, fatty = (WORLD.table(("image", "record"), given={"density": v}).auroc() for v in (1, 0))
    assert dense < fatty - 0.03, "dense tissue is the harder subgroup"


def test_renders_show_every_observed_value_unambiguously():
    """A decoder written here reads density, lesion and every record field back at >= 99 %."""
    cases = WORLD.sample(3000, np.random.default_rng(2))
    image = med.render_images(cases, seed=2)[:, 0]                                       # (N, S, S)
    level = image.flatten(1).median(1).values                                            # (N,)
    density = (level > sum(med.BACKGROUND) / 2).long().numpy()
    blurred = torch.nn.functional.avg_pool2d(image[:, None], 3, 1)[:, 0]                 # (N, S-2, S-2)
    peak = (blurred.flatten(1).max(1).values - level).numpy()                            # (N,)
    lesion = np.digitize(peak, [0.06, 0.2])                                              # none | faint | clear
    assert (density == cases["density"]).mean() >= 0.99
    assert (lesion == cases["lesion"]).mean() >= 0.99
    record = med.render_records(cases).numpy()                                           # (N, 3)
    assert (np.digitize(record[:, 0], [50, 65]) == cases["age"]).all()
    assert (np.digitize(record[:, 1], [10, 20]) == cases["lab"]).all()
    assert (record[:, 2] == cases["gene"]).all()


def test_subgroup_tables_recombine_into_the_whole():
    full = WORLD.table(("image",))
    parts = [WORLD.table(("image",), given={"density": v}) for v in range(2)]
    joint = np.zeros_like(full.joint)
    for v, t in enumerate(parts):
        joint[np.searchsorted(full.keys, t.keys)] += CFG.density[v] * t.joint
        assert abs(t.joint.sum() - 1) < 1e-12
    assert np.allclose(joint, full.joint, atol=1e-12)
    with pytest.raises(ValueError, match="unknown variable"):
        WORLD.table(("image",), given={"tissue": 0})
    with pytest.raises(ValueError, match="has values 0..1"):
        WORLD.table(("image",), given={"density": 2})


def test_bayes_posterior_has_zero_population_ece():
    for sensors in SUBSETS:
        assert med.population_ece(WORLD.table(sensors)) < 1e-12


def test_fit_temperature_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(20000, 2, generator=g) * 2                                        # (N, 2) calibrated logits
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g)[:, 0]
    fitted = med.fit_temperature(true * 3.0, labels)                                     # 3x overconfident
    assert abs(fitted - 3.0) < 0.15                                                      # sampling error of N
    grid = np.linspace(0.5, 6, 2201)                                                     # a reference by grid search
    best = grid[np.argmin([med.scaled_nll(true * 3.0, labels, t) for t in grid])]
    assert abs(fitted - best) < 0.005
    with pytest.raises(ValueError, match="expected logits"):
        med.fit_temperature(true[:, 0], labels)
    with pytest.raises(ValueError, match="finite"):
        med.fit_temperature(torch.full((3, 2), float("nan")), labels[:3])


def test_shapes_batch_one_seeds_and_bad_input():
    one = WORLD.sample(1, np.random.default_rng(0))
    assert med.render_images(one).shape == (1, 3, 32, 32) and med.render_records(one).shape == (1, 3)
    a, b = med.make_split(WORLD, 50, seed=4), med.make_split(WORLD, 50, seed=4)
    assert all(torch.equal(a.data.features[m], b.data.features[m]) for m in med.SENSORS)
    assert not torch.equal(a.data.features["image"], med.make_split(WORLD, 50, seed=5).data.features["image"])
    cfg = med.medical_config("smoke")
    for kind in med.MODELS:
        model = med.build_model(kind, cfg).eval()
        assert model(med.own_inputs(model, {m: x[:1] for m, x in a.data.features.items()})).shape == (1, 2)
    assert med.predict_logits(model, a, "cpu").shape == (50, 2)
    with pytest.raises(ValueError, match="cases lack the variables"):
        med.render_images({"density": one["density"]})
    with pytest.raises(ValueError, match="unknown model"):
        med.build_model("gated", cfg)
    with pytest.raises(ValueError, match="sum to 1"):
        med.medical_world(dataclasses.replace(CFG, density=(0.5, 0.6)))


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    cfg = dataclasses.replace(med.medical_config("smoke"), train=600, epochs=3, batch_size=50)
    split = med.make_split(WORLD, cfg.train, seed=3)
    history = med.train_model(med.build_model("concat", cfg), split, cfg, "cpu")
    assert history.train_loss[-1] < history.train_loss[0]


def test_the_figures_draw_and_label_their_axes():
    import matplotlib
    matplotlib.use("Agg")
    split = med.make_split(WORLD, 40, seed=6)
    model = med.build_model("concat", med.medical_config("smoke"))
    fig = med.draw_temperature_scaling(model, {m: x[:8] for m, x in split.data.features.items()})
    assert any("logits B×2" in t.get_text() for t in fig.axes[0].texts)    # the shape read from a forward pass
    p = med.positive_probability(med.predict_logits(model, split, "cpu"))
    ax = med.plot_reliability({"model": (p, split.labels)}, title="t").axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and "ECE" in ax.get_legend().get_texts()[1].get_text()
    with pytest.raises(ValueError, match="label_smoothing"):
        med.train_model(model, split, med.medical_config("smoke"), "cpu", label_smoothing=1.0)
