"""mmcourse.config: profiles and how a notebook picks one."""
from __future__ import annotations

import pytest

from mmcourse.config import PROFILES, get_profile
from mmcourse.data.world import WorldConfig


def test_default_profile_without_environment():
    assert get_profile().name == "default"


def test_environment_chooses_the_profile(monkeypatch):
    monkeypatch.setenv("MMCOURSE_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("full").name == "full"  # an explicit name wins


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid profiles: smoke, default, full"):
        get_profile("huge")


def test_unknown_profile_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMCOURSE_PROFILE", "tiny")
    with pytest.raises(ValueError, match="unknown profile 'tiny'"):
        get_profile()


def test_overrides_replace_fields_and_leave_the_table_alone():
    p = get_profile("smoke", epochs=1)
    assert p.epochs == 1 and p.split == PROFILES["smoke"].split
    assert PROFILES["smoke"].epochs == 2


def test_profiles_grow_from_smoke_to_full():
    smoke, default, full = (PROFILES[n] for n in ("smoke", "default", "full"))
    assert smoke.split.train < default.split.train < full.split.train
    assert smoke.budget_s <= default.budget_s <= full.budget_s
    assert not smoke.strict and default.strict and full.strict


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_world_is_a_valid_world_config(name):
    world = PROFILES[name].world
    assert isinstance(world, WorldConfig) and world.image_size == PROFILES[name].image_size
    # Only the image size varies: the observation model (hence every Bayes limit) is the same.
    assert world.mention_prob == WorldConfig().mention_prob and world.strike_prob == WorldConfig().strike_prob
