"""Chapter 18, hyper-parameter search: an honest search with Optuna over a fusion model trained end to end.

The task is chapter 13's driving world (:mod:`mmcourse.applications.driving`): camera images, lidar profiles and
radar points, fused by concatenation and trained **from raw inputs** on a small budget (a few epochs on a
small training set). There the hyper-parameters matter: a bad learning rate or a too narrow model costs tens
of points, so a search has something to find. (On frozen features, chapter 05's fusions all score within a
fraction of a point of each other, and a search there only ranks noise.)

The pieces, in the order a search uses them:

- :func:`objective` is a plain function: a dict of parameters (``lr``, ``weight_decay``, ``modality_dropout``,
  ``width``) and the data in, the **dev** accuracy out. The same parameters and seed give the same score
  (seeded initialisation, shuffling and modality dropout; a fixed thread count), which is what makes two
  separate studies with the same seed agree. :func:`train_trial` is the same with the trained model returned.
- :func:`suggest` reads the parameters from an Optuna trial (the search space: ``LR_RANGE``, ...), and
  :func:`run_search` runs a study's trials (optionally keeping each trial's model).
- :func:`create_study` makes a study with a seeded TPE sampler (Bergstra et al. 2011, "Algorithms for
  Hyper-Parameter Optimization", NeurIPS 2011) in a sqlite file under ``build/`` (Akiba et al. 2019, "Optuna: A
  Next-generation Hyperparameter Optimization Framework", arXiv 1907.10902). It deletes the file first unless
  ``resume=True``: reopening a study's file *resumes* it (its trials grow), which is the trap when two runs
  were meant to be independent.
- :func:`param_importances`: fANOVA importances (Hutter et al. 2014, "An Efficient Approach for Assessing
  Hyperparameter Importance", ICML 2014) with a seeded evaluator, so they are the same on every run.
- :func:`selection_optimism`: how much a winner's score on the set that chose it overstates its score on
  fresh data (the mistake of tuning on the test set), averaged over random halvings of held-out scenes.
- :func:`plot_history`, :func:`plot_importances`, :func:`plot_param`, :func:`draw_search_loop`: matplotlib
  figures (Optuna's own plots need plotly, or are experimental in matplotlib).

Shape letters: T trials, N scenes, H halvings.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from .applications import driving
from .applications.driving import LABELS, LIDAR_BEAMS, RADAR_POINTS, SENSORS, DrivingScenes
from .config import _check_positive, _table_entry
from .data.dataset import make_loader
from .encoders import CNNImageEncoder, MLPTabularEncoder
from .fusion import ConcatFusion, FusionModel
from .training import TrainConfig, classification_loss, train
from .utils import build_dir

# Optuna logs one INFO line per trial, with a timestamp: outputs would differ run to run. Warnings stay.
optuna.logging.set_verbosity(optuna.logging.WARNING)

# ----------------------------------------------------------------------------- the search space
LR_RANGE = (1e-4, 3e-2)             # log scale: from too slow for a few epochs to the edge of instability
WEIGHT_DECAY_RANGE = (1e-5, 1.0)    # log scale, decoupled (AdamW); at 1.0 and lr 1e-2 weights shrink ~60 % in 100 steps
DROPOUT_RANGE = (0.0, 0.6)          # modality dropout per sensor and scene (chapter 05); one sensor always kept
WIDTHS = (8, 16, 32)                # feature width D of every sensor; the fused width is 2D, the CNN (D/2, D, D)
PARAMS = ("lr", "weight_decay", "modality_dropout", "width")
WARMUP_STEPS = 10                   # at most; a tenth of the run when it is shorter
STUDY_NAME = "search"               # the one study name of a sqlite file made by create_study


@dataclass(frozen=True)
class SearchConfig:
    """The chapter's sizes in one profile.

    Attributes:
        train: training scenes (few: the budget is what makes the hyper-parameters matter).
        dev: scenes the search selects on.
        test: scenes the chosen configuration is measured on, once, after the search.
        audit: a second, fresh held-out set, used only to show what selecting on the test set costs.
        epochs: passes over the training scenes in one trial.
        batch_size: scenes per optimizer step.
        trials: trials of the main search.
        startup_trials: TPE's first trials, sampled at random before it models the good and the bad ones.
        repro_trials: trials of each of the two studies of the reproducibility check.
        repro_epochs: epochs of a reproducibility trial (a smaller budget: the check is about equality).
        repro_startup_trials: random trials of each reproducibility study (fewer than ``repro_trials``, so that
            TPE also proposes some, from scores that must themselves be reproducible).
        image_size: camera image side S (24 is the smallest the driving renderer draws; cheaper convolutions).
        halvings: random halvings of the held-out scenes averaged by :func:`selection_optimism`.
    """

    train: int
    dev: int
    test: int
    audit: int
    epochs: int
    trials: int
    startup_trials: int
    repro_trials: int
    repro_epochs: int
    repro_startup_trials: int = 2
    batch_size: int = 64
    image_size: int = 24
    halvings: int = 500

    def __post_init__(self):
        _check_positive(self, ("train", "dev", "test", "audit", "epochs", "trials", "startup_trials", "repro_trials",
                               "repro_epochs", "repro_startup_trials", "batch_size", "image_size", "halvings"))
        for startup, trials in (("startup_trials", "trials"), ("repro_startup_trials", "repro_trials")):
            if getattr(self, startup) > getattr(self, trials):
                raise ValueError(f"SearchConfig.{startup} ({getattr(self, startup)}) must be <= {trials} "
                                 f"({getattr(self, trials)})")


SEARCH: dict[str, SearchConfig] = {
    "smoke": SearchConfig(train=800, dev=1000, test=1000, audit=1000, epochs=2, trials=6, startup_trials=3,
                          repro_trials=3, repro_epochs=1, halvings=200),
    "default": SearchConfig(train=1500, dev=2000, test=2000, audit=2000, epochs=4, trials=20, startup_trials=8,
                            repro_trials=4, repro_epochs=2),
    "full": SearchConfig(train=20000, dev=5000, test=20000, audit=20000, epochs=10, trials=60, startup_trials=15,
                         repro_trials=10, repro_epochs=3, repro_startup_trials=5, batch_size=128, image_size=32),
}


def search_config(profile=None) -> SearchConfig:
    """The :class:`SearchConfig` of a profile (a name, a :class:`mmcourse.config.Profile` or None)."""
    return _table_entry(SEARCH, profile, "search")[1]


def make_data(config: SearchConfig, seed: int = 0) -> dict[str, DrivingScenes]:
    """The four splits, each from its own seed: {"train", "dev", "test", "audit"}."""
    world = driving.driving_world()
    sizes = {"train": config.train, "dev": config.dev, "test": config.test, "audit": config.audit}
    return {name: driving.make_scenes(world, n, seed=seed + k, image_size=config.image_size)
            for k, (name, n) in enumerate(sizes.items())}


# ----------------------------------------------------------------------------- parameters and the objective

def check_params(params: Mapping) -> dict:
    """The four parameters as a dict in ``PARAMS`` order, each checked against the search space.

    Raises:
        ValueError: naming a missing or unknown parameter, or one outside its range.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of {PARAMS}, got {type(params).__name__}")
    missing, unknown = [p for p in PARAMS if p not in params], sorted(set(params) - set(PARAMS))
    if missing or unknown:
        raise ValueError(f"params must hold exactly {PARAMS}; missing {missing}, unknown {unknown}")
    out = {p: params[p] for p in PARAMS}
    for name, (low, high) in (("lr", LR_RANGE), ("weight_decay", WEIGHT_DECAY_RANGE),
                              ("modality_dropout", DROPOUT_RANGE)):
        if not (isinstance(out[name], (int, float)) and low <= out[name] <= high):
            raise ValueError(f"params[{name!r}] must lie in [{low:g}, {high:g}], got {out[name]!r}")
    if out["width"] not in WIDTHS:
        raise ValueError(f"params['width'] must be one of {WIDTHS}, got {out['width']!r}")
    return out


