"""Chapter 17, frontiers: domain adaptation to a shifted renderer, and knowledge-graph composition.

**Domain adaptation.** The *source* domain is the course's image renderer; the *target* domain is the same
latent world photographed differently (:func:`render_target`: a dimmer light, a warm colour cast and stronger
pixel noise, applied on top of the course's render). The task is ``colour_and_size`` (8 classes, both
attributes shown by every image), so the exact Bayes limit of the image is the enumeration of
:mod:`mmcourse.data.bayes` as long as the shift keeps shape and colour recoverable, which a probe trained on
labelled target images shows (:func:`fit_probe`). Four ways to get a target classifier are compared:

- **source only**: trained on labelled source images, applied to the target as is;
- **CORAL** (Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation"): the source
  loss plus the distance between the feature covariances of a source and a target batch (:func:`coral_loss`);
- **DANN** (Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks"): a domain classifier on the
  features, trained through a gradient-reversal layer (:class:`GradientReversal`), so the features learn to
  hide the domain;
- **fine-tuning** the source model on a few labelled target images per class.

**Knowledge-graph composition.** The course's 10 classes are (shape, sound family) pairs, the sound family a
function of the material (:data:`mmcourse.data.world.RINGING_MATERIALS`). Some pairs are held out of
training (:data:`UNSEEN`). A small graph (:func:`world_graph`: material -> sound family, (shape, family) ->
class, word -> value synonyms) lets the attribute classifiers' posteriors be composed into a score for every
class, the unseen ones included (:func:`compose_with_graph`); the baseline combines the same attribute
posteriors with a rule learned from the seen pairs only (:func:`fit_rule`).

Shape letters: N images or scenes, B batch, S image side, D feature width, C classes, A shape values,
M material values, F sound families, K enumerated states.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import _check_positive, _table_entry
from .data.bayes import _states
from .data.dataset import BatchedDataset, make_loader
from .data.render import render_audio, render_images
from .data.text import SYNONYMS
from .data.world import (ATTRIBUTES, RINGING_MATERIALS, SHAPE_AND_SOUND, LabelRule, World, WorldConfig,
                         register_label_rule)
from .encoders import CNNImageEncoder, spectral_summary
from .evaluation import run_batches
from .training import TrainConfig, train

# ============================================================================ domain adaptation

def _colour_and_size(attrs: Mapping[str, np.ndarray]) -> np.ndarray:
    return len(ATTRIBUTES["colour"]) * attrs["size"] + attrs["colour"]


# The domain-adaptation task: 2 sizes x 4 colours, both seen in every image (image-only Bayes limit 1):
# the colour is what a colour cast attacks, the size what noise and a veil blur.
COLOUR_AND_SIZE = register_label_rule(LabelRule(
    name="colour_and_size",
    class_names=tuple(f"{z} {c}" for z in ATTRIBUTES["size"] for c in ATTRIBUTES["colour"]),
    fn=_colour_and_size,
), replace=True)


@dataclass(frozen=True)
class DomainShift:
    """How the target camera differs from the course's renderer (applied to its images in [0, 1]).

    Attributes:
        gain: overall light level (1 = the source's); a dimmer scene.
        cast: per-channel (R, G, B) gain of the light's colour; a warm lamp boosts red and starves blue.
        offset: a grey veil added to every pixel (glare, a washed-out sensor).
        noise: std of the Gaussian pixel noise added on top (the source has 0.03 uniform noise).
    """

    gain: float = 0.8
    cast: tuple[float, float, float] = (1.2, 1.0, 0.7)
    offset: float = 0.10
    noise: float = 0.08

    def __post_init__(self):
        if not self.gain > 0 or any(not c > 0 for c in self.cast) or len(self.cast) != 3:
            raise ValueError(f"DomainShift.gain and the three cast gains must be > 0, got {self.gain}, {self.cast}")
        if self.noise < 0 or not 0 <= self.offset < 1:
            raise ValueError(f"DomainShift.noise must be >= 0 and offset in [0, 1), got {self.noise}, {self.offset}")


def render_target(images: np.ndarray, shift: DomainShift, rng: np.random.Generator) -> np.ndarray:
    """The target camera's view of source renders: (N, 3, S, S) uint8 -> (N, 3, S, S) uint8."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, 3, S, S) uint8, got {images.shape} {images.dtype}")
    x = images.astype(np.float32) / 255.0                                         # (N, 3, S, S) in [0, 1]
    cast = np.asarray(shift.cast, np.float32)[None, :, None, None]                # (1, 3, 1, 1)
    x = shift.offset + shift.gain * cast * x                                      # (N, 3, S, S)
    x = x + shift.noise * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sample_images(world: World, n: int, seed: int, shift: DomainShift | None = None):
    """``n`` scenes of ``world`` and their images: (Scenes, (N, 3, S, S) uint8), target-rendered if ``shift``.

    The same seed gives the same scenes and source pixels; the target view adds its own noise stream.
    """
    _check_positive_n(n)
    scene_rng, image_rng, shift_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    scenes = world.sample(n, scene_rng)
    images = render_images(scenes, world.config.image_size, image_rng)
    return scenes, (images if shift is None else render_target(images, shift, shift_rng))


def _check_positive_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


class DomainData(BatchedDataset):
    """Labelled source images paired with unlabelled target images: ``({"source", "target"}, labels)``.

    Row i pairs source image i with target image ``i mod N_t`` (the target labels are never stored).
    """

    def __init__(self, source: torch.Tensor, labels: torch.Tensor, target: torch.Tensor):
        if source.dim() != 4 or target.dim() != 4 or source.shape[1:] != target.shape[1:]:
            raise ValueError(f"source and target must be (N, 3, S, S) alike, got {tuple(source.shape)} "
                             f"and {tuple(target.shape)}")
        if len(labels) != len(source):
            raise ValueError(f"labels has {len(labels)} rows, source {len(source)}")
        reps = math.ceil(len(source) / len(target))
        self.source, self.labels = source, labels
        self.target = target.repeat(reps, 1, 1, 1)[: len(source)]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"source": self.source, "target": self.target}


