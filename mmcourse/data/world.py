"""The synthetic world: latent attributes, a declared observation model, labels.

A *scene* is one object with five latent attributes (``ATTRIBUTES``). Each
modality observes the scene through *events*: independent coin flips that,
when they come up heads, reveal a fixed set of attributes exactly.

- ``image`` always shows shape, colour, size and position (never material);
- ``text`` mentions each attribute on its own with probability ``mention_prob``;
- ``audio`` is a strike sound present with probability ``strike_prob``; when
  present, its timbre reveals the material and its pitch the size.

Because every observation is a deterministic function of (attributes, events),
the Bayes-optimal accuracy of any modality subset can be computed exactly by
enumerating the finitely many (attributes, events) states: see
:mod:`mmcourse.data.bayes`.

Shape letters: N scenes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..modality import MODALITIES

# Every latent attribute and its values, in a fixed order (value index = position).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross", "diamond"),
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
    "material": ("metal", "glass", "wood", "rubber"),
}

# Materials whose strike sound rings (long decay) rather than thuds.
RINGING_MATERIALS = ("metal", "glass")


@dataclass(frozen=True)
class Event:
    """A coin flip of one modality that reveals ``reveals`` when it succeeds."""

    name: str
    prob: float
    reveals: tuple[str, ...]


@dataclass(frozen=True)
class LabelRule:
    """A label declared as a function of the latent attributes."""

    name: str
    class_names: tuple[str, ...]
    fn: Callable[[dict[str, np.ndarray]], np.ndarray]

    def __call__(self, attrs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.fn(attrs), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _shape_and_sound(attrs: dict[str, np.ndarray]) -> np.ndarray:
    ringing = np.isin(attrs["material"], [ATTRIBUTES["material"].index(m) for m in RINGING_MATERIALS])
    return 2 * attrs["shape"] + (~ringing).astype(np.int64)


# The default task: 10 classes (as in the article) = 5 shapes x {ringing, muted}.
# Shape is seen by the image, the sound family (material) is heard by the audio
# and sometimes named by the caption, so every modality alone is insufficient.
SHAPE_AND_SOUND = LabelRule(
    name="shape_and_sound",
    class_names=tuple(f"{kind} {s}" for s in ATTRIBUTES["shape"] for kind in ("ringing", "muted")),
    fn=_shape_and_sound,
)


def _size_and_material(attrs: dict[str, np.ndarray]) -> np.ndarray:
    return len(ATTRIBUTES["material"]) * attrs["size"] + attrs["material"]


# Chapter 08's downstream task: 8 classes = 2 sizes x 4 materials. Size is seen by the
# image and heard in the strike's pitch, material is heard in its timbre and sometimes
# named by the caption: a new label function over the same scenes as stage 1 and 2.
SIZE_AND_MATERIAL = LabelRule(
    name="size_and_material",
    class_names=tuple(f"{size} {material}" for size in ATTRIBUTES["size"] for material in ATTRIBUTES["material"]),
    fn=_size_and_material,
)

LABEL_RULES: dict[str, LabelRule] = {rule.name: rule for rule in (SHAPE_AND_SOUND, SIZE_AND_MATERIAL)}


def register_label_rule(rule: LabelRule, replace: bool = False) -> LabelRule:
    """Make ``rule`` available to ``WorldConfig(label_rule=rule.name)``.

    Raises:
        ValueError: if another rule already has that name and ``replace`` is False.
    """
    if LABEL_RULES.get(rule.name, rule) is not rule and not replace:
        raise ValueError(f"label rule {rule.name!r} is already registered; pass replace=True to replace it")
    LABEL_RULES[rule.name] = rule
    return rule


def _default_mention_prob() -> dict[str, float]:
    # Chosen so that text alone is weak (Bayes 0.44) but adds what the image lacks.
    return {"shape": 0.4, "colour": 0.6, "size": 0.6, "position": 0.5, "material": 0.7}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world and its observation model.

    Attributes:
        image_size: side S of the rendered 3xSxS images (32 default, 64 in ``full``).
        sample_rate: audio sample rate in Hz.
        audio_samples: waveform length T (1024 samples at 8 kHz = 128 ms).
        mention_prob: per attribute, the probability that a caption names it.
        strike_prob: probability that the audio clip holds a strike (else noise only).
        label_rule: name of the label function in ``LABEL_RULES``.
    """

    image_size: int = 32
    sample_rate: int = 8000
    audio_samples: int = 1024
    mention_prob: dict[str, float] = field(default_factory=_default_mention_prob)
    strike_prob: float = 0.8
    label_rule: str = "shape_and_sound"

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 16, got {self.image_size}")
        if set(self.mention_prob) != set(ATTRIBUTES):
            raise ValueError(
                f"mention_prob must give one probability per attribute {sorted(ATTRIBUTES)}, "
                f"got keys {sorted(self.mention_prob)}"
            )
        for name, p in {**self.mention_prob, "strike_prob": self.strike_prob}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability for {name!r} must be in [0, 1], got {p}")
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"unknown label_rule {self.label_rule!r}; valid: {sorted(LABEL_RULES)}")


def observation_model(config: WorldConfig) -> dict[str, tuple[Event, ...]]:
    """Which modality reveals which attribute, and how reliably (sorted keys)."""
    return {
        "audio": (Event("audio.strike", config.strike_prob, ("material", "size")),),
        "image": (Event("image.view", 1.0, ("shape", "colour", "size", "position")),),
        "text": tuple(Event(f"text.{a}", config.mention_prob[a], (a,)) for a in ATTRIBUTES),
    }


@dataclass
class Scenes:
    """Latent attributes, event outcomes and labels of N scenes (numpy arrays)."""

    attrs: dict[str, np.ndarray]   # name -> (N,) int64 value index
    events: dict[str, np.ndarray]  # event name -> (N,) bool
    label: np.ndarray              # (N,) int64

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index) -> "Scenes":
        """The scenes selected by a slice, index array or boolean mask."""
        return Scenes({k: v[index] for k, v in self.attrs.items()},
                      {k: v[index] for k, v in self.events.items()}, self.label[index])


class World:
    """Samples scenes from a :class:`WorldConfig`.

    >>> scenes = World().sample(4, np.random.default_rng(0))
    >>> scenes.label.shape
    (4,)
    """

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.observation = observation_model(self.config)
        self.label_rule = LABEL_RULES[self.config.label_rule]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_rule.class_names

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(e for m in MODALITIES for e in self.observation[m])

    def sample(self, n: int, rng: np.random.Generator) -> Scenes:
        """Draw ``n`` scenes: uniform attributes, independent events."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        attrs = {a: rng.integers(0, len(v), size=n, dtype=np.int64) for a, v in ATTRIBUTES.items()}
        events = {e.name: rng.random(n) < e.prob for e in self.events}
        return Scenes(attrs=attrs, events=events, label=self.label_rule(attrs))

    def visible(self, scenes: Scenes, modality: str) -> dict[str, np.ndarray]:
        """Per attribute, whether ``modality`` reveals it in each scene: (N,) bool."""
        if modality not in self.observation:
            raise ValueError(f"unknown modality {modality!r}; valid: {list(self.observation)}")
        out: dict[str, np.ndarray] = {}
        for e in self.observation[modality]:
            for a in e.reveals:
                out[a] = out.get(a, np.zeros(len(scenes), bool)) | scenes.events[e.name]
        return out