def build_model(params: Mapping) -> FusionModel:
    """The trial's model: a camera CNN, lidar and radar MLPs (width D each), concatenation fusion to 2D, 6 logits."""
    p = check_params(params)
    d = int(p["width"])
    encoders = {"camera": CNNImageEncoder(d, (d // 2, d, d)),
                "lidar": MLPTabularEncoder(LIDAR_BEAMS, d, 2 * d),
                "radar": MLPTabularEncoder(3 * RADAR_POINTS, d, 2 * d)}
    return FusionModel(ConcatFusion({m: d for m in SENSORS}, 2 * d), len(LABELS), encoders,
                       modality_dropout=float(p["modality_dropout"]))


@dataclass
class TrialResult:
    """One trained trial: its model (on the device, eval mode), its dev accuracy and its training time."""

    model: FusionModel
    dev_accuracy: float
    seconds: float


def train_trial(params: Mapping, train_set: DrivingScenes, dev: DrivingScenes, epochs: int, batch_size: int,
                device, seed: int = 0) -> TrialResult:
    """Train :func:`build_model` ``(params)`` on ``train_set`` with the course's loop; score it on ``dev``.

    Seeded: the initialisation, the shuffling and the modality-dropout draws all follow ``seed``, so the same
    parameters and seed give the same score (on one machine, with one thread count).
    """
    p = check_params(params)
    if len(dev) == 0:
        raise ValueError("dev must hold at least one scene")
    start = time.perf_counter()
    torch.manual_seed(seed)                              # initialisation and modality dropout's draws
    model = build_model(p).to(device)
    loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    config = TrainConfig(epochs=epochs, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
                         warmup_steps=min(WARMUP_STEPS, steps // 10), log_every=len(loader), progress=False)
    train(model, classification_loss, loader, config, device)
    accuracy = driving.accuracy_with(model, dev, SENSORS, device)
    return TrialResult(model.eval(), accuracy, time.perf_counter() - start)


def objective(params: Mapping, train_set: DrivingScenes, dev: DrivingScenes, epochs: int, batch_size: int,
              device, seed: int = 0) -> float:
    """The search's objective, a plain function: the dev accuracy of a model trained with ``params``."""
    return train_trial(params, train_set, dev, epochs, batch_size, device, seed).dev_accuracy


def suggest(trial: optuna.Trial) -> dict:
    """The four parameters drawn from an Optuna trial (log scales for the learning rate and weight decay)."""
    return {"lr": trial.suggest_float("lr", *LR_RANGE, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True),
            "modality_dropout": trial.suggest_float("modality_dropout", *DROPOUT_RANGE),
            "width": trial.suggest_categorical("width", WIDTHS)}


# ----------------------------------------------------------------------------- studies

def study_path(name: str) -> Path:
    """``build/search/<name>.db``: where a study's sqlite file lives."""
    if not name or "/" in name:
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    return build_dir("search") / f"{name}.db"


def create_study(path, seed: int, startup_trials: int, resume: bool = False) -> optuna.Study:
    """A study maximising the dev accuracy, with a seeded TPE sampler, stored in the sqlite file ``path``.

    ``resume=False`` deletes the file first, so a rerun starts afresh. ``resume=True`` keeps it: Optuna then
    loads the study already stored there and appends to its trials, which is how a search continues after a
    crash, and also how two runs meant to be independent silently become one.
    """
    path = Path(path)
    if not resume:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.create_study(storage=f"sqlite:///{path}", study_name=STUDY_NAME, direction="maximize",
                               sampler=sampler, load_if_exists=True)


def run_search(study: optuna.Study, data: Mapping[str, DrivingScenes], n_trials: int, epochs: int,
               batch_size: int, device, seed: int = 0, models: dict | None = None) -> optuna.Study:
    """Run ``n_trials`` trials of ``study``: each draws parameters (:func:`suggest`), trains on ``data["train"]``
    and reports the accuracy on ``data["dev"]`` (the test splits are never read). Each trial's training seconds
    go to its ``user_attrs``; with ``models`` (a dict), each trial's model is kept under its number."""
    def run(trial: optuna.Trial) -> float:
        result = train_trial(suggest(trial), data["train"], data["dev"], epochs, batch_size, device, seed)
        trial.set_user_attr("seconds", result.seconds)
        if models is not None:
            models[trial.number] = result.model
        return result.dev_accuracy

    study.optimize(run, n_trials=n_trials)
    return study


def trial_values(study: optuna.Study) -> np.ndarray:
    """The complete trials' values (T,), in trial order."""
    return np.array([t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])


def param_importances(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """fANOVA importances of the parameters (they sum to 1), with a seeded forest: the same on every call."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


# ----------------------------------------------------------------------------- the cost of selecting on test

def correct_on(model: FusionModel, scenes: DrivingScenes, device) -> np.ndarray:
    """Whether the model (all sensors present) labels each scene right: (N,) bool."""
    return (driving.predict_with(model, scenes, SENSORS, device) == scenes.labels).numpy()


def selection_optimism(correct: np.ndarray, halvings: int, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """How much selecting on a set flatters the winner, measured on random halvings of held-out scenes.

    Each halving splits the N scenes at random into a selection half A and a fresh half B; the trial with the
    best accuracy on A wins (the first on ties), and its optimism is its accuracy on A minus its accuracy on B.

    Args:
        correct: (T, N) bool, whether trial t labels scene n right.
        halvings: H, the number of random halvings.
        seed: seeds the halvings.

    Returns:
        (mean optimism, its standard error over the halvings, the optimism of each halving (H,)).
    """
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[0] < 1 or correct.shape[1] < 2:
        raise ValueError(f"correct must be (T, N) with T >= 1 and N >= 2, got shape {correct.shape}")
    if isinstance(halvings, bool) or not isinstance(halvings, int) or halvings < 2:
        raise ValueError(f"halvings must be an int >= 2, got {halvings!r}")
    t, n = correct.shape
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.tile(np.arange(n), (halvings, 1)), axis=1)          # (H, N)
    in_a = np.zeros((halvings, n), dtype=bool)
    np.put_along_axis(in_a, order[:, : n // 2], True, axis=1)                   # (H, N): the selection half
    c = correct.astype(np.float64).T                                            # (N, T)
    acc_a = in_a @ c / in_a.sum(1, keepdims=True)                               # (H, T)
    acc_b = ~in_a @ c / (~in_a).sum(1, keepdims=True)                           # (H, T)
    winner = acc_a.argmax(1)                                                    # (H,)
    rows = np.arange(halvings)
    gap = acc_a[rows, winner] - acc_b[rows, winner]                             # (H,)
    return float(gap.mean()), float(gap.std(ddof=1) / math.sqrt(halvings)), gap


# ----------------------------------------------------------------------------- figures

def plot_history(study: optuna.Study, limit: float | None = None, title: str = "", ax=None):
    """Each trial's dev accuracy against its number, the running best, and an optional limit line."""
    import matplotlib.pyplot as plt
    values = trial_values(study)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6))
    number = np.arange(len(values))
    ax.scatter(number, values, s=22, label="trial (dev accuracy)")
    ax.step(number, np.maximum.accumulate(values), where="post", color="C1", label="best so far")
    if limit is not None:
        ax.axhline(limit, color="k", ls="--", lw=1, label=f"Bayes limit (dev) {limit:.3f}")
    ax.set(xlabel="trial number", ylabel="dev accuracy (6 classes)", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def plot_importances(importances: Mapping[str, float], title: str = "", ax=None):
    """Horizontal bars of parameter importances (fANOVA shares of the variance of the dev accuracy)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.6))
    names = list(importances)[::-1]
    ax.barh(names, [importances[k] for k in names], color="C2")
    ax.set(xlabel="importance (share of the variance explained, fANOVA)", title=title, xlim=(0, 1))
    ax.title.set_fontsize(9)
    return ax.figure


def plot_param(study: optuna.Study, param: str, title: str = "", log: bool = False, ax=None):
    """Dev accuracy against one parameter's value, one point per trial, coloured by width."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for k, width in enumerate(WIDTHS):
        chosen = [t for t in trials if t.params["width"] == width]
        ax.scatter([t.params[param] for t in chosen], [t.value for t in chosen], s=24, color=f"C{k}",
                   label=f"width {width}")
    if log:
        ax.set_xscale("log")
    ax.set(xlabel=param, ylabel="dev accuracy", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    return ax.figure


def draw_search_loop(title: str = "The search loop: only dev scores reach the sampler; test is read once, at the end"):
    """A diagram of the chapter's data flow: sampler -> parameters -> training -> dev score -> study -> sampler."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    fig, ax = plt.subplots(figsize=(10, 3.4))
    boxes = {"sampler": (0.04, 0.7, "TPE sampler\n(seeded)"),
             "params": (0.29, 0.7, "params\nlr, wd, dropout, width"),
             "train": (0.545, 0.7, "train on train split\n(raw camera, lidar, radar)"),
             "dev": (0.8, 0.7, "dev accuracy\n(the objective)"),
             "study": (0.44, 0.2, "study in sqlite\nbuild/search/*.db"),
             "test": (0.8, 0.2, "test accuracy\nof the best params, once")}
    patches = {}
    for name, (x, y, text) in boxes.items():
        colour = "#fde2e2" if name == "test" else "#e3eefc"
        patches[name] = ax.add_patch(FancyBboxPatch((x - 0.09, y - 0.11), 0.18, 0.22, boxstyle="round,pad=0.01",
                                                    fc=colour, ec="k"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
    arrows = [("sampler", "params", "suggest"), ("params", "train", ""), ("train", "dev", "score"),
              ("dev", "study", "tell"), ("study", "sampler", "history"), ("study", "test", "best_params")]
    for a, b, label in arrows:                          # arrows clipped to the boxes' edges
        (xa, ya, _), (xb, yb, _) = boxes[a], boxes[b]
        ax.annotate("", (xb, yb), (xa, ya), arrowprops=dict(arrowstyle="->", patchA=patches[a], patchB=patches[b]))
        ax.text((xa + xb) / 2, (ya + yb) / 2 + 0.03, label, ha="center", fontsize=7, color="0.3")
    ax.set(xlim=(-0.06, 0.9), ylim=(0.05, 0.85), title=title)
    ax.title.set_fontsize(9)
    ax.axis("off")
    return fig