class ImageSet(BatchedDataset):
    """Images and their labels, served as ``({"source": (B, 3, S, S)}, labels)`` (one model input name)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, 3, S, S) with one label each, got {tuple(images.shape)} "
                             f"and {len(labels)} labels")
        self.images, self.labels = images, labels

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"source": self.images}


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CORAL loss of two feature batches (B_s, D), (B_t, D): ||C_s - C_t||_F^2 / (4 D^2) (Sun & Saenko 2016).

    C is the unbiased covariance of a batch's features (each batch needs at least two rows).
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target must be (B, D) with one D, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    if len(source) < 2 or len(target) < 2:
        raise ValueError("coral_loss needs at least two rows per batch to estimate a covariance")
    d = source.shape[1]
    return (torch.cov(source.T) - torch.cov(target.T)).pow(2).sum() / (4 * d * d)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class GradientReversal(nn.Module):
    """The identity forward; the gradient times ``-scale`` backward (Ganin et al. 2016)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReverseGrad.apply(x, self.scale)


class DomainModel(nn.Module):
    """An image encoder, a class head and a domain head behind a gradient reversal.

    ``forward(images (B, 3, S, S)) -> class logits (B, C)``; :meth:`features` gives (B, D) and
    :meth:`domain_logits` the (B,) logit of "target" (through the reversal: training it makes the features
    domain-blind).
    """

    def __init__(self, num_classes: int, dim: int, widths: tuple[int, ...], hidden: int, reversal: float = 1.0):
        super().__init__()
        self.encoder = CNNImageEncoder(dim, widths)
        self.head = nn.Linear(dim, num_classes)
        self.reverse = GradientReversal(reversal)
        self.domain = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)                                         # (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))                             # (B, C)

    def domain_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.domain(self.reverse(feats)).squeeze(1)                  # (B,)


METHODS = ("source_only", "coral", "dann")


