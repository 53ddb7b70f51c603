"""Profiles: one parameter sizes every notebook.

| profile | where | budget per notebook |
|---|---|---|
| ``smoke`` | CI, 2 CPU cores | <= 60 s, code paths only, loose checks |
| ``default`` | a laptop CPU | <= 5 min, reaches the stated targets |
| ``full`` | one GPU | <= 10 min, 64x64 images, more data |

Notebooks read the profile name from their ``parameters`` cell (which falls
back to ``$MMCOURSE_PROFILE``) and take every derived setting from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .data.dataset import Split
from .data.world import WorldConfig

PROFILE_ENV = "MMCOURSE_PROFILE"


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


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile called ``name`` (default: ``$MMCOURSE_PROFILE``, else ``default``).

    Keyword overrides replace fields, e.g. ``get_profile("smoke", epochs=1)``.

    Raises:
        ValueError: for an unknown profile name, listing the valid ones.
    """
    name = name or os.environ.get(PROFILE_ENV) or "default"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
