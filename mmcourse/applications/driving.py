"""Chapter 13, driving: camera, lidar and radar fused to name the obstacle ahead, when sensors fail.

The world (:func:`driving_world`) is a small Bayesian network of discrete variables
(:class:`mmcourse.applications.discrete.DiscreteWorld`). The label is the obstacle's class (car, pedestrian,
cyclist) and its distance band (near, far): six values. Three sensors observe it:

- the **camera** sees the weather (``fog``) and the object's shape (``camera_sees``), which it misreads 5 % of
  the time; in fog it still sends an image, a grey one in which the object is hidden (a *silent* failure:
  the image arrives, and the model must notice that it is useless);
- the **lidar** measures the range band (``lidar_range``, right 90 % of the time) and the footprint of its
  returns (``lidar_footprint``: wide for a car, narrow for a pedestrian or a cyclist; at far range the cloud is
  often too sparse to tell);
- the **radar** measures range (``radar_range``) and speed (``radar_speed``, which tells the classes apart
  only roughly); a noisy radar (``radar_state``, a silent failure that shows as clutter returns) reports a
  random range.

A *flagged* failure, such as a dropped lidar, removes the sensor: the model gets a presence mask, and the
limit is the Bayes accuracy of the sensors that remain (``world.table(subset).accuracy()``).

Renders (:func:`render`) show the observed variables unambiguously and nothing else (positions, colours,
jitter and clutter are nuisance noise): a camera image (3, S, S), a lidar range profile of ``LIDAR_BEAMS``
beams, and ``RADAR_POINTS`` radar points of (range, speed, amplitude). So the exact Bayes posterior given the
observed variables is the true ceiling of any model.

:class:`ReliabilityGatedFusion` extends chapter 05's gated fusion: each sensor gets an independent
per-sample trust in (0, 1) (a sigmoid, not a softmax), so several reliable sensors can all count fully and a
fogged camera can be closed without taking weight from the others.

Shape letters: N cases, K enumerated states, B batch, S image side, M sensors, D feature width, H fused
width, C label values.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..config import _check_fraction, _check_positive, _table_entry
from ..data.dataset import BatchedDataset, make_loader
from ..encoders import CNNImageEncoder, MLPTabularEncoder
from ..evaluation import run_batches
from ..fusion import ConcatFusion, FusionModel, GatedFusion, SumFusion
from ..metrics import bootstrap_se
from ..training import TrainConfig, classification_loss, train
from .discrete import DiscreteWorld, Variable, check_cases, deterministic, uniform

SENSORS = ("camera", "lidar", "radar")                 # sorted: the columns of a presence mask
CLASSES = ("car", "pedestrian", "cyclist")
BANDS = ("near", "far")
LABELS = tuple(f"{c} {b}" for c in CLASSES for b in BANDS)   # label index = 2 * class + band

# ----------------------------------------------------------------------------- the world's numbers
CLASS_PRIOR = (0.4, 0.33, 0.27)     # cars are the most common obstacle, then pedestrians
BAND_PRIOR = (0.45, 0.55)           # slightly more obstacles far than near (so no two labels tie a posterior)
FOG_RATE = 0.25                     # camera: share of scenes in fog (a silent failure: the image still arrives)
CAMERA_CORRECT = 0.95               # camera in clear weather: reads the class right, else one of the other two
LIDAR_RANGE_CORRECT = 0.9           # lidar: range band right
FOOTPRINT_CORRECT = 0.9             # lidar: wide for a car, narrow otherwise, when the cloud is dense enough
FAR_SPARSE = 0.6                    # lidar: at far range the cloud is too sparse to show a footprint this often
NOISY_RATE = 0.25                   # radar: share of scenes with a noisy radar (range random, shown as clutter)
RADAR_RANGE_CORRECT = 0.85          # clean radar: range band right
RADAR_SPEED = ((0.1, 0.3, 0.6),     # P(slow, medium, fast | car)
               (0.8, 0.2, 0.0),     # pedestrian
               (0.2, 0.6, 0.2))     # cyclist

# ----------------------------------------------------------------------------- the renders
IMAGE_SIZE = 32
MIN_IMAGE_SIZE = 24                 # the widest object and the position grid need this much room
PIXEL_NOISE = 0.03                  # std of the Gaussian noise on every pixel (camera) and beam (lidar)
ROAD, FOG_GREY = 0.15, 0.75         # background brightness: a dark road in clear weather, bright grey in fog
OBJECT_COLOURS = ((0.95, 0.2, 0.2), (0.95, 0.9, 0.2), (0.2, 0.9, 0.95))   # nuisance: red, yellow, cyan
CAR_BOX, PEDESTRIAN_BOX = (14, 6), (3, 12)   # (width, height) in pixels; a cyclist is a disc
CYCLIST_RADIUS = 5
POSITIONS = 6                       # nuisance: object positions per axis
LIDAR_BEAMS = 32
LIDAR_DEPTH = (0.25, 0.6)           # normalised range of the object's returns per band; the background is 1.0
FOOTPRINT_BEAMS = (10, 3, 1)        # beams hit by a wide, narrow, sparse footprint
RADAR_POINTS = 4                    # point 0 is the target; the others are clutter (noisy) or empty (clean)
RADAR_RANGE = ((0.1, 0.3), (0.6, 0.9))   # normalised target range interval per band
RADAR_SPEEDS = (0.05, 0.4, 0.8)     # normalised speed of slow, medium, fast
SPEED_JITTER = 0.05                 # half-width of the speed's nuisance jitter (bands stay apart)
CLUTTER_AMPLITUDE = 0.3             # the target's amplitude is 1
JITTER_LEVELS = 5                   # nuisance: discrete jitter levels of the radar target


def _cpt(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def driving_world() -> DiscreteWorld:
    """The chapter's world: label ``obstacle`` (6 values), sensors camera, lidar and radar."""
    other = (1 - CAMERA_CORRECT) / 2
    camera = np.zeros((3, 2, 4))                                    # (class, fog, seen)
    for c in range(3):
        camera[c, 0, :3] = other
        camera[c, 0, c] = CAMERA_CORRECT
        camera[c, 1, 3] = 1.0                                       # in fog the camera sees nothing
    r, f = LIDAR_RANGE_CORRECT, FOOTPRINT_CORRECT
    dense = {0: (f, 1 - f), 1: (1 - f, f), 2: (1 - f, f)}           # (wide, narrow) per class
    footprint = np.zeros((3, 2, 3))                                 # (class, band, footprint)
    for c, (wide, narrow) in dense.items():
        footprint[c, 0] = (wide, narrow, 0.0)
        footprint[c, 1] = ((1 - FAR_SPARSE) * wide, (1 - FAR_SPARSE) * narrow, FAR_SPARSE)
    q = RADAR_RANGE_CORRECT
    radar_range = np.zeros((2, 2, 2))                               # (band, state, range)
    radar_range[:, 0] = ((q, 1 - q), (1 - q, q))
    radar_range[:, 1] = 0.5                                         # noisy: the range is random
    variables = [
        Variable("obstacle_class", CLASSES, (), _cpt(CLASS_PRIOR)),
        Variable("distance_band", BANDS, (), _cpt(BAND_PRIOR)),
        deterministic("obstacle", LABELS, ("obstacle_class", "distance_band"), lambda c, b: 2 * c + b),
        Variable("fog", ("clear", "fog"), (), _cpt((1 - FOG_RATE, FOG_RATE))),
        Variable("camera_sees", CLASSES + ("nothing",), ("obstacle_class", "fog"), camera),
        Variable("lidar_range", BANDS, ("distance_band",), _cpt(((r, 1 - r), (1 - r, r)))),
        Variable("lidar_footprint", ("wide", "narrow", "sparse"), ("obstacle_class", "distance_band"), footprint),
        Variable("radar_state", ("clean", "noisy"), (), _cpt((1 - NOISY_RATE, NOISY_RATE))),
        Variable("radar_range", BANDS, ("distance_band", "radar_state"), radar_range),
        Variable("radar_speed", ("slow", "medium", "fast"), ("obstacle_class",), _cpt(RADAR_SPEED)),
    ]
    nuisance = [uniform("camera_x", POSITIONS), uniform("camera_y", POSITIONS),
                uniform("camera_colour", len(OBJECT_COLOURS)), uniform("lidar_start", POSITIONS),
                uniform("radar_jitter", JITTER_LEVELS)]
    observes = {"camera": ("fog", "camera_sees"), "lidar": ("lidar_range", "lidar_footprint"),
                "radar": ("radar_state", "radar_range", "radar_speed")}
    return DiscreteWorld(variables, "obstacle", observes, nuisance)


