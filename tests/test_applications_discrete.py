"""mmcourse.applications.discrete: the enumerated joint and every subset's Bayes table against a brute force
written here, against a Monte-Carlo sample, and bad declarations refused with a clear message."""
from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest

from mmcourse.applications import DiscreteWorld, Variable, deterministic
from mmcourse.metrics import average_precision, binary_brier, roc_auc

# A small surveillance-like network: an event type, the binary label it implies, two sensors that depend on
# the event, a third that depends on the event and a condition.
EVENT = Variable("event", ("none", "fall", "glass"), (), np.array([0.7, 0.2, 0.1]))
LABEL = deterministic("abnormal", ("no", "yes"), ("event",), lambda e: (e > 0).astype(int))
NIGHT = Variable("night", ("day", "night"), (), np.array([0.6, 0.4]))
VIDEO = Variable("video", ("quiet", "fall", "dark"), ("event", "night"),
                 np.array([[[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]],
                           [[0.3, 0.7, 0.0], [0.0, 0.2, 0.8]],
                           [[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]]))
AUDIO = Variable("audio", ("quiet", "crash"), ("event",), np.array([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9]]))
OFFSET = Variable("offset", tuple("0123"), (), np.full(4, 0.25))


def small_world() -> DiscreteWorld:
    return DiscreteWorld([EVENT, LABEL, NIGHT, VIDEO, AUDIO], "abnormal",
                         {"video": ("video", "night"), "audio": ("audio",)}, nuisance=[OFFSET])


def brute_force(world: DiscreteWorld, sensors):
    """P(observation, label) by looping over every combination of values and multiplying CPT entries."""
    names = list(world.variables)
    seen = sorted({v for m in sensors for v in world.observes[m]})
    joint = defaultdict(lambda: np.zeros(2))
    for combo in itertools.product(*(range(world.variables[n].card) for n in names)):
        value = dict(zip(names, combo))
        p = 1.0
        for n in names:
            v = world.variables[n]
            p *= v.cpt[tuple(value[q] for q in v.parents) + (value[n],)]
        if p > 0:
            joint[tuple(value[n] for n in seen)][value["abnormal"]] += p
    return np.array(list(joint.values()))                                # (O, 2)


def test_states_sum_to_one_and_drop_impossible_ones():
    values, prob = small_world().states()
    assert prob.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(prob) < 3 * 2 * 2 * 3 * 2 and (prob > 0).all()          # impossible (video, night) pairs dropped
    assert set(values) == {"event", "abnormal", "night", "video", "audio"}


@pytest.mark.parametrize("sensors", [(), ("audio",), ("video",), ("audio", "video")])
def test_every_subset_table_equals_brute_force(sensors):
    world = small_world()
    table, ref = world.table(sensors), brute_force(world, sensors)
    assert table.accuracy() == pytest.approx(ref.max(1).sum(), abs=1e-12)
    s = ref[:, 1] / ref.sum(1)
    assert table.brier() == pytest.approx((ref.sum(1) * s * (1 - s)).sum(), abs=1e-12)
    # AUROC by all pairs of observations (ties one half), from the brute-force joint.
    diff = s[:, None] - s[None, :]
    pairs = ref[:, 1][:, None] * ref[:, 0][None, :]
    auroc = ((diff > 0) * pairs + 0.5 * (diff == 0) * pairs).sum() / (ref[:, 1].sum() * ref[:, 0].sum())
    assert table.auroc() == pytest.approx(auroc, abs=1e-12)


def test_monte_carlo_agrees_with_the_exact_values():
    world = small_world()
    cases = world.sample(100000, np.random.default_rng(0))
    assert set(cases) == {"event", "abnormal", "night", "video", "audio", "offset"}
    y = cases["abnormal"]
    assert y.mean() == pytest.approx(0.3, abs=0.006)                   # 4 SE of 100,000 draws
    for sensors in world.subsets()[1:]:
        post = world.posterior(cases, sensors)                          # (N, 2)
        assert post.shape == (100000, 2) and np.allclose(post.sum(1), 1)
        table = world.table(sensors)
        assert roc_auc(post[:, 1], y) == pytest.approx(table.auroc(), abs=0.01)
        assert average_precision(post[:, 1], y) == pytest.approx(table.average_precision(), abs=0.01)
        assert binary_brier(post[:, 1], y) == pytest.approx(table.brier(), abs=0.005)
        assert (post.argmax(1) == y).mean() == pytest.approx(table.accuracy(), abs=0.006)


def test_sampling_is_seeded_and_batch_one_works():
    world = small_world()
    a, b = world.sample(50, np.random.default_rng(3)), world.sample(50, np.random.default_rng(3))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    one = world.sample(1, np.random.default_rng(0))
    assert world.posterior(one, ("audio",)).shape == (1, 2)


def test_more_sensors_never_lose_and_the_empty_subset_is_the_prior():
    world = small_world()
    assert world.table(()).average_precision() == pytest.approx(0.3)
    assert world.table(()).auroc() == pytest.approx(0.5)
    values = {s: world.table(s).auroc() for s in world.subsets()}
    assert values[("audio", "video")] >= max(values[("audio",)], values[("video",)])


@pytest.mark.parametrize("build, message", [
    (lambda: DiscreteWorld([LABEL], "abnormal", {}), r"parents \['event'\] must be declared before it"),
    (lambda: DiscreteWorld([EVENT, EVENT], "event", {}), "declared twice"),
    (lambda: DiscreteWorld([Variable("x", ("a", "b"), (), np.array([0.5, 0.6]))], "x", {}), "sum to 1"),
    (lambda: DiscreteWorld([Variable("x", ("a", "b"), (), np.array([1.0]))], "x", {}), r"CPT shape \(1,\)"),
    (lambda: DiscreteWorld([EVENT, LABEL], "abnormal", {"cam": ("colour",)}), "unknown variables"),
    (lambda: DiscreteWorld([EVENT, LABEL], "abnormal", {"cam": ("abnormal",)}), "observes the label"),
    (lambda: DiscreteWorld([EVENT, LABEL], "abnormal", {}, nuisance=[LABEL]), "must have no parents"),
    (lambda: DiscreteWorld([EVENT, deterministic("y", ("a",), ("event",), lambda e: e)], "y", {}),
     "outside"),
])
def test_bad_declarations_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_or_single_string_sensors_are_refused():
    world = small_world()
    with pytest.raises(TypeError, match="single str"):
        world.table("audio")
    with pytest.raises(ValueError, match="unknown sensors"):
        world.table(("lidar",))


def test_a_subgroup_table_is_the_brute_force_joint_restricted_and_renormalised():
    world = small_world()
    t = world.table(("audio",), given={"night": 1})
    names = list(world.variables)
    joint = defaultdict(lambda: np.zeros(2))
    for combo in itertools.product(*(range(world.variables[n].card) for n in names)):
        value = dict(zip(names, combo))
        if value["night"] != 1:
            continue
        p = np.prod([world.variables[n].cpt[tuple(value[q] for q in world.variables[n].parents) + (value[n],)]
                     for n in names])
        joint[value["audio"]][value["abnormal"]] += p
    ref = np.array([joint[k] for k in sorted(joint)])
    assert np.allclose(t.joint, ref / ref.sum(), atol=1e-12)
    with pytest.raises(ValueError, match="has values 0..1"):
        world.table(("audio",), given={"night": 2})
