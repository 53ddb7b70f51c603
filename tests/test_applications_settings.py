"""The three application chapters' settings: one table per profile, read through mmcourse.config, and bad
values refused with the field's name."""
from __future__ import annotations

import dataclasses

import pytest

from mmcourse.applications import driving, medical, surveillance
from mmcourse.config import PROFILES, get_profile

SETTINGS = [(driving.DrivingConfig, driving.driving_config), (medical.MedicalConfig, medical.medical_config),
            (surveillance.SurveillanceConfig, surveillance.surveillance_config)]


@pytest.mark.parametrize("cls, lookup", SETTINGS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_profile_has_settings_and_bad_values_are_named(cls, lookup):
    for name in PROFILES:
        assert isinstance(lookup(name), cls)
    assert lookup(get_profile("smoke")).train < lookup("default").train
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.train must be a positive int, got 0"):
        dataclasses.replace(lookup("smoke"), train=0)
    with pytest.raises(ValueError, match="no .* settings for profile 'tiny'"):
        lookup(dataclasses.replace(get_profile("smoke"), name="tiny"))


@pytest.mark.parametrize("cls, field", [(driving.DrivingConfig, "modality_dropout"),
                                        (surveillance.SurveillanceConfig, "false_alarm_rate")])
def test_fractions_must_lie_in_zero_one(cls, field):
    lookup = dict((c, f) for c, f in SETTINGS)[cls]
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must be a number in \[0, 1\)"):
        dataclasses.replace(lookup("smoke"), **{field: 1.5})