# ----------------------------------------------------------------------------- renders

def render_camera(cases: Mapping[str, np.ndarray], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The camera image: (N, 3, S, S) float32, about [0, 1] plus noise. Fog: bright grey, no object."""
    check_cases(cases, ("fog", "camera_sees", "camera_x", "camera_y", "camera_colour"))
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"the camera image needs a side of at least {MIN_IMAGE_SIZE} pixels, got {size}")
    seen, fog = np.asarray(cases["camera_sees"]), np.asarray(cases["fog"]).astype(bool)
    span_x, span_y = size - CAR_BOX[0] - 4, size - PEDESTRIAN_BOX[1] - 4          # room for the centres
    cx = 2 + CAR_BOX[0] // 2 + np.asarray(cases["camera_x"]) * span_x // (POSITIONS - 1)          # (N,)
    cy = 2 + PEDESTRIAN_BOX[1] // 2 + np.asarray(cases["camera_y"]) * span_y // (POSITIONS - 1)   # (N,)
    yy, xx = np.mgrid[:size, :size]                                                  # (S, S)
    dx, dy = np.abs(xx[None] - cx[:, None, None]), np.abs(yy[None] - cy[:, None, None])   # (N, S, S)
    box = lambda wh: (2 * dx < wh[0]) & (2 * dy < wh[1])
    kind = seen[:, None, None]
    shape = np.select([kind == 0, kind == 1, kind == 2],
                      [box(CAR_BOX), box(PEDESTRIAN_BOX), dx ** 2 + dy ** 2 <= CYCLIST_RADIUS ** 2], False)
    colour = np.asarray(OBJECT_COLOURS)[np.asarray(cases["camera_colour"])]           # (N, 3)
    background = np.where(fog, FOG_GREY, ROAD)[:, None, None, None]                   # (N, 1, 1, 1)
    image = np.where(shape[:, None], colour[:, :, None, None], background)            # (N, 3, S, S)
    return (image + PIXEL_NOISE * rng.standard_normal(image.shape)).astype(np.float32)


def render_lidar(cases: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The lidar range profile: (N, LIDAR_BEAMS) float32; 1.0 (plus noise) where a beam sees no object."""
    n = check_cases(cases, ("lidar_range", "lidar_footprint", "lidar_start"))
    width = np.asarray(FOOTPRINT_BEAMS)[np.asarray(cases["lidar_footprint"])]       # (N,)
    start = np.asarray(cases["lidar_start"]) * (LIDAR_BEAMS - max(FOOTPRINT_BEAMS)) // (POSITIONS - 1)
    beam = np.arange(LIDAR_BEAMS)[None]                                               # (1, LIDAR_BEAMS)
    hit = (beam >= start[:, None]) & (beam < (start + width)[:, None])                # (N, LIDAR_BEAMS)
    depth = np.asarray(LIDAR_DEPTH)[np.asarray(cases["lidar_range"])]                 # (N,)
    profile = np.where(hit, depth[:, None], 1.0)
    return (profile + PIXEL_NOISE * rng.standard_normal((n, LIDAR_BEAMS))).astype(np.float32)


def render_radar(cases: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The radar points: (N, 3 RADAR_POINTS) float32; point p at columns 3p..3p+2 = (range, speed, amplitude).

    Point 0 is the target (amplitude 1). A noisy radar adds clutter points (amplitude ``CLUTTER_AMPLITUDE``)
    at random ranges and speeds; a clean one leaves those slots empty (all zeros).
    """
    n = check_cases(cases, ("radar_state", "radar_range", "radar_speed", "radar_jitter"))
    interval = np.asarray(RADAR_RANGE)[np.asarray(cases["radar_range"])]            # (N, 2)
    frac = np.asarray(cases["radar_jitter"]) / (JITTER_LEVELS - 1)                    # (N,) in [0, 1]
    target_range = interval[:, 0] + frac * (interval[:, 1] - interval[:, 0])
    target_speed = np.asarray(RADAR_SPEEDS)[np.asarray(cases["radar_speed"])] + SPEED_JITTER * (2 * frac - 1)
    points = np.zeros((n, RADAR_POINTS, 3))
    points[:, 0] = np.stack([target_range, target_speed, np.ones(n)], 1)
    clutter = rng.random((n, RADAR_POINTS - 1, 2))          # drawn for every case: same seed, same numbers
    noisy = np.asarray(cases["radar_state"]).astype(bool)
    points[noisy, 1:, :2] = clutter[noisy]
    points[noisy, 1:, 2] = CLUTTER_AMPLITUDE
    return points.reshape(n, -1).astype(np.float32)


def render(cases: Mapping[str, np.ndarray], rng: np.random.Generator, image_size: int = IMAGE_SIZE
           ) -> dict[str, torch.Tensor]:
    """Every sensor's render: {"camera": (N, 3, S, S), "lidar": (N, LIDAR_BEAMS), "radar": (N, 3 RADAR_POINTS)}."""
    out = {"camera": render_camera(cases, rng, image_size), "lidar": render_lidar(cases, rng),
           "radar": render_radar(cases, rng)}
    return {m: torch.from_numpy(x) for m, x in out.items()}


class DrivingScenes(BatchedDataset):
    """Rendered scenes served in whole batches ``({sensor: (B, ...)}, labels (B,))``.

    Attributes:
        inputs: {sensor: (N, ...) float32}, sorted by sensor.
        labels: (N,) int64, the obstacle (class and band, ``LABELS``).
        cases: {variable: (N,) int64}, every sampled variable (for conditions and Bayes posteriors).
    """

    def __init__(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, cases: Mapping[str, np.ndarray]):
        self.inputs = {m: inputs[m] for m in sorted(inputs)}
        self.labels = labels
        self.cases = dict(cases)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self.inputs


def make_scenes(world: DiscreteWorld, n: int, seed: int, image_size: int = IMAGE_SIZE) -> DrivingScenes:
    """``n`` scenes sampled and rendered from ``seed`` (the same seed gives the same scenes)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    cases = world.sample(n, rng)
    return DrivingScenes(render(cases, rng, image_size), torch.from_numpy(cases[world.label]), cases)


# ----------------------------------------------------------------------------- Bayes limits

def bayes_accuracies(world: DiscreteWorld) -> dict[tuple[str, ...], float]:
    """Exact Bayes accuracy of every sensor subset (population values): {subset: accuracy}."""
    return {s: world.table(s).accuracy() for s in world.subsets()}


def condition_accuracy(world: DiscreteWorld, sensors, variable: str, value: int) -> float:
    """Exact accuracy of the Bayes classifier of ``sensors`` over the scenes where ``variable == value``.

    The classifier is the one of all scenes (it need not see the condition); only the scoring is restricted.
    """
    if variable not in world.variables:
        raise ValueError(f"unknown variable {variable!r}; variables: {list(world.variables)}")
    states, prob = world.states()                                                     # {name: (K,)}, (K,)
    pred = world.posterior(states, sensors).argmax(1)                                 # (K,)
    keep = states[variable] == value
    if not keep.any():
        raise ValueError(f"no state has {variable} = {value}")
    return float((prob * keep * (pred == states[world.label])).sum() / (prob * keep).sum())


def bayes_on(world: DiscreteWorld, scenes: DrivingScenes, sensors, rows=None) -> tuple[float, float]:
    """The Bayes classifier of ``sensors`` scored on ``scenes`` (or its ``rows``, a bool mask (N,)).

    Returns (accuracy, its bootstrap standard error, :func:`mmcourse.metrics.bootstrap_se`).
    """
    correct = world.posterior(scenes.cases, sensors).argmax(1) == scenes.cases[world.label]   # (N,)
    if rows is not None:
        correct = correct[np.asarray(rows, dtype=bool)]
    if len(correct) == 0:
        raise ValueError("no scene to score")
    return float(correct.mean()), bootstrap_se(np.mean, correct.astype(np.float64))


# ----------------------------------------------------------------------------- the reliability gate

class ReliabilityGatedFusion(GatedFusion):
    """Gated fusion whose gate is each sensor's own per-sample trust: ``h = sum_m sigmoid(w_m . f_m + b_m) z_m``.

    Chapter 05's :class:`~mmcourse.fusion.GatedFusion` takes a softmax over the sensors, so their weights
    compete (they sum to 1): when all three are reliable each gets about a third, and closing one hands its
    weight to the others. Here each weight is a sigmoid in (0, 1) of the sensor's own features, so every
    reliable sensor can count fully, and a fogged camera can be closed without changing how much the lidar
    and the radar count. That is the form of the Bayes posterior of sensors that are independent given the
    label: log-probabilities add up, one term per sensor, and a useless sensor's term is flat. A missing
    (flagged) sensor gets weight 0, as in every fusion of the course. The gated multimodal unit of Arevalo et
    al. 2017, "Gated Multimodal Units for Information Fusion", gates with sigmoids too.
    """

    def _weights(self, feats, present) -> torch.Tensor:
        logits = torch.cat([self.gate[m](f) for m, f in zip(self.modalities, feats)], dim=1)  # (B, M)
        return torch.where(present, torch.sigmoid(logits), 0.0)     # (B, M); absent: 0 (even if its logit is NaN)


FUSIONS = {"concat": ConcatFusion, "sum": SumFusion, "gated": GatedFusion, "reliability": ReliabilityGatedFusion}


# ----------------------------------------------------------------------------- profile sizes

@dataclass(frozen=True)
class DrivingConfig:
    """The chapter's sizes in one profile.

    Attributes:
        train: training scenes.
        test: test scenes (the Bayes classifier is scored on the same ones).
        epochs: passes over the training scenes.
        batch_size: scenes per optimizer step.
        lr: peak learning rate (short warm-up, cosine decay: :class:`mmcourse.training.TrainConfig`).
        dim: width D of every sensor's features.
        hidden: width H of the fused vector (and of the tabular encoders' hidden layer).
        camera_widths: channels of the camera CNN's three blocks (small: the shapes are simple).
        modality_dropout: the chance of dropping each sensor of each training scene (one is always kept).
    """

    train: int
    test: int
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    dim: int = 32
    hidden: int = 64
    camera_widths: tuple[int, int, int] = (8, 16, 16)
    modality_dropout: float = 0.3

    def __post_init__(self):
        _check_positive(self, ("train", "test", "epochs", "batch_size", "dim", "hidden"))
        _check_fraction(self, ("modality_dropout",))


DRIVING: dict[str, DrivingConfig] = {
    "smoke": DrivingConfig(train=2000, test=1000, epochs=3, lr=5e-3),
    "default": DrivingConfig(train=6000, test=4000, epochs=6),
    "full": DrivingConfig(train=40000, test=20000, epochs=20, batch_size=128, dim=64, hidden=128,
                          camera_widths=(16, 32, 64)),
}


def driving_config(profile=None) -> DrivingConfig:
    """The :class:`DrivingConfig` of a profile (a name, a :class:`mmcourse.config.Profile` or None)."""
    return _table_entry(DRIVING, profile, "driving")[1]


# ----------------------------------------------------------------------------- models, training, evaluation

def make_fusion(name: str, config: DrivingConfig):
    """The fusion called ``name`` (a key of ``FUSIONS``) over the three sensors' features (D each) to H."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid: {', '.join(FUSIONS)}")
    return FUSIONS[name]({m: config.dim for m in SENSORS}, config.hidden)


def make_model(fusion: str, config: DrivingConfig, dropout: bool) -> FusionModel:
    """A camera CNN, a lidar MLP and a radar MLP, the fusion ``fusion`` and a linear head (6 logits)."""
    encoders = {"camera": CNNImageEncoder(config.dim, config.camera_widths),
                "lidar": MLPTabularEncoder(LIDAR_BEAMS, config.dim, config.hidden),
                "radar": MLPTabularEncoder(3 * RADAR_POINTS, config.dim, config.hidden)}
    return FusionModel(make_fusion(fusion, config), len(LABELS), encoders,
                       modality_dropout=config.modality_dropout if dropout else 0.0)


def fit(model: FusionModel, scenes: DrivingScenes, config: DrivingConfig, device, seed: int = 0):
    """Train ``model`` (already on ``device``) on ``scenes`` with cross-entropy; returns the training History."""
    torch.manual_seed(seed)                                          # modality dropout's draws
    loader = make_loader(scenes, config.batch_size, shuffle=True, seed=seed)
    steps = config.epochs * len(loader)
    train_config = TrainConfig(epochs=config.epochs, lr=config.lr, warmup_steps=min(50, steps // 10),
                               log_every=len(loader))
    return train(model, classification_loss, loader, train_config, device)


def _subset(sensors) -> tuple[str, ...]:
    if isinstance(sensors, str):
        raise TypeError(f"sensors must be a collection of names, got a single str {sensors!r}")
    subset = tuple(sorted(set(sensors)))
    if not subset or any(m not in SENSORS for m in subset):
        raise ValueError(f"sensors must be a non-empty subset of {SENSORS}, got {tuple(sensors)}")
    return subset


def predict_with(model: FusionModel, scenes: DrivingScenes, sensors, device) -> torch.Tensor:
    """The model's predicted labels (N,) when only ``sensors`` arrive (the others flagged missing: absent keys)."""
    subset = _subset(sensors)
    return run_batches(model, lambda m, batch: m({k: batch[0][k] for k in subset}).argmax(-1), scenes, device)


def accuracy_with(model: FusionModel, scenes: DrivingScenes, sensors, device, rows=None) -> float:
    """Accuracy of ``model`` with only ``sensors`` present, over ``scenes`` (or its ``rows``, a bool mask (N,))."""
    correct = (predict_with(model, scenes, sensors, device) == scenes.labels).numpy()
    return float(correct[np.asarray(rows, dtype=bool)].mean() if rows is not None else correct.mean())


def gate_weights(model: FusionModel, scenes: DrivingScenes, device) -> np.ndarray:
    """The fusion's per-sample sensor weights with every sensor present: (N, M), columns in ``SENSORS`` order."""
    if not hasattr(model.fusion, "weights"):
        raise ValueError(f"{type(model.fusion).__name__} has no per-sample weights")
    return run_batches(model, lambda m, batch: m.fusion.weights(m.features(batch[0])), scenes, device).numpy()