@dataclass(frozen=True)
class AdaptLoss:
    """The training loss of one method: ``loss_fn(model, batch)`` for :func:`mmcourse.training.train`.

    Attributes:
        method: one of ``METHODS``.
        weight: weight of the alignment term (CORAL distance or domain cross-entropy) beside the class loss.
    """

    method: str
    weight: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def __call__(self, model: DomainModel, batch) -> dict[str, torch.Tensor]:
        inputs, labels = batch
        if self.method == "source_only":
            return {"loss": F.cross_entropy(model(inputs["source"]), labels)}
        both = model.features(torch.cat([inputs["source"], inputs["target"]]))   # (2B, D), one BN pass
        f_s, f_t = both[: len(labels)], both[len(labels):]                       # (B, D) each
        task = F.cross_entropy(model.head(f_s), labels)
        if self.method == "coral":
            align = coral_loss(f_s, f_t)
        else:
            is_target = torch.cat([torch.zeros(len(f_s)), torch.ones(len(f_t))]).to(both.device)   # (2B,)
            align = F.binary_cross_entropy_with_logits(model.domain_logits(both), is_target)
        return {"loss": task + self.weight * align, "task": task, "align": align}


def fit_classifier(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, config: "FrontiersConfig",
                   device, seed: int = 0, epochs: int | None = None, loss: AdaptLoss | None = None):
    """Train ``model`` on ``ImageSet``-style rows ``inputs`` (N, ...) with labels (N,), or on a
    :class:`DomainData` if ``inputs`` is one; returns the training History."""
    data = inputs if isinstance(inputs, BatchedDataset) else _Rows(inputs, labels)
    torch.manual_seed(seed)
    loader = make_loader(data, config.batch_size, shuffle=True, seed=seed)
    epochs = epochs or config.epochs
    steps = epochs * len(loader)
    train_config = TrainConfig(epochs=epochs, lr=config.lr, warmup_steps=min(30, steps // 10),
                               log_every=len(loader))
    return train(model, loss or AdaptLoss("source_only"), loader, train_config, device)


class _Rows(BatchedDataset):
    """Any (N, ...) inputs with labels, served under the one input name ``source``."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        if len(x) != len(labels):
            raise ValueError(f"inputs have {len(x)} rows, labels {len(labels)}")
        self.x, self.labels = x, labels

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"source": self.x}


def predict_proba(model: nn.Module, inputs: torch.Tensor, device) -> torch.Tensor:
    """Softmax of ``model`` over rows ``inputs`` (N, ...) -> (N, C), in eval mode."""
    data = _Rows(inputs, torch.zeros(len(inputs), dtype=torch.long))
    return run_batches(model, lambda m, b: m(b[0]["source"]).float().softmax(-1), data, device)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, device) -> float:
    """Accuracy of ``model``'s argmax over rows ``inputs`` (N, ...) against labels (N,)."""
    return float((predict_proba(model, inputs, device).argmax(1) == labels).float().mean())


def few_shot_rows(labels: np.ndarray, per_class: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random rows of each class (sorted): (num_classes * per_class,) int64."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} rows, fewer than per_class={per_class}")
        rows.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(rows))


class ProbeModel(nn.Module):
    """One image encoder with a linear head per visible attribute: ``forward -> {attribute: (B, values)}``."""

    def __init__(self, attributes: tuple[str, ...], dim: int, widths: tuple[int, ...]):
        super().__init__()
        self.encoder = CNNImageEncoder(dim, widths)
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(ATTRIBUTES[a])) for a in attributes})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.encoder(images)                                            # (B, D)
        return {a: head(f) for a, head in self.heads.items()}               # {a: (B, values)}


VISIBLE = ("colour", "size")     # the attributes the task's label is made of (all an image shows them)


def _probe_loss(model: ProbeModel, batch) -> torch.Tensor:
    inputs, labels = batch                                                  # labels (B, A) attribute indices
    logits = model(inputs["source"])
    return sum(F.cross_entropy(logits[a], labels[:, k]) for k, a in enumerate(model.heads))


