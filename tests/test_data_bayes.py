"""mmcourse.data.bayes: exact Bayes limits against a brute force written here,
against hand-derived numbers, and against a Monte-Carlo estimate."""
from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from mmcourse.data.bayes import all_subsets, bayes_accuracy, bayes_classifier, bayes_table
from mmcourse.data.world import ATTRIBUTES, World, WorldConfig

RINGING = ("metal", "glass")
MC_SCENES = 60000  # Monte-Carlo sample: 4 standard errors of p = 0.5 is 0.008


def brute_force_bayes(world: World) -> dict[tuple[str, ...], float]:
    """Bayes accuracy of every modality subset by plain enumeration.

    Loops over every attribute combination and every outcome of every event
    (impossible outcomes get probability 0), works out by hand what each
    modality observes from ``world.observation``, accumulates P(observation, label)
    and sums, over observations, the most probable label's mass.
    """
    modalities = sorted(world.observation)
    events = [e for m in modalities for e in world.observation[m]]
    subsets = [s for r in range(len(modalities) + 1) for s in itertools.combinations(modalities, r)]
    joint = {s: defaultdict(float) for s in subsets}  # subset -> {(observation, label): probability}
    names = list(ATTRIBUTES)
    for values in itertools.product(*(ATTRIBUTES[a] for a in names)):
        scene = dict(zip(names, values))
        p_attrs = 1.0
        for a in names:
            p_attrs /= len(ATTRIBUTES[a])
        label = 2 * ATTRIBUTES["shape"].index(scene["shape"]) + (0 if scene["material"] in RINGING else 1)
        for outcome in itertools.product((False, True), repeat=len(events)):
            p = p_attrs
            for e, hit in zip(events, outcome):
                p *= e.prob if hit else 1.0 - e.prob
            fired = {e.name for e, hit in zip(events, outcome) if hit}
            seen = {}
            for m in modalities:
                revealed = {a for e in world.observation[m] if e.name in fired for a in e.reveals}
                seen[m] = tuple(scene[a] if a in revealed else None for a in names)
            for s in subsets:
                joint[s][(tuple(seen[m] for m in s), label)] += p
    out = {}
    for s in subsets:
        best = defaultdict(float)  # observation -> max over labels
        for (obs, _), p in joint[s].items():
            best[obs] = max(best[obs], p)
        out[s] = sum(best.values())
    return out


# A non-default world: other probabilities, including certain (1) and impossible (0) events.
OTHER_CONFIG = WorldConfig(
    mention_prob={"shape": 0.25, "colour": 0.0, "size": 1.0, "position": 0.5, "material": 0.35},
    strike_prob=0.55,
)


@pytest.fixture(scope="module")
def brute_default(world):
    return brute_force_bayes(world)


def test_brute_force_equals_bayes_accuracy_for_every_subset(world, brute_default):
    assert set(brute_default) == set(all_subsets())
    for subset, expected in brute_default.items():
        assert bayes_accuracy(world, subset) == pytest.approx(expected, abs=1e-12), subset


def test_brute_force_agrees_for_a_non_default_world():
    world = World(OTHER_CONFIG)
    brute = brute_force_bayes(world)
    for subset, expected in brute.items():
        assert bayes_accuracy(world, subset) == pytest.approx(expected, abs=1e-12), subset
    # The world really is different: text alone is far weaker than with the default mentions.
    assert brute[("text",)] < 0.3


def test_hand_derived_values(world):
    """Worked out on paper from the default world (label = shape x ringing/muted, 10 classes):

    - image: the shape is seen, ringing is a coin flip -> 1 * 0.5 = 0.5
    - image+text: ringing known when the material is mentioned (0.7) -> 0.7 + 0.3 * 0.5 = 0.85
    - text: shape mentioned 0.4, material 0.7: both 0.28 * 1 + shape only 0.12 * 0.5
      + material only 0.42 * 0.2 + neither 0.18 * 0.1 = 0.442
    - audio: a strike (0.8) reveals ringing but never the shape -> 0.8 * 0.2 + 0.2 * 0.1 = 0.18
    - all: ringing unknown only with no strike and no mention (0.2 * 0.3 = 0.06) -> 0.94 + 0.06 * 0.5 = 0.97
    - nothing: the prior, 1 / 10.
    Tolerance 1e-9: the exact sums differ from these decimals only by float rounding (~1e-15).
    """
    expected = {("image",): 0.5, ("image", "text"): 0.85, ("text",): 0.442, ("audio",): 0.18,
                ("audio", "image", "text"): 0.97, (): 0.1}
    for subset, value in expected.items():
        assert bayes_accuracy(world, subset) == pytest.approx(value, abs=1e-9), subset


@pytest.mark.parametrize("config", [WorldConfig(), OTHER_CONFIG], ids=["default", "other"])
def test_monte_carlo_accuracy_of_the_bayes_rule_matches_the_exact_value(config):
    world = World(config)
    scenes = world.sample(MC_SCENES, np.random.default_rng(123))
    for subset in all_subsets():
        rule = bayes_classifier(world, subset)
        pred = rule.predict(scenes)
        assert pred.shape == (MC_SCENES,) and pred.dtype == np.int64
        mc = float((pred == scenes.label).mean())
        se = math.sqrt(rule.accuracy * (1 - rule.accuracy) / MC_SCENES)
        assert abs(mc - rule.accuracy) < 4 * se, (subset, mc, rule.accuracy)


def test_adding_a_modality_never_lowers_the_limit(world):
    table = bayes_table(world)
    for small, large in itertools.product(table, table):
        if set(small) < set(large):
            assert table[large] >= table[small] - 1e-12, (small, large)


def test_bayes_table_keys_and_subset_order(world):
    assert all_subsets() == [(), ("audio",), ("image",), ("text",), ("audio", "image"), ("audio", "text"),
                             ("image", "text"), ("audio", "image", "text")]
    assert list(bayes_table(world)) == all_subsets()


def test_subset_order_and_duplicates_do_not_matter(world):
    assert bayes_accuracy(world, ["text", "image", "text"]) == bayes_accuracy(world, ("image", "text"))
    assert bayes_classifier(world, ["text", "image"]).modalities == ("image", "text")


def test_predict_batch_of_one(world):
    scenes = world.sample(1, np.random.default_rng(0))
    assert bayes_classifier(world, ["image"]).predict(scenes).shape == (1,)


def test_unknown_modality_raises(world):
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]; valid: \['audio', 'image', 'text'\]"):
        bayes_accuracy(world, ["image", "video"])


def test_a_bare_string_subset_is_rejected_clearly(world):
    with pytest.raises(TypeError, match="single str"):
        bayes_accuracy(world, "image")
