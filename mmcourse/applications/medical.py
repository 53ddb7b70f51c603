"""Chapter 12's world: a scan and a patient record, a disease at about 10 % prevalence.

The world is a :class:`~mmcourse.applications.discrete.DiscreteWorld`. A patient has an age band, a gene flag
and a tissue density (fatty or dense); the disease depends on age and gene; a lab marker depends on the
disease; the scan shows a lesion as ``none``, ``faint`` or ``clear``, which depends on the disease *and* the
density: in dense tissue a lesion is visible less often (the harder subgroup of section 5 of the chapter).

Two sensors:

- **image** observes (density, lesion): a 3 x 32 x 32 grey scan whose background level shows the density and
  whose Gaussian blob (none, faint or clear contrast) shows the lesion;
- **record** observes (age, gene, lab): a (3,) row of age in years, the lab marker's value and the gene flag.

Renders add only what carries no information: the lesion's position, the years and lab units within a band
(nuisance variables, independent of everything), and pixel noise. Each observed value stays unambiguous in its
render (the bands do not overlap; a faint blob stands well above the noise; tested with a decoder), so the exact
Bayes posterior given the observed variables is the ceiling of any model of the renders.

Also here: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), the population
ECE of a Bayes table, a subgroup's Bayes table, the chapter's profile sizes, the models and a reliability
diagram.

Shape letters: N cases, B batch, S image side, F record fields, C = 2 classes (healthy, disease), O distinct
observations.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..config import _check_positive, _table_entry
from ..data import make_loader
from ..encoders import CNNImageEncoder, MLPTabularEncoder
from ..evaluation import run_batches
from ..fusion import ConcatFusion, FeatureDataset, FusionModel, LateFusion
from ..training import TrainConfig, train
from .discrete import BayesTable, DiscreteWorld, Variable, check_cases, uniform

# ----------------------------------------------------------------------------- the world

DENSITY = ("fatty", "dense")
AGE_BANDS = ("<50", "50-64", "65+")
GENE = ("absent", "present")
DISEASE = ("healthy", "disease")
LAB = ("normal", "borderline", "high")
LESION = ("none", "faint", "clear")
SENSORS = ("image", "record")


@dataclass(frozen=True)
class MedicalWorldConfig:
    """The CPTs of the world (every row a probability distribution).

    The defaults give a prevalence of 9.7 %; they are made up for teaching, shaped like screening data
    (risk rising with age, a rare high-risk gene, lesions hidden more often by dense tissue).
    """

    density: tuple[float, ...] = (0.6, 0.4)                     # P(fatty), P(dense)
    age: tuple[float, ...] = (0.45, 0.35, 0.20)                 # P(age band)
    gene: tuple[float, ...] = (0.92, 0.08)                      # P(gene flag)
    risk: tuple[float, ...] = (0.04, 0.09, 0.16)                # P(disease | age band, no gene)
    gene_risk: tuple[float, ...] = (0.20, 0.30, 0.40)           # P(disease | age band, gene)
    lab_healthy: tuple[float, ...] = (0.75, 0.20, 0.05)         # P(lab | healthy)
    lab_disease: tuple[float, ...] = (0.25, 0.35, 0.40)         # P(lab | disease)
    lesion_healthy: tuple[float, ...] = (0.92, 0.06, 0.02)      # P(lesion | healthy), either density
    lesion_fatty: tuple[float, ...] = (0.15, 0.25, 0.60)        # P(lesion | disease, fatty)
    lesion_dense: tuple[float, ...] = (0.40, 0.35, 0.25)        # P(lesion | disease, dense): hidden more often


# Nuisance: where the lesion sits (a grid of positions) and the jitter of the record's values within a band.
POSITIONS = 8                       # lesion centre on an 8 x 8 grid of pixels ...
POSITION_START, POSITION_STEP = 8, 2  # ... at 8, 10, ..., 22 (inside a 32-pixel side, a blob of radius ~4 fits)
AGE_START = (35, 50, 65)            # a band's first year; every band spans AGE_SPAN years
AGE_SPAN = 15
LAB_START = (0.0, 10.0, 20.0)       # a lab band's lowest value (arbitrary units); every band spans LAB_SPAN
LAB_SPAN = 10


def medical_world(config: MedicalWorldConfig = MedicalWorldConfig()) -> DiscreteWorld:
    """The chapter's world: label ``disease``; ``image`` observes (density, lesion), ``record`` (age, gene, lab)."""
    disease = np.array([[[1 - r, r] for r in (config.risk[a], config.gene_risk[a])] for a in range(len(AGE_BANDS))])
    lesion = np.array([[config.lesion_healthy, config.lesion_healthy], [config.lesion_fatty, config.lesion_dense]])
    variables = [
        Variable("density", DENSITY, (), np.array(config.density)),
        Variable("age", AGE_BANDS, (), np.array(config.age)),
        Variable("gene", GENE, (), np.array(config.gene)),
        Variable("disease", DISEASE, ("age", "gene"), disease),                   # (age, gene, C)
        Variable("lab", LAB, ("disease",), np.array([config.lab_healthy, config.lab_disease])),
        Variable("lesion", LESION, ("disease", "density"), lesion),               # (C, density, lesion)
    ]
    nuisance = [uniform("lesion_x", POSITIONS), uniform("lesion_y", POSITIONS),
                uniform("age_jitter", AGE_SPAN), uniform("lab_jitter", LAB_SPAN)]
    return DiscreteWorld(variables, "disease", {"image": ("density", "lesion"), "record": ("age", "gene", "lab")},
                         nuisance=nuisance)


