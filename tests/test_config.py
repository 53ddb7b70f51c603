"""mmcourse.config: profiles, how a notebook picks one, and every stage's settings per profile."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from mmcourse.config import (JOINT, PROFILES, STAGE1, JointConfig, Stage1Config, Stage3Config, get_profile,
                             joint_config, pipeline_config, stage1_config, stage3_config)
from mmcourse.data.dataset import Split
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


# ----------------------------------------------------------------------------- one resolver

def test_get_profile_accepts_a_profile_and_returns_it_unchanged():
    custom = get_profile("smoke", epochs=1)
    assert get_profile(custom) is custom
    assert get_profile(custom, strict=True) == replace(custom, strict=True)


def test_get_profile_rejects_other_types():
    with pytest.raises(TypeError, match="profile must be a Profile, a profile name or None, got int"):
        get_profile(3)


# ----------------------------------------------------------------------------- the chapters' stage settings

@pytest.mark.parametrize("resolve", [stage1_config, joint_config, stage3_config])
def test_every_profile_has_stage_settings_and_an_unknown_one_is_named(resolve):
    for name in PROFILES:
        assert resolve(name) == resolve(PROFILES[name])
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        resolve("huge")


def test_stage_tables_without_a_profile_entry_are_named(monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", replace(PROFILES["smoke"], name="tiny"))
    with pytest.raises(ValueError, match=r"no stage-2 settings for profile 'tiny'; known: \['smoke'"):
        joint_config("tiny")


def test_stage_sizes_are_capped_by_the_data_they_read():
    small = get_profile("smoke", split=Split(train=512, dev=128, test=64))
    assert stage1_config(small).train_size == 512
    assert joint_config(small).train_size == 512          # chapter 07 trains on stage 1's pairs
    assert joint_config("default").train_size == 20000 and joint_config("smoke").train_size == 3000


def test_chapter_07_recipe():
    # The values of notebook 07's training cell: batch 128, lr 1e-3, auxiliary weight 0.25, dropout 0.5.
    cfg = joint_config("default")
    assert (cfg.batch_size, cfg.lr, cfg.aux_weight, cfg.modality_dropout, cfg.hidden) == (128, 1e-3, 0.25, 0.5, 128)
    assert [joint_config(p).epochs for p in PROFILES] == [max(1, PROFILES[p].epochs // 5) for p in PROFILES]


@pytest.mark.parametrize("make, message", [
    (lambda: Stage1Config(train_size=0, epochs=1), "Stage1Config.train_size must be a positive int, got 0"),
    (lambda: JointConfig(train_size=10, epochs=1, batch_size=True), "JointConfig.batch_size must be a positive int"),
    (lambda: JointConfig(train_size=10, epochs=1, modality_dropout=1.0),
     "JointConfig.modality_dropout must be a number in \\[0, 1\\), got 1.0"),
    (lambda: Stage3Config(100, 10, 10, 5, method="prefix"), "Stage3Config.method must be one of"),
    (lambda: Stage3Config(79, 10, 10, 5), "Stage3Config.train_size \\(79\\) must hold at least 8 classes x per_class"),
    (lambda: Stage3Config(100, 10, 10, 5, eval_size=0), "Stage3Config.eval_size must be a positive int, got 0"),
])
def test_invalid_stage_settings_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ----------------------------------------------------------------------------- the pipeline's settings

# The flat PipelineConfig of main before the settings were nested (asdict of pipeline_config(p),
# printed on main at commit 5774374): the pipeline must run with exactly these numbers.
FLAT = {
    "smoke": {'image_size': 32, 'dev_size': 300, 'test_size': 500, 'eval_size': 300, 'stage1_pairs': 1500,
              'stage1_epochs': 1, 'stage1_batch': 128, 'stage1_lr': 0.002, 'stage1_warmup': 3, 'joint_train': 1500,
              'joint_epochs': 1, 'joint_batch': 64, 'joint_lr': 0.002, 'joint_dropout': 0.25, 'aux_weight': 0.1,
              'adapt_method': 'lora', 'adapt_per_class': 10, 'adapt_pool': 400, 'adapt_steps': 40, 'adapt_batch': 64,
              'adapt_lr': 0.003, 'adapt_dropout': 0.3, 'evals': 2, 'checkpoint_every': 5, 'compile': 'auto'},
    "default": {'image_size': 32, 'dev_size': 1000, 'test_size': 2000, 'eval_size': 500, 'stage1_pairs': 10000,
                'stage1_epochs': 3, 'stage1_batch': 256, 'stage1_lr': 0.002, 'stage1_warmup': 20,
                'joint_train': 10000, 'joint_epochs': 2, 'joint_batch': 64, 'joint_lr': 0.002, 'joint_dropout': 0.25,
                'aux_weight': 0.1, 'adapt_method': 'lora', 'adapt_per_class': 10, 'adapt_pool': 1000,
                'adapt_steps': 200, 'adapt_batch': 64, 'adapt_lr': 0.003, 'adapt_dropout': 0.3, 'evals': 4,
                'checkpoint_every': 50, 'compile': 'auto'},
    "full": {'image_size': 64, 'dev_size': 5000, 'test_size': 10000, 'eval_size': 2000, 'stage1_pairs': 60000,
             'stage1_epochs': 10, 'stage1_batch': 512, 'stage1_lr': 0.003, 'stage1_warmup': 100, 'joint_train': 60000,
             'joint_epochs': 4, 'joint_batch': 128, 'joint_lr': 0.002, 'joint_dropout': 0.25, 'aux_weight': 0.1,
             'adapt_method': 'lora', 'adapt_per_class': 20, 'adapt_pool': 5000, 'adapt_steps': 600,
             'adapt_batch': 128, 'adapt_lr': 0.003, 'adapt_dropout': 0.3, 'evals': 8, 'checkpoint_every': 200,
             'compile': 'auto'},
}
# Where each flat field went. The old eval_size served every stage; the old dev/test sizes also sized
# the downstream splits. (The stage-1 embedding width came from stage1_config: 64.)
MOVED = {"eval_size": ["pretrain.eval_size", "joint.eval_size", "adapt.eval_size"],
         "dev_size": ["dev_size", "adapt.dev_size"], "test_size": ["test_size", "adapt.test_size"],
         "stage1_pairs": ["pretrain.train_size"], "stage1_epochs": ["pretrain.epochs"],
         "stage1_batch": ["pretrain.batch_size"], "stage1_lr": ["pretrain.lr"],
         "stage1_warmup": ["pretrain.warmup_steps"],
         "joint_train": ["joint.train_size"], "joint_epochs": ["joint.epochs"], "joint_batch": ["joint.batch_size"],
         "joint_lr": ["joint.lr"], "joint_dropout": ["joint.modality_dropout"], "aux_weight": ["joint.aux_weight"],
         "adapt_method": ["adapt.method"], "adapt_per_class": ["adapt.per_class"], "adapt_pool": ["adapt.train_size"],
         "adapt_steps": ["adapt.steps"], "adapt_batch": ["adapt.batch_size"], "adapt_lr": ["adapt.lr"],
         "adapt_dropout": ["adapt.modality_dropout"]}


def _get(tree: dict, path: str):
    for key in path.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("name", list(FLAT))
def test_the_pipeline_runs_with_the_numbers_it_ran_with_before_nesting(name):
    nested = asdict(pipeline_config(name))
    for flat_field, value in FLAT[name].items():
        for path in MOVED.get(flat_field, [flat_field]):
            assert _get(nested, path) == value, (name, flat_field, path)
    assert nested["pretrain"]["embed_dim"] == stage1_config(name).embed_dim == 64
    assert nested["joint"]["hidden"] == 128                                     # was a literal in pipeline._stage2
    assert nested["profile"] == name and nested["seed"] == 0


def test_the_pipeline_changes_only_the_budget_of_the_chapters():
    for name in PROFILES:
        config = pipeline_config(name)
        assert config.pretrain.embed_dim == STAGE1[name].embed_dim
        assert config.joint.hidden == JOINT[name].hidden
        assert config.pretrain.train_size < STAGE1[name].train_size or name == "full"
        assert config.joint.lr > JOINT[name].lr and config.joint.modality_dropout < JOINT[name].modality_dropout


def test_pipeline_overrides_of_nested_settings():
    config = pipeline_config("smoke", seed=2, joint={"lr": 5e-4}, evals=3)
    base = pipeline_config("smoke")
    assert config.joint == replace(base.joint, lr=5e-4) and config.evals == 3 and config.seed == 2
    assert config.pretrain == base.pretrain and config.adapt == base.adapt
    whole = replace(base.adapt, steps=7)
    assert pipeline_config("smoke", adapt=whole).adapt is whole
    assert pipeline_config(get_profile("smoke")) == base


@pytest.mark.parametrize("overrides, error, message", [
    (dict(joint={"batch_size": 0}), ValueError, "JointConfig.batch_size must be a positive int, got 0"),
    (dict(adapt={"train_size": 10}), ValueError, "Stage3Config.train_size \\(10\\) must hold at least"),
    (dict(joint={"batch": 64}), ValueError, "joint: JointConfig has no field 'batch'"),
    (dict(evals=0), ValueError, "PipelineConfig.evals must be a positive int, got 0"),
    (dict(compile="yes"), ValueError, "PipelineConfig.compile must be 'auto', 'on' or 'off'"),
    (dict(pretrain=3), TypeError, "PipelineConfig.pretrain must be a Stage1Config, got int"),
])
def test_invalid_pipeline_overrides_name_the_setting(overrides, error, message):
    with pytest.raises(error, match=message):
        pipeline_config("smoke", **overrides)


def test_pipeline_config_json_round_trip_is_nested():
    config = pipeline_config("smoke", seed=1)
    stored = json.loads(json.dumps(asdict(config)))
    assert stored["joint"]["lr"] == config.joint.lr and stored["seed"] == 1
    assert any(row[0] == "3 adapt" and row[2] == "lora, 10" for row in config.rows())