def fit_probe(images: torch.Tensor, scenes, config: "FrontiersConfig", device, seed: int = 0) -> ProbeModel:
    """Train a :class:`ProbeModel` on labelled images (N, 3, S, S) uint8 of ``scenes`` (the attributes ``VISIBLE``)."""
    labels = torch.from_numpy(np.stack([scenes.attrs[a] for a in VISIBLE], 1))   # (N, A)
    model = ProbeModel(VISIBLE, config.dim, config.widths).to(device)
    torch.manual_seed(seed)
    loader = make_loader(_Rows(images, labels), config.batch_size, shuffle=True, seed=seed)
    epochs = 2 * config.epochs          # a check of the world, so trained longer than the methods it vets
    steps = epochs * len(loader)
    train(model, _probe_loss, loader, TrainConfig(epochs=epochs, lr=config.lr,
                                                  warmup_steps=min(30, steps // 10), log_every=len(loader)), device)
    return model


def probe_accuracy(model: ProbeModel, images: torch.Tensor, scenes, device) -> dict[str, float]:
    """Per probed attribute, the probe's accuracy on labelled images: {attribute: accuracy}."""
    data = _Rows(images, torch.zeros(len(images), dtype=torch.long))
    logits = run_batches(model, lambda m, b: m(b[0]["source"]), data, device)
    return {a: float((logits[a].argmax(1).numpy() == scenes.attrs[a]).mean()) for a in model.heads}


# ============================================================================ knowledge-graph composition

# The combinations held out of training (one per shape family of the class names, both sound families hit).
UNSEEN = ("ringing triangle", "muted cross", "ringing diamond")
FAMILIES = ("ringing", "muted")       # sound families, in the order of the class index (2 * shape + family)
KG_MODALITIES = ("audio", "image")    # the image shows the shape, a strike's timbre the material


@dataclass(frozen=True)
class KnowledgeGraph:
    """Typed edges (head, relation, tail) between words, attribute values and classes.

    Relations: ``sound_family`` (material -> family), ``has_shape`` and ``has_family`` (class -> its parts),
    ``synonym`` (word -> the attribute value it names, from the captions' grammar).
    """

    edges: tuple[tuple[str, str, str], ...]

    def tails(self, head: str, relation: str) -> tuple[str, ...]:
        """Every tail of ``(head, relation, ?)``, in edge order."""
        return tuple(t for h, r, t in self.edges if h == head and r == relation)

    def heads(self, relation: str, tail: str) -> tuple[str, ...]:
        """Every head of ``(?, relation, tail)``, in edge order."""
        return tuple(h for h, r, t in self.edges if r == relation and t == tail)

    def resolve(self, word: str) -> str:
        """The attribute value a word names (itself if it is one), through ``synonym`` edges."""
        named = self.tails(word, "synonym")
        if len(named) > 1:
            raise ValueError(f"the word {word!r} names several values {named}")
        return named[0] if named else word

    def parts(self, class_name: str) -> tuple[str, str]:
        """(shape, family) of a class, through ``has_shape`` and ``has_family`` edges."""
        shape, family = self.tails(class_name, "has_shape"), self.tails(class_name, "has_family")
        if len(shape) != 1 or len(family) != 1:
            raise ValueError(f"the graph does not define the class {class_name!r} by one shape and one family")
        return shape[0], family[0]

    def class_named(self, words: str) -> str:
        """The class a phrase like ``"ringing wedge"`` names: its words resolved, matched to a class's parts."""
        values = {self.resolve(w) for w in _phrases(words, self)}
        for name in self.heads("is_a", "class"):
            if set(self.parts(name)) == values:
                return name
        raise ValueError(f"no class of the graph is made of {sorted(values)} (from {words!r})")


def _phrases(words: str, graph: KnowledgeGraph) -> list[str]:
    """Split ``words`` into the longest phrases the graph knows (multi-word synonyms such as "plus sign")."""
    tokens, out, i = words.split(), [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            phrase = " ".join(tokens[i:j])
            if graph.tails(phrase, "synonym") or graph.heads("has_shape", phrase) or phrase in FAMILIES:
                out.append(phrase)
                i = j
                break
        else:
            raise ValueError(f"the graph knows no word {tokens[i]!r} (in {words!r})")
    return out


def world_graph() -> KnowledgeGraph:
    """The world's relations as a graph: materials' sound families, classes' parts, the captions' synonyms."""
    edges = [(m, "sound_family", FAMILIES[0] if m in RINGING_MATERIALS else FAMILIES[1])
             for m in ATTRIBUTES["material"]]
    for name in SHAPE_AND_SOUND.class_names:
        family, shape = name.split(" ", 1)
        edges += [(name, "is_a", "class"), (name, "has_shape", shape), (name, "has_family", family)]
    for attribute in ("shape", "material"):
        for value, phrases in SYNONYMS[attribute].items():
            edges += [(p.split("|")[-1].strip(), "synonym", value) for p in phrases
                      if p.split("|")[-1].strip() != value]
    return KnowledgeGraph(tuple(edges))


def compose_with_graph(graph: KnowledgeGraph, p_shape: torch.Tensor, p_material: torch.Tensor,
                       class_names: tuple[str, ...] = SHAPE_AND_SOUND.class_names) -> torch.Tensor:
    """Log-scores of every class from attribute posteriors: (N, A), (N, M) -> (N, C).

    score(class) = log p(shape of class) + log sum over materials of its family of p(material): the graph says
    which values make each class, so a class never seen in training gets a score like any other.
    """
    if p_shape.shape[1:] != (len(ATTRIBUTES["shape"]),) or p_material.shape[1:] != (len(ATTRIBUTES["material"]),):
        raise ValueError(f"p_shape must be (N, {len(ATTRIBUTES['shape'])}) and p_material "
                         f"(N, {len(ATTRIBUTES['material'])}), got {tuple(p_shape.shape)}, {tuple(p_material.shape)}")
    family_of = torch.zeros(len(ATTRIBUTES["material"]), len(FAMILIES))           # (M, F) 0/1 from the graph
    for m, material in enumerate(ATTRIBUTES["material"]):
        for family in graph.tails(material, "sound_family"):
            family_of[m, FAMILIES.index(family)] = 1.0
    p_family = p_material @ family_of                                             # (N, F)
    cols = [graph.parts(c) for c in class_names]
    shape_idx = torch.tensor([ATTRIBUTES["shape"].index(s) for s, _ in cols])
    family_idx = torch.tensor([FAMILIES.index(f) for _, f in cols])
    return p_shape[:, shape_idx].clamp_min(1e-12).log() + p_family[:, family_idx].clamp_min(1e-12).log()  # (N, C)


def remove_prior(p: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Posteriors (N, K) learned under a training prior (K,) turned into those of a uniform prior (Bayes' rule)."""
    q = p / prior.clamp_min(1e-12)
    return q / q.sum(1, keepdim=True)


def rule_features(p_shape: torch.Tensor, p_material: torch.Tensor) -> torch.Tensor:
    """The baseline rule's inputs: log-posteriors and their pairwise products: (N, A + M + A*M)."""
    ls, lm = p_shape.clamp_min(1e-6).log(), p_material.clamp_min(1e-6).log()
    pair = (p_shape[:, :, None] * p_material[:, None, :]).flatten(1)              # (N, A*M)
    return torch.cat([ls, lm, pair], 1)


def fit_rule(features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300,
             lr: float = 0.1, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression (full batch, Adam) from rule features (N, K) to labels (N,)."""
    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, K) with one label per row, got {tuple(features.shape)}, "
                         f"{len(labels)} labels")
    torch.manual_seed(seed)
    rule = nn.Linear(features.shape[1], num_classes)
    opt = torch.optim.Adam(rule.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(rule(features), labels).backward()
        opt.step()
    return rule.eval()


def bayes_by_class(world: World, modalities) -> np.ndarray:
    """Exact accuracy of the Bayes classifier of ``modalities`` on the scenes of each class: (C,).

    Ties (several labels equally probable given the observation) are broken at random, so the value is the
    expected accuracy of that randomised Bayes rule, the same whichever order the classes are listed in.
    """
    from .data.bayes import _check_subset, observation_key
    from .data.world import Scenes
    subset = _check_subset(world, modalities)
    attrs, events, prob = _states(world)                                          # {a: (K,)}, {e: (K,)}, (K,)
    states = Scenes(attrs, events, world.label_rule(attrs))
    keys, inverse = np.unique(observation_key(world, states, subset), return_inverse=True)
    table = np.zeros((len(keys), world.label_rule.num_classes))                   # (O, C) P(obs, label)
    np.add.at(table, (inverse, states.label), prob)
    best = np.isclose(table, table.max(1, keepdims=True), rtol=1e-9, atol=0)      # (O, C) the argmax set
    share = best / best.sum(1, keepdims=True)                                     # (O, C) P(choose c | obs)
    correct = share[inverse, states.label] * prob                                 # (K,)
    mass = np.bincount(states.label, prob, minlength=world.label_rule.num_classes)
    return np.bincount(states.label, correct, minlength=world.label_rule.num_classes) / mass


def sample_scenes(world: World, n: int, seed: int, keep=None):
    """``n`` scenes (those whose label is in ``keep``, if given, drawn until n), image (N, 3, S, S) uint8 and
    audio features (N, 2 mel bands): the strike's :func:`mmcourse.encoders.spectral_summary`."""
    _check_positive_n(n)
    scene_rng, image_rng, audio_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    scenes = world.sample(n if keep is None else 2 * n, scene_rng)
    if keep is not None:
        rows = np.flatnonzero(np.isin(scenes.label, list(keep)))
        if len(rows) < n:
            raise ValueError(f"only {len(rows)} of {2 * n} scenes have a kept label; keep more classes")
        scenes = scenes[rows[:n]]
    images = render_images(scenes, world.config.image_size, image_rng)
    audio = spectral_summary(torch.from_numpy(render_audio(scenes, world.config, audio_rng)),
                             world.config.sample_rate)
    return scenes, torch.from_numpy(images), audio


# ============================================================================ profile sizes

@dataclass(frozen=True)
class FrontiersConfig:
    """The chapter's sizes in one profile.

    Attributes:
        source: labelled source images (domain adaptation) and seen-combination scenes (knowledge graph).
        target: unlabelled target images.
        test: test images of the target and test scenes of the graph part.
        epochs: passes over the training rows of each model.
        batch_size: rows per optimizer step.
        lr: peak learning rate (short warm-up, cosine decay: :class:`mmcourse.training.TrainConfig`).
        dim: width D of the image features.
        widths: channels of the image CNN's three blocks (small: the images are simple).
        hidden: width of the domain classifier's hidden layer and the material classifier's.
        coral_weight: weight of the CORAL distance (the features' covariances are small numbers).
        dann_weight: weight of the domain classifier's loss.
        per_class: labelled target images per class for fine-tuning.
        seeds: seeds of the adaptation runs (the spread of noisy methods).
    """

    source: int
    target: int
    test: int
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    dim: int = 32
    widths: tuple[int, int, int] = (8, 16, 16)
    hidden: int = 32
    coral_weight: float = 10.0
    dann_weight: float = 1.0
    per_class: int = 5
    seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self):
        _check_positive(self, ("source", "target", "test", "epochs", "batch_size", "dim", "hidden", "per_class"))
        if not self.seeds:
            raise ValueError("FrontiersConfig.seeds must hold at least one seed")


FRONTIERS: dict[str, FrontiersConfig] = {
    "smoke": FrontiersConfig(source=1000, target=1000, test=1000, epochs=2, seeds=(0,)),
    # 6 epochs: at 4, DANN's domain loss was still falling and it closed 52 % of the gap over seeds 0-2 (61 % at 6)
    "default": FrontiersConfig(source=4000, target=4000, test=3000, epochs=6, seeds=(0, 1, 2)),
    "full": FrontiersConfig(source=40000, target=40000, test=20000, epochs=15, batch_size=128, dim=64,
                            widths=(16, 32, 64), hidden=128, seeds=(0, 1, 2, 3, 4)),
}


def frontiers_config(profile=None) -> FrontiersConfig:
    """The :class:`FrontiersConfig` of a profile (a name, a :class:`mmcourse.config.Profile` or None)."""
    return _table_entry(FRONTIERS, profile, "frontiers")[1]


def target_world(image_size: int = 32) -> World:
    """The domain-adaptation world: the course's scenes labelled ``colour_and_size``."""
    return World(WorldConfig(image_size=image_size, label_rule=COLOUR_AND_SIZE.name))
