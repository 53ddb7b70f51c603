"""Profiles, and every stage's settings in each profile: one parameter sizes every notebook.

| profile | where | budget per notebook |
|---|---|---|
| ``smoke`` | CI, 2 CPU cores | <= 60 s, code paths only, loose checks |
| ``default`` | a laptop CPU | <= 5 min, reaches the stated targets |
| ``full`` | one GPU | <= 10 min, 64x64 images, more data |

Notebooks read the profile name from their ``parameters`` cell (which falls
back to ``$MMCOURSE_PROFILE``); :func:`get_profile` turns it into a :class:`Profile`.
Each stage has one frozen settings class and one table of it per profile:

- stage 1, pretraining (chapter 06): :class:`Stage1Config`, ``STAGE1``, :func:`stage1_config`;
- stage 2, joint training (chapter 07): :class:`JointConfig`, ``JOINT``, :func:`joint_config`;
- stage 3, task adaptation (chapter 08): :class:`Stage3Config`, ``STAGE3``, :func:`stage3_config`;
- the three stages as one run (chapter 10, :mod:`mmcourse.pipeline`): :class:`PipelineConfig`,
  ``PIPELINE``, :func:`pipeline_config`, whose stage settings are the chapters' with a shorter
  budget, derived from them in one place (``_PIPELINE_BUDGET``).

This module imports only the data package, so every other module can import it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .checks import check_int, check_probability
from .data.dataset import Split
from .data.world import SHAPE_AND_SOUND, SIZE_AND_MATERIAL, WorldConfig

PROFILE_ENV = "MMCOURSE_PROFILE"
MAIN_TASK = SHAPE_AND_SOUND.name            # the label rule of stages 1-2 (chapters 06-07)
DOWNSTREAM_TASK = SIZE_AND_MATERIAL.name    # the label rule of stage 3 (chapter 08)
METHODS = ("linear_probe", "top_layers", "full", "lora", "adapters", "prompt")   # of mmcourse.adapt


@dataclass(frozen=True)
class Profile:
    """Settings derived from a profile name.

    Attributes:
        name: ``smoke``, ``default`` or ``full``.
        split: scenes per train/dev/test split.
        image_size: rendered image side S.
        epochs: training epochs of the reference model (the article uses 10).
        strict: whether check cells assert the course's targets (False: loose
            checks only, since smoke runs are too short to reach them).
        budget_s: wall-time budget of one notebook in this profile.
    """

    name: str
    split: Split
    image_size: int
    epochs: int
    strict: bool
    budget_s: int

    @property
    def world(self) -> WorldConfig:
        """The world configuration of this profile (only the image size varies)."""
        return WorldConfig(image_size=self.image_size)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", Split(train=3000, dev=500, test=1000), image_size=32, epochs=2,
                     strict=False, budget_s=60),
    "default": Profile("default", Split(train=60000, dev=5000, test=10000), image_size=32, epochs=10,
                       strict=True, budget_s=300),
    "full": Profile("full", Split(train=200000, dev=10000, test=20000), image_size=64, epochs=10,
                    strict=True, budget_s=600),
}


def get_profile(profile: Profile | str | None = None, **overrides) -> Profile:
    """A profile: ``profile`` itself if it is a :class:`Profile`, else the one of that name.

    Without a name: ``$MMCOURSE_PROFILE``, else ``default``. Keyword overrides replace
    fields, e.g. ``get_profile("smoke", epochs=1)``.

    Raises:
        ValueError: for an unknown profile name, listing the valid ones.
        TypeError: for anything but a Profile, a str or None.
    """
    if not isinstance(profile, Profile):
        if profile is not None and not isinstance(profile, str):
            raise TypeError(f"profile must be a Profile, a profile name or None, got {type(profile).__name__}")
        name = profile or os.environ.get(PROFILE_ENV) or "default"
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
        profile = PROFILES[name]
    return replace(profile, **overrides) if overrides else profile


def _check_positive(config, names) -> None:
    for name in names:
        check_int(getattr(config, name), f"{type(config).__name__}.{name}")


def _check_fraction(config, names) -> None:
    for name in names:
        check_probability(getattr(config, name), f"{type(config).__name__}.{name}", below_one=True)


def _table_entry(table: Mapping, profile, what: str):
    profile = get_profile(profile)
    if profile.name not in table:
        raise ValueError(f"no {what} settings for profile {profile.name!r}; known: {list(table)}")
    return profile, table[profile.name]


# ----------------------------------------------------------------------------- stage 1 (chapter 06)

@dataclass(frozen=True)
class Stage1Config:
    """How stage 1, contrastive pretraining on unlabeled pairs, is trained in a profile.

    Attributes:
        train_size: unlabeled training pairs (a subset size of the profile's training split).
        epochs: passes over them.
        batch_size: pairs per step (B - 1 negatives per positive).
        lr: peak learning rate (linear warm-up over ``warmup_steps``, then cosine decay).
        warmup_steps: steps of linear warm-up.
        embed_dim: E, the joint space width.
        eval_size: dev scenes scored (zero-shot, Recall@1) at every evaluation.
    """

    train_size: int
    epochs: int
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 50
    embed_dim: int = 64
    eval_size: int = 1000

    def __post_init__(self):
        _check_positive(self, ("train_size", "epochs", "batch_size", "warmup_steps", "embed_dim", "eval_size"))


STAGE1 = {
    "smoke": Stage1Config(train_size=3000, epochs=2, batch_size=128, warmup_steps=10, eval_size=500),
    "default": Stage1Config(train_size=20000, epochs=6),
    "full": Stage1Config(train_size=60000, epochs=10),
}


def stage1_config(profile: Profile | str | None = None) -> Stage1Config:
    """Chapter 06's :class:`Stage1Config` of a profile, ``train_size`` capped at the profile's training split."""
    profile, config = _table_entry(STAGE1, profile, "stage-1")
    return replace(config, train_size=min(config.train_size, profile.split.train))


# ----------------------------------------------------------------------------- stage 2 (chapter 07)

@dataclass(frozen=True)
class JointConfig:
    """How stage 2, joint training on the labelled main task, is trained in a profile.

    Attributes:
        train_size: labelled training scenes (the first ones of stage 1's training split).
        epochs: passes over them.
        batch_size: scenes per step.
        lr: learning rate.
        modality_dropout: probability of hiding each modality of a training scene; 0.5 is the
            remedy run of chapter 07, where it brings every subset of modalities to its limit
            (the chapter's other runs, comparing initialisations, train without it).
        aux_weight: weight of the image-text matching and the contrastive loss beside classification.
        hidden: H, the width of the late fusion's branches.
        eval_size: dev scenes scored at every evaluation.
    """

    train_size: int
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    modality_dropout: float = 0.5
    aux_weight: float = 0.25
    hidden: int = 128
    eval_size: int = 1000

    def __post_init__(self):
        _check_positive(self, ("train_size", "epochs", "batch_size", "hidden", "eval_size"))
        _check_fraction(self, ("modality_dropout",))


# Chapter 07: up to 20,000 of stage 1's training pairs, max(1, profile.epochs // 5) epochs.
JOINT = {
    "smoke": JointConfig(train_size=3000, epochs=1),
    "default": JointConfig(train_size=20000, epochs=2),
    "full": JointConfig(train_size=20000, epochs=2),
}


def joint_config(profile: Profile | str | None = None) -> JointConfig:
    """Chapter 07's :class:`JointConfig` of a profile, ``train_size`` capped at stage 1's training pairs."""
    profile, config = _table_entry(JOINT, profile, "stage-2")
    return replace(config, train_size=min(config.train_size, stage1_config(profile).train_size))


# ----------------------------------------------------------------------------- stage 3 (chapter 08)

@dataclass(frozen=True)
class Stage3Config:
    """How stage 3, adaptation to the downstream task ``size_and_material``, is sized and trained in a profile.

    Chapter 08 compares every method on the whole training split and on few-shot subsets of it;
    the pipeline adapts once, with ``method`` on ``per_class`` labels per class.

    Attributes:
        train_size: labelled training scenes generated (the few-shot subsets are drawn from them).
        dev_size, test_size: evaluation scenes.
        steps: optimizer steps of one adaptation run.
        batch_size: scenes per step.
        lr: peak learning rate.
        method: the adaptation method (one of ``METHODS``) of a single run.
        per_class: labelled scenes per class of a single few-shot run.
        modality_dropout: probability of hiding each modality of a training scene (so that the
            new head works with a modality missing).
        eval_size: dev scenes scored at every evaluation (None: the whole dev split).
    """

    train_size: int
    dev_size: int
    test_size: int
    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    method: str = "lora"
    per_class: int = 10
    modality_dropout: float = 0.0
    eval_size: int | None = None

    def __post_init__(self):
        _check_positive(self, ("train_size", "dev_size", "test_size", "steps", "batch_size", "per_class")
                        + (("eval_size",) if self.eval_size is not None else ()))
        _check_fraction(self, ("modality_dropout",))
        if self.method not in METHODS:
            raise ValueError(f"Stage3Config.method must be one of {METHODS}, got {self.method!r}")
        classes = SIZE_AND_MATERIAL.num_classes
        if self.train_size < classes * self.per_class:
            raise ValueError(f"Stage3Config.train_size ({self.train_size}) must hold at least {classes} classes "
                             f"x per_class ({self.per_class}) scenes")


STAGE3 = {
    "smoke": Stage3Config(train_size=2000, dev_size=500, test_size=1000, steps=40),
    "default": Stage3Config(train_size=8000, dev_size=2000, test_size=5000, steps=300),
    "full": Stage3Config(train_size=40000, dev_size=5000, test_size=20000, steps=1500, batch_size=256),
}


def stage3_config(profile: Profile | str | None = None) -> Stage3Config:
    """Chapter 08's :class:`Stage3Config` of a profile."""
    return _table_entry(STAGE3, profile, "stage-3")[1]


# ----------------------------------------------------------------------------- the pipeline (chapter 10)

STAGE_FIELDS = ("pretrain", "joint", "adapt")     # the nested stage settings of a PipelineConfig


@dataclass(frozen=True)
class PipelineConfig:
    """The settings of one pipeline run (stored with the run as nested JSON, ``asdict``).

    Attributes:
        profile: the profile name the sizes come from (names the run folder).
        seed: seeds the data, the initialisations and the shuffling.
        image_size: S, the side of the rendered images (64 in ``full``).
        dev_size, test_size: scenes in the dev and test splits of the main task (stages 1 and 2).
        pretrain: stage 1 (its ``train_size`` unlabeled pairs are the first main training scenes).
        joint: stage 2 (its ``train_size`` labelled scenes are the first main training scenes).
        adapt: stage 3 (``train_size`` is the downstream pool the ``per_class`` labels are drawn
            from; ``dev_size``/``test_size`` size the downstream splits).
        evals: evaluations per stage (spread evenly over its steps).
        checkpoint_every: steps between checkpoints within a stage (one is always written at its end).
        compile: ``"auto"`` (torch.compile on CUDA), ``"on"`` or ``"off"`` (:func:`mmcourse.utils.maybe_compile`).
    """

    profile: str
    pretrain: Stage1Config
    joint: JointConfig
    adapt: Stage3Config
    seed: int = 0
    image_size: int = 32
    dev_size: int = 1000
    test_size: int = 2000
    evals: int = 4
    checkpoint_every: int = 50
    compile: str = "auto"

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"PipelineConfig.seed must be an int >= 0, got {self.seed!r}")
        _check_positive(self, ("image_size", "dev_size", "test_size", "evals", "checkpoint_every"))
        for name, kind in zip(STAGE_FIELDS, (Stage1Config, JointConfig, Stage3Config)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"PipelineConfig.{name} must be a {kind.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"PipelineConfig.compile must be 'auto', 'on' or 'off', got {self.compile!r}")

    @property
    def name(self) -> str:
        """The run's name: ``<profile>_seed<seed>``."""
        return f"{self.profile}_seed{self.seed}"

    def rows(self) -> list[tuple[str, str, str]]:
        """(stage, setting, value) rows for a table of the configuration."""
        p, j, a = self.pretrain, self.joint, self.adapt
        return [
            ("data", "image side S", str(self.image_size)),
            ("data", "dev / test scenes per task", f"{self.dev_size} / {self.test_size}"),
            ("1 pretrain", "unlabeled pairs x epochs", f"{p.train_size} x {p.epochs}"),
            ("1 pretrain", "batch, peak lr", f"{p.batch_size}, {p.lr:g}"),
            ("2 joint", f"labelled scenes ({MAIN_TASK}) x epochs", f"{j.train_size} x {j.epochs}"),
            ("2 joint", "batch, lr, modality dropout", f"{j.batch_size}, {j.lr:g}, {j.modality_dropout:g}"),
            ("3 adapt", f"method, labels per class ({DOWNSTREAM_TASK})", f"{a.method}, {a.per_class}"),
            ("3 adapt", "steps, batch, lr", f"{a.steps}, {a.batch_size}, {a.lr:g}"),
            ("all", "checkpoint every, compile", f"{self.checkpoint_every} steps, {self.compile}"),
        ]


# The pipeline runs all three stages in one notebook's budget, so each stage gets a shorter budget
# than its chapter: fewer pairs and epochs in stage 1 (10,000 x 3 in `default` against chapter 06's
# 20,000 x 6), fewer steps and a downstream pool of a few labels per class in stage 3. With stage 2's
# shorter budget (10,000 scenes x 2 epochs), chapter 07's batch 128, lr 1e-3 and modality dropout 0.5
# reached only 0.35 dev accuracy, so the pipeline takes batches of 64, lr 2e-3 and half the dropout
# (and weighs the auxiliary losses 0.1 against the chapter's 0.25). Stage 3 adapts
# once (LoRA, lr 3e-3) with modality dropout 0.3, so that the new head also works with a modality
# missing. {profile: (run settings, stage-1 changes, stage-2 changes, stage-3 changes)}.
_JOINT_SHORT = dict(batch_size=64, lr=2e-3, modality_dropout=0.25, aux_weight=0.1)
_ADAPT_FEW_SHOT = dict(lr=3e-3, method="lora", per_class=10, modality_dropout=0.3)
_PIPELINE_BUDGET = {
    "smoke": (dict(dev_size=300, test_size=500, evals=2, checkpoint_every=5),
              dict(train_size=1500, epochs=1, batch_size=128, warmup_steps=3, eval_size=300),
              dict(_JOINT_SHORT, train_size=1500, epochs=1, eval_size=300),
              dict(_ADAPT_FEW_SHOT, train_size=400, dev_size=300, test_size=500, steps=40, eval_size=300)),
    "default": (dict(dev_size=1000, test_size=2000, evals=4, checkpoint_every=50),
                dict(train_size=10000, epochs=3, batch_size=256, warmup_steps=20, eval_size=500),
                dict(_JOINT_SHORT, train_size=10000, epochs=2, eval_size=500),
                dict(_ADAPT_FEW_SHOT, train_size=1000, dev_size=1000, test_size=2000, steps=200, eval_size=500)),
    "full": (dict(image_size=64, dev_size=5000, test_size=10000, evals=8, checkpoint_every=200),
             dict(train_size=60000, epochs=10, batch_size=512, lr=3e-3, warmup_steps=100, eval_size=2000),
             dict(_JOINT_SHORT, train_size=60000, epochs=4, batch_size=128, eval_size=2000),
             dict(_ADAPT_FEW_SHOT, train_size=5000, dev_size=5000, test_size=10000, steps=600, batch_size=128,
                  per_class=20, eval_size=2000)),
}

PIPELINE = {
    name: PipelineConfig(name, replace(STAGE1[name], **pretrain), replace(JOINT[name], **joint),
                         replace(STAGE3[name], **adapt), **run)
    for name, (run, pretrain, joint, adapt) in _PIPELINE_BUDGET.items()
}


def _override(config, name: str, value):
    """A stage's settings from an override: a dict of changed fields, or a whole stage config."""
    if not isinstance(value, Mapping):
        return value
    known = {f.name for f in fields(config)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{name}: {type(config).__name__} has no field {unknown[0]!r}; fields: {sorted(known)}")
    return replace(config, **value)


def pipeline_config(profile: Profile | str | None = None, seed: int = 0, **overrides) -> PipelineConfig:
    """The :class:`PipelineConfig` of a profile, with ``seed`` and any setting overridden.

    A stage's settings are overridden with a dict of its changed fields, the others keep the profile's:
    ``pipeline_config("smoke", joint={"lr": 5e-4}, evals=2)``.

    ``smoke``: about 10 s of training on one CPU thread; ``default``: about two minutes (measured
    at about 600 samples/s on one thread of a busy 2-core machine); ``full``: sized for one GPU
    (64x64 images, 60,000 scenes, more epochs).

    Raises:
        ValueError: for an unknown profile, an unknown field or an invalid setting (naming the field).
    """
    base = _table_entry(PIPELINE, profile, "pipeline")[1]
    for name in STAGE_FIELDS:
        if name in overrides:
            overrides[name] = _override(getattr(base, name), name, overrides[name])
    return replace(base, seed=seed, **overrides)
