"""mmcourse.data.world: attributes, the declared observation model, sampling, labels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmcourse.data import world as world_module
from mmcourse.data.bayes import bayes_accuracy
from mmcourse.data.world import (ATTRIBUTES, LABEL_RULES, MODALITIES, RINGING_MATERIALS, LabelRule, Scenes, World,
                                 WorldConfig, observation_model, register_label_rule)

N = 20000  # scenes for the frequency checks: 4 standard errors of p = 0.5 is 0.014


def _default_mentions() -> dict[str, float]:
    return dict(WorldConfig().mention_prob)


def test_sample_shapes_dtypes_and_ranges(world):
    scenes = world.sample(50, np.random.default_rng(0))
    assert len(scenes) == 50
    assert list(scenes.attrs) == list(ATTRIBUTES)
    for a, values in ATTRIBUTES.items():
        assert scenes.attrs[a].shape == (50,) and scenes.attrs[a].dtype == np.int64
        assert scenes.attrs[a].min() >= 0 and scenes.attrs[a].max() < len(values)
    assert set(scenes.events) == {e.name for e in world.events}
    assert all(v.dtype == bool and v.shape == (50,) for v in scenes.events.values())
    assert scenes.label.shape == (50,) and scenes.label.dtype == np.int64


def test_sample_batch_of_one_and_empty(world):
    one = world.sample(1, np.random.default_rng(0))
    assert len(one) == 1 and one.label.shape == (1,)
    assert len(world.sample(0, np.random.default_rng(0))) == 0


def test_sample_negative_n_raises(world):
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        world.sample(-1, np.random.default_rng(0))


def test_sample_is_deterministic_given_the_rng(world):
    a = world.sample(100, np.random.default_rng(7))
    b = world.sample(100, np.random.default_rng(7))
    c = world.sample(100, np.random.default_rng(8))
    for k in ATTRIBUTES:
        np.testing.assert_array_equal(a.attrs[k], b.attrs[k])
    for k in a.events:
        np.testing.assert_array_equal(a.events[k], b.events[k])
    assert any((a.attrs[k] != c.attrs[k]).any() for k in ATTRIBUTES)


def test_label_is_shape_times_ringing_or_muted(world):
    """Label = 2 * shape index + (1 if the material is muted); the class name says the same."""
    scenes = world.sample(500, np.random.default_rng(1))
    for i in range(len(scenes)):
        shape = ATTRIBUTES["shape"][scenes.attrs["shape"][i]]
        material = ATTRIBUTES["material"][scenes.attrs["material"][i]]
        ringing = material in RINGING_MATERIALS
        assert scenes.label[i] == 2 * scenes.attrs["shape"][i] + (0 if ringing else 1)
        assert world.class_names[scenes.label[i]] == f"{'ringing' if ringing else 'muted'} {shape}"
    assert len(world.class_names) == 10 == world.label_rule.num_classes


def test_attributes_are_uniform_and_events_follow_their_probabilities(world):
    scenes = world.sample(N, np.random.default_rng(2))
    for a, values in ATTRIBUTES.items():
        counts = np.bincount(scenes.attrs[a], minlength=len(values)) / N
        p = 1 / len(values)
        assert np.all(np.abs(counts - p) < 4 * math.sqrt(p * (1 - p) / N)), (a, counts)
    for e in world.events:
        freq = scenes.events[e.name].mean()
        assert abs(freq - e.prob) <= 4 * math.sqrt(e.prob * (1 - e.prob) / N), (e.name, freq)


def test_observation_model_declares_what_each_modality_reveals():
    config = WorldConfig()
    model = observation_model(config)
    assert tuple(model) == MODALITIES == tuple(sorted(MODALITIES))  # sorted keys
    (image,) = model["image"]
    assert image.prob == 1.0 and set(image.reveals) == {"shape", "colour", "size", "position"}
    (audio,) = model["audio"]
    assert audio.prob == config.strike_prob and set(audio.reveals) == {"material", "size"}
    assert {e.reveals: e.prob for e in model["text"]} == {(a,): p for a, p in config.mention_prob.items()}


def test_visible_follows_the_events(world):
    scenes = world.sample(300, np.random.default_rng(3))
    image = world.visible(scenes, "image")
    assert set(image) == {"shape", "colour", "size", "position"}  # never material
    assert all(v.all() for v in image.values())
    audio = world.visible(scenes, "audio")
    assert set(audio) == {"material", "size"}
    np.testing.assert_array_equal(audio["material"], scenes.events["audio.strike"])
    text = world.visible(scenes, "text")
    for a in ATTRIBUTES:
        np.testing.assert_array_equal(text[a], scenes.events[f"text.{a}"])


def test_visible_unknown_modality_raises(world):
    scenes = world.sample(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown modality 'video'; valid: \['audio', 'image', 'text'\]"):
        world.visible(scenes, "video")


def test_scenes_select_by_slice_index_array_and_mask(world):
    scenes = world.sample(10, np.random.default_rng(4))
    mask = scenes.label % 2 == 0
    for index, expected in ((slice(2, 5), 3), (np.array([0, 9, 3]), 3), (mask, int(mask.sum()))):
        part = scenes[index]
        assert isinstance(part, Scenes) and len(part) == expected
        np.testing.assert_array_equal(part.label, scenes.label[index])
        np.testing.assert_array_equal(part.attrs["shape"], scenes.attrs["shape"][index])
        np.testing.assert_array_equal(part.events["audio.strike"], scenes.events["audio.strike"][index])


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=30), "image_size must be a multiple of 4 and >= 16, got 30"),
    (dict(image_size=12), "image_size must be a multiple of 4 and >= 16, got 12"),
    (dict(strike_prob=1.5), "probability for 'strike_prob' must be in \\[0, 1\\], got 1.5"),
    (dict(strike_prob=float("nan")), "probability for 'strike_prob' must be in \\[0, 1\\], got nan"),
    (dict(label_rule="colour"), "unknown label_rule 'colour'; valid: \\[.*'shape_and_sound', 'size_and_material'\\]"),   # .*: modules such as mmcourse.frontiers register their own rules
])
def test_bad_world_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)


def test_mention_prob_must_cover_every_attribute():
    probs = _default_mentions()
    del probs["material"]
    with pytest.raises(ValueError, match="mention_prob must give one probability per attribute .* got keys"):
        WorldConfig(mention_prob=probs)
    with pytest.raises(ValueError, match="probability for 'colour' must be in \\[0, 1\\], got -0.1"):
        WorldConfig(mention_prob={**_default_mentions(), "colour": -0.1})


def test_valid_edge_probabilities_are_accepted():
    config = WorldConfig(image_size=16, strike_prob=0.0, mention_prob={a: 1.0 for a in ATTRIBUTES})
    scenes = World(config).sample(100, np.random.default_rng(0))
    assert not scenes.events["audio.strike"].any()
    assert all(scenes.events[f"text.{a}"].all() for a in ATTRIBUTES)


def test_data_package_exports_what_it_lists():
    import mmcourse.data as data

    missing = [name for name in data.__all__ if not hasattr(data, name)]
    assert not missing


SHAPE_ONLY = LabelRule("shape_only", ATTRIBUTES["shape"], lambda attrs: attrs["shape"])


@pytest.fixture
def label_rules(monkeypatch):
    """A private copy of the rule registry, so registering here leaks into no other test."""
    rules = dict(LABEL_RULES)
    monkeypatch.setattr(world_module, "LABEL_RULES", rules)
    return rules


def test_registered_label_rule_drives_labels_and_bayes_limits(label_rules):
    assert register_label_rule(SHAPE_ONLY) is SHAPE_ONLY
    world = World(WorldConfig(label_rule="shape_only"))
    scenes = world.sample(100, np.random.default_rng(0))
    np.testing.assert_array_equal(scenes.label, scenes.attrs["shape"])
    assert world.class_names == ATTRIBUTES["shape"]
    # By hand: the image always shows the shape; text names it with p = 0.4, else a 1-in-5 guess;
    # audio never reveals it.
    assert bayes_accuracy(world, ["image"]) == pytest.approx(1.0, abs=1e-12)
    assert bayes_accuracy(world, ["text"]) == pytest.approx(0.4 + 0.6 * 0.2, abs=1e-12)
    assert bayes_accuracy(world, ["audio"]) == pytest.approx(0.2, abs=1e-12)


def test_registering_a_taken_name_raises_unless_replacing(label_rules):
    register_label_rule(SHAPE_ONLY)
    register_label_rule(SHAPE_ONLY)  # the same rule again is harmless
    other = LabelRule("shape_only", ("any",), lambda attrs: np.zeros_like(attrs["shape"]))
    with pytest.raises(ValueError, match="label rule 'shape_only' is already registered; pass replace=True"):
        register_label_rule(other)
    register_label_rule(other, replace=True)
    assert label_rules["shape_only"] is other


def test_unregistered_rule_is_unknown(label_rules):
    with pytest.raises(ValueError, match="unknown label_rule 'shape_only'"):
        WorldConfig(label_rule="shape_only")