# ----------------------------------------------------------------------------- rendering

IMAGE_SIZE = 32
BACKGROUND = (0.25, 0.55)           # grey level of fatty and of dense tissue
LESION_CONTRAST = (0.0, 0.15, 0.40)  # blob peak above the background: none, faint, clear
LESION_SIGMA = 1.5                  # blob width (pixels)
PIXEL_NOISE = 0.03                  # std of the Gaussian pixel noise: a faint blob's peak is 5 of them
RECORD_FIELDS = ("age_years", "lab_value", "gene_flag")


def render_images(cases: Mapping[str, np.ndarray], seed: int = 0) -> torch.Tensor:
    """Scans of the cases: (N, 3, S, S) float32 in [0, 1], three equal channels (a grey image).

    The background level shows ``density``, a Gaussian blob at (``lesion_x``, ``lesion_y``) with the contrast
    of ``lesion`` shows the lesion; pixel noise comes from ``seed``.
    """
    n = check_cases(cases, ("density", "lesion", "lesion_x", "lesion_y"))
    grid = torch.arange(IMAGE_SIZE, dtype=torch.float32)                                 # (S,)
    cx = torch.as_tensor(POSITION_START + POSITION_STEP * cases["lesion_x"], dtype=torch.float32)  # (N,)
    cy = torch.as_tensor(POSITION_START + POSITION_STEP * cases["lesion_y"], dtype=torch.float32)
    blob = torch.exp(-((grid[None, None, :] - cx[:, None, None]) ** 2
                       + (grid[None, :, None] - cy[:, None, None]) ** 2) / (2 * LESION_SIGMA**2))  # (N, S, S)
    level = torch.tensor(BACKGROUND)[torch.as_tensor(cases["density"])]                   # (N,)
    contrast = torch.tensor(LESION_CONTRAST)[torch.as_tensor(cases["lesion"])]            # (N,)
    noise = torch.randn(n, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    image = (level[:, None, None] + contrast[:, None, None] * blob + PIXEL_NOISE * noise).clamp(0, 1)
    return image[:, None].expand(n, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous()              # (N, 3, S, S)


def render_records(cases: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Patient records: (N, F) float32 rows [age in years, lab value, gene flag]; bands never overlap."""
    check_cases(cases, ("age", "gene", "lab", "age_jitter", "lab_jitter"))
    age = np.asarray(AGE_START)[cases["age"]] + cases["age_jitter"]                       # (N,) years
    lab = np.asarray(LAB_START)[cases["lab"]] + cases["lab_jitter"] + 0.5                 # (N,) units
    return torch.as_tensor(np.stack([age, lab, cases["gene"]], axis=1), dtype=torch.float32)


@dataclass
class MedicalSplit:
    """Sampled cases and their renders.

    Attributes:
        cases: {variable: (N,) int64}, nuisance variables included.
        data: the model inputs {"image": (N, 3, S, S), "record": (N, F)} and labels (N,), batched by
            :func:`mmcourse.data.make_loader`.
    """

    cases: dict[str, np.ndarray]
    data: FeatureDataset

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64: 1 = disease."""
        return self.cases["disease"]


def make_split(world: DiscreteWorld, n: int, seed: int) -> MedicalSplit:
    """``n`` cases drawn with ``seed`` and rendered (the same seed gives the same split)."""
    cases = world.sample(n, np.random.default_rng(seed))
    inputs = {"image": render_images(cases, seed), "record": render_records(cases)}
    return MedicalSplit(cases, FeatureDataset(inputs, torch.as_tensor(cases["disease"])))


def make_splits(world: DiscreteWorld, sizes: Mapping[str, int], seed: int) -> dict[str, MedicalSplit]:
    """One split per name in ``sizes`` (e.g. train, dev, test), each from its own seed."""
    return {name: make_split(world, n, seed * 1000 + i) for i, (name, n) in enumerate(sizes.items())}


# ----------------------------------------------------------------------------- Bayes tables for the chapter

def population_ece(table: BayesTable, bins: int = 10, positive: int = 1) -> float:
    """The ECE of the Bayes posterior in the population, with ``bins`` equal-width bins (it is 0: within any bin,
    the positive rate is the mass-weighted mean of the posterior, by definition of the posterior)."""
    s = table.posterior[:, positive]                                                        # (O,)
    index = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    mass = np.bincount(index, weights=table.weight, minlength=bins)
    rate = np.bincount(index, weights=table.joint[:, positive], minlength=bins)             # P(bin, positive)
    mean = np.bincount(index, weights=table.weight * s, minlength=bins)                     # E[s; bin]
    return float(np.abs(rate - mean).sum()) if mass.sum() else 0.0


# ----------------------------------------------------------------------------- temperature scaling

TEMPERATURE_RANGE = (0.05, 20.0)    # search interval of T; a fitted T at an end means the logits carry no signal
TEMPERATURE_TOL = 1e-6              # golden-section stop: width of the interval of 1/T


def scaled_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T): (N, C), (N,) -> float."""
    return float(nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on held-out (dev) data.

    The NLL is convex in beta = 1 / T (a log-sum-exp of linear functions of beta, minus a linear one), so a
    golden-section search over beta finds the minimum in ``TEMPERATURE_RANGE``.

    Args:
        logits: (N, C) float, the model's logits on the dev split.
        labels: (N,) int64 in [0, C).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits must be finite")
    lo, hi = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]          # beta interval
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = scaled_nll(logits, labels, 1 / a), scaled_nll(logits, labels, 1 / b)
    while hi - lo > TEMPERATURE_TOL:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = scaled_nll(logits, labels, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = scaled_nll(logits, labels, 1 / b)
    return float(2 / (lo + hi))


def positive_probability(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """P(disease) = softmax(logits / T)[:, 1]: (N, 2) -> (N,) float64 NumPy."""
    return torch.softmax(logits.double() / temperature, dim=1)[:, 1].numpy()


# ----------------------------------------------------------------------------- profile sizes and models

@dataclass(frozen=True)
class MedicalConfig:
    """Sizes of chapter 12 per profile.

    Attributes:
        train, dev, test: cases per split (dev fits the temperature; test needs ~8000 for an AUROC SE ~0.01
            at 10 % prevalence).
        epochs: passes over the training split.
        batch_size: cases per step.
        lr: Adam's learning rate.
        widths: channels of the image CNN's three conv blocks (a blob and a grey level need few).
        dim: width of each encoder's features and of the fusion.
    """

    train: int
    dev: int
    test: int
    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    widths: tuple[int, ...] = (8, 16, 32)
    dim: int = 32

    def __post_init__(self):
        _check_positive(self, ("train", "dev", "test", "epochs", "batch_size", "dim"))


MEDICAL: dict[str, MedicalConfig] = {
    "smoke": MedicalConfig(train=2000, dev=1000, test=2000, epochs=3, batch_size=64),
    "default": MedicalConfig(train=16000, dev=4000, test=8000, epochs=5),
    "full": MedicalConfig(train=40000, dev=10000, test=20000, epochs=8, widths=(16, 32, 64), dim=64),
}


def medical_config(profile=None) -> MedicalConfig:
    """The sizes of the profile (a name, a :class:`~mmcourse.config.Profile` or None for ``$MMCOURSE_PROFILE``)."""
    return _table_entry(MEDICAL, profile, "medical")[1]


MODELS = ("record", "image", "concat", "late")     # record only, image only, concatenation fusion, late fusion


def build_model(kind: str, config: MedicalConfig) -> FusionModel:
    """A model of the course's parts: logits (B, 2) from {"image": (B, 3, S, S), "record": (B, F)}.

    ``record``: MLP on the record; ``image``: the CNN; ``concat``: both, features concatenated (chapter 05);
    ``late``: both, one head each, logits averaged.
    """
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; valid: {', '.join(MODELS)}")
    encoders = {"image": CNNImageEncoder(dim=config.dim, widths=config.widths),
                "record": MLPTabularEncoder(len(RECORD_FIELDS), dim=config.dim, hidden=config.dim)}
    if kind in SENSORS:
        encoders = {kind: encoders[kind]}
    dims = {m: config.dim for m in encoders}
    fusion = LateFusion(dims, config.dim, len(DISEASE)) if kind == "late" else ConcatFusion(dims, config.dim)
    return FusionModel(fusion, len(DISEASE), encoders)


def own_inputs(model: FusionModel, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``inputs`` that ``model`` reads (a record-only model is not handed the image)."""
    return {m: inputs[m] for m in model.modalities}


def sensor_loss(model: FusionModel, batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the model's logits (B, 2) on the sensors it reads, for :func:`mmcourse.training.train`;
    with ``label_smoothing`` e the target is (1 - e) one-hot + e / 2 (Szegedy et al. 2016, chapter 03)."""
    inputs, target = batch
    return nn.functional.cross_entropy(model(own_inputs(model, inputs)), target, label_smoothing=label_smoothing)


def train_model(model: FusionModel, split: MedicalSplit, config: MedicalConfig, device, seed: int = 0,
                label_smoothing: float = 0.0):
    """Cross-entropy training with the course's loop (Adam, cosine schedule); returns the History."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    loader = make_loader(split.data, config.batch_size, shuffle=True, seed=seed)
    cfg = TrainConfig(epochs=config.epochs, lr=config.lr, log_every=len(loader), progress=False)
    return train(model, functools.partial(sensor_loss, label_smoothing=label_smoothing), loader, cfg, device)


def predict_logits(model: FusionModel, split: MedicalSplit, device) -> torch.Tensor:
    """The model's logits (N, 2) on a split, float32 on the CPU."""
    return run_batches(model, lambda m, batch: m(own_inputs(m, batch[0])), split.data, device).float()


# ----------------------------------------------------------------------------- a reliability diagram

def plot_reliability(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, bins: int = 10, ax=None):
    """Reliability diagram: per model, the positive rate against the mean P(disease) in equal-width bins.

    Args:
        curves: name -> (probs (N,), labels (N,)); the legend gives each curve's ECE.
    """
    import matplotlib.pyplot as plt

    from ..metrics import reliability_bins

    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for name, (probs, labels) in curves.items():
        r = reliability_bins(probs, labels, bins)
        ok = r["count"] > 0
        ax.plot(r["mean_prob"][ok], r["rate"][ok], marker="o", label=f"{name} (ECE {float(r['ece']):.3f})")
    ax.set_xlabel("mean predicted P(disease) in the bin")
    ax.set_ylabel("observed disease rate in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return ax.figure


def draw_temperature_scaling(model: FusionModel, inputs: Mapping[str, torch.Tensor],
                             title: str = "Temperature scaling: one scalar T, fitted on the dev split by NLL; "
                                          "the model stays frozen"):
    """The data flow of temperature scaling, with the shapes of a forward pass of ``model`` on ``inputs``."""
    import matplotlib.pyplot as plt

    from ..diagrams import Box, format_shape, render

    mode = model.training
    model.eval()
    with torch.no_grad():
        logits = model(own_inputs(model, inputs))                                         # (B, 2)
    model.train(mode)
    b = len(logits)
    shown = "\n".join(f"{m} {format_shape(x.shape, b)}" for m, x in own_inputs(model, inputs).items())
    boxes = {"x": Box("inputs", (0.0, 1.0), shown, "data"),
             "model": Box("trained model", (2.4, 1.0), f"{type(model.fusion).__name__}, frozen", "frozen"),
             "div": Box("z / T", (4.8, 1.0), "T: one learned scalar", "trained"),
             "soft": Box("softmax", (7.0, 1.0), "column 1", "op"),
             "p": Box("P(disease)", (9.2, 1.0), "calibrated risk", "data"),
             "y": Box("dev labels", (7.0, -0.4), format_shape((b,), b), "data"),
             "nll": Box("NLL", (9.2, -0.4), "minimised over T", "op")}
    arrows = [("x", "model", ""), ("model", "div", "logits " + format_shape(logits.shape, b)),
              ("div", "soft", format_shape(logits.shape, b)), ("soft", "p", format_shape(logits[:, 1].shape, b)),
              ("p", "nll", ""), ("y", "nll", ""), ("nll", "div", "dNLL/dT")]
    fig, ax = plt.subplots(figsize=(11, 3.0))
    render(ax, boxes, arrows, title, xlim=(-1.2, 10.4), ylim=(-1.0, 1.7))
    fig.tight_layout()
    return fig
