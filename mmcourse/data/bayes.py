"""Exact Bayes-optimal accuracy of every modality subset.

Each observation is a deterministic function of the latent attributes and of
the event outcomes (see :mod:`mmcourse.data.world`). Enumerating all
(attributes, events) states with their probabilities and grouping them by what
a modality subset observes gives the joint table P(observation, label); the
Bayes-optimal classifier picks the most probable label in each group, and its
accuracy is ``sum over observations of max over labels P(observation, label)``.

Shape letters: K enumerated states, O distinct observations, C classes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .world import ATTRIBUTES, MODALITIES, Scenes, World


def _states(world: World):
    """All (attributes, events) states and their probabilities.

    Returns attrs {name: (K,)}, events {name: (K,) bool}, prob (K,).
    """
    cards = [len(v) for v in ATTRIBUTES.values()]
    events = [e for e in world.events if 0.0 < e.prob < 1.0]  # certain events are constant
    grid = np.indices(cards + [2] * len(events)).reshape(len(cards) + len(events), -1)
    attrs = {a: grid[i] for i, a in enumerate(ATTRIBUTES)}
    prob = np.prod([np.full(grid.shape[1], 1.0 / c) for c in cards], axis=0)
    outcomes = {e.name: np.full(grid.shape[1], e.prob >= 1.0) for e in world.events}
    for j, e in enumerate(events):
        hit = grid[len(cards) + j].astype(bool)
        outcomes[e.name] = hit
        prob = prob * np.where(hit, e.prob, 1.0 - e.prob)
    return attrs, outcomes, prob


def _check_subset(world: World, modalities) -> tuple[str, ...]:
    if isinstance(modalities, str):
        raise TypeError(f"modalities must be a collection of names, got a single str {modalities!r}; "
                        f"write ({modalities!r},)")
    subset = tuple(sorted(set(modalities)))
    unknown = [m for m in subset if m not in world.observation]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; valid: {sorted(world.observation)}")
    return subset


def observation_key(world: World, scenes: Scenes, modalities) -> np.ndarray:
    """Encode what ``modalities`` observe of each scene as one integer: (N,) int64.

    Every revealed attribute contributes its value index, a hidden one the
    code ``card`` (mixed radix, so distinct observations get distinct keys).
    """
    subset = _check_subset(world, modalities)
    key = np.zeros(len(scenes), dtype=np.int64)
    for m in subset:
        for a, seen in sorted(world.visible(scenes, m).items()):
            card = len(ATTRIBUTES[a])
            key = key * (card + 1) + np.where(seen, scenes.attrs[a], card)
    return key


@dataclass
class BayesClassifier:
    """The Bayes-optimal decision rule of one modality subset.

    Attributes:
        modalities: the observed modalities, sorted.
        accuracy: its exact expected accuracy.
        keys: (O,) sorted observation keys; decisions: (O,) best label per key.
    """

    modalities: tuple[str, ...]
    accuracy: float
    keys: np.ndarray
    decisions: np.ndarray
    world: World

    def predict(self, scenes: Scenes) -> np.ndarray:
        """Bayes-optimal labels for sampled scenes: (N,) int64."""
        key = observation_key(self.world, scenes, self.modalities)
        idx = np.searchsorted(self.keys, key)
        return self.decisions[idx]


def bayes_classifier(world: World, modalities) -> BayesClassifier:
    """Build the exact Bayes rule and accuracy for a modality subset (may be empty)."""
    subset = _check_subset(world, modalities)
    attrs, events, prob = _states(world)
    states = Scenes(attrs=attrs, events=events, label=world.label_rule(attrs))
    key = observation_key(world, states, subset)
    keys, inverse = np.unique(key, return_inverse=True)
    table = np.zeros((len(keys), world.label_rule.num_classes))  # (O, C) joint P(obs, label)
    np.add.at(table, (inverse, states.label), prob)
    return BayesClassifier(subset, float(table.max(axis=1).sum()), keys, table.argmax(axis=1), world)


def bayes_accuracy(world: World, modalities) -> float:
    """Exact Bayes-optimal accuracy of predicting the label from ``modalities``."""
    return bayes_classifier(world, modalities).accuracy


def all_subsets(modalities=MODALITIES) -> list[tuple[str, ...]]:
    """Every subset of ``modalities``, smallest first (the empty one included)."""
    mods = sorted(modalities)
    return [c for r in range(len(mods) + 1) for c in itertools.combinations(mods, r)]


def bayes_table(world: World) -> dict[tuple[str, ...], float]:
    """Bayes accuracy of every modality subset, keyed by the sorted subset."""
    return {s: bayes_accuracy(world, s) for s in all_subsets(world.observation)}
