"""Surveillance (chapter 11): abnormal events in short clips seen by video frames, a sound track and an event log.

The article's §6 names intelligent surveillance: video, audio and text fused to spot abnormal events. The
field scores event detection by average precision (XD-Violence, Wu et al. 2020) and AUROC (UCF-Crime,
Sultani et al. 2018), with one weak label per clip (abnormal or not), not one per frame.

The world (:func:`surveillance_world`) is a :class:`~mmcourse.applications.discrete.DiscreteWorld`:

- ``event`` (latent): routine, or one of three abnormal events (a fall, a crowd forming, glass breaking);
- ``abnormal`` (the label) = event is not routine; prevalence ``1 - EVENT_PRIOR[0]`` = 25 %;
- each sensor observes one variable that depends on the event *type* only (so the sensors are independent
  given the type, not given the binary label):
  ``video`` (what the 4 frames show: a standing figure, a lying figure, a fall, getting up, a crowd gathering,
  a crowd dispersing), ``audio`` (quiet, a thud, a murmur, a crash) and ``text`` (the event log's line:
  no event, motion, person down, crowd alert, glass break; the log is often silent and sometimes wrong).

Some video values are *changes*: a fall is a standing figure that ends lying, getting up the reverse; a crowd
gathering is a growing number of people, dispersing the reverse. One frame cannot tell a fall from a person
lying still, and an order-blind pool of frames cannot tell a fall from getting up: :func:`frame_view_world`
gives the exact Bayes values of those two views.

Renders (:func:`render_video`, :func:`render_audio`, :func:`render_log`) are fixed functions of the observed
variables and of nuisance variables (positions, onset, loudness, camera, clock) that are independent of
everything, so the exact Bayes posterior given the observed variables is the ceiling of any model.

The model parts: a per-frame CNN (:class:`mmcourse.encoders.CNNImageEncoder`) with a temporal pool over
frames (:class:`TemporalVideoEncoder` with :class:`LastFrame`, :class:`MeanOverFrames` or
:class:`TemporalConvPool`), fused with the course's audio and text encoders by mid (concatenation) or late
(per-modality logits averaged) fusion. :func:`additive_ceiling` is the best any late fusion of per-modality
scores can do: the best ranking by a sum of one score per sensor.

Shape letters: N clips, B batch, T frames, S image side, D features, W audio samples, L log tokens, C = 2.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import _check_fraction, _check_positive, _table_entry
from ..data.dataset import BatchedDataset, make_loader
from ..encoders import CNNAudioEncoder, CNNImageEncoder, Encoder, MeanPoolTextEncoder
from ..evaluation import run_batches
from ..fusion import FeatureDataset, FusionModel, make_fusion
from ..metrics import average_precision, bootstrap_se, population_ap, population_auroc, roc_auc
from ..modality import check_tensor
from ..training import History, TrainConfig, classification_loss, train
from .discrete import DiscreteWorld, Variable, deterministic, uniform

# ----------------------------------------------------------------------------- the declared world

EVENTS = ("routine", "fall", "crowd", "glass")
EVENT_PRIOR = (0.75, 0.09, 0.08, 0.08)            # 25 % of the clips hold an abnormal event
VIDEO = ("standing", "lying", "fall", "getting_up", "gathering", "dispersing")
AUDIO = ("quiet", "thud", "murmur", "crash")
LOG = ("none", "motion", "fall", "crowd", "glass")
SENSORS = ("audio", "text", "video")

# P(video | event): rows routine, fall, crowd, glass. A fall is seen as a fall half the time, else only the
# person lying afterwards or standing (out of view); routine clips show people resting, getting up, dispersing.
VIDEO_CPT = ((0.40, 0.20, 0.02, 0.16, 0.04, 0.18),
             (0.25, 0.25, 0.50, 0.00, 0.00, 0.00),
             (0.30, 0.00, 0.00, 0.00, 0.55, 0.15),
             (0.75, 0.10, 0.05, 0.05, 0.03, 0.02))
# P(audio | event): a fall thuds, a crowd murmurs, glass crashes; routine clips hold every sound sometimes.
AUDIO_CPT = ((0.65, 0.15, 0.15, 0.05),
             (0.40, 0.60, 0.00, 0.00),
             (0.30, 0.00, 0.70, 0.00),
             (0.15, 0.10, 0.00, 0.75))
# P(log | event): the log names an abnormal event half the time and raises false alerts on routine clips.
LOG_CPT = ((0.80, 0.10, 0.04, 0.03, 0.03),
           (0.35, 0.15, 0.50, 0.00, 0.00),
           (0.35, 0.15, 0.00, 0.50, 0.00),
           (0.35, 0.15, 0.00, 0.00, 0.50))

# What each frame shows for each video value: (pose, people) per frame; pose 0 standing, 1 lying.
FRAMES = 4
FRAME_SCRIPT = {
    "standing":   ((0, 1), (0, 1), (0, 1), (0, 1)),
    "lying":      ((1, 1), (1, 1), (1, 1), (1, 1)),
    "fall":       ((0, 1), (0, 1), (1, 1), (1, 1)),
    "getting_up": ((1, 1), (1, 1), (0, 1), (0, 1)),
    "gathering":  ((0, 1), (0, 2), (0, 3), (0, 4)),
    "dispersing": ((0, 4), (0, 3), (0, 2), (0, 1)),
}
SHIFTS_X, SHIFTS_Y = 4, 6          # nuisance: where the figures stand (pixels)
ONSETS, ONSET_STEP, LOUDNESS = 6, 0.02, (0.5, 0.75, 1.0)   # onsets 0 to 0.1 s
CAMERAS, CLOCKS = 4, 6


def surveillance_world() -> DiscreteWorld:
    """The chapter's world: event -> (video, audio, log), label ``abnormal``, and the renders' nuisances."""
    return DiscreteWorld(
        [Variable("event", EVENTS, (), np.array(EVENT_PRIOR)),
         deterministic("abnormal", ("normal", "abnormal"), ("event",), lambda e: (e > 0).astype(np.int64)),
         Variable("video", VIDEO, ("event",), np.array(VIDEO_CPT)),
         Variable("audio", AUDIO, ("event",), np.array(AUDIO_CPT)),
         Variable("log", LOG, ("event",), np.array(LOG_CPT))],
        label="abnormal", observes={"audio": ("audio",), "text": ("log",), "video": ("video",)},
        nuisance=[uniform("shift_x", SHIFTS_X), uniform("shift_y", SHIFTS_Y), uniform("onset", ONSETS),
                  uniform("loudness", len(LOUDNESS)), uniform("camera", CAMERAS), uniform("clock", CLOCKS)])


def _last_frame(v):
    """Index of what the last frame shows: one standing figure, one lying, four people."""
    last = np.array([{(0, 1): 0, (1, 1): 1, (0, 4): 2}[FRAME_SCRIPT[name][-1]] for name in VIDEO])
    return last[v]


def _frame_set(v):
    """Index of the frames as an unordered set: fall = getting up, gathering = dispersing."""
    names = [tuple(sorted(FRAME_SCRIPT[name])) for name in VIDEO]
    distinct = sorted(set(names), key=names.index)
    return np.array([distinct.index(n) for n in names])[v]


def frame_view_world() -> DiscreteWorld:
    """The world seen through three views of the video only: ``last_frame`` (one frame), ``frame_set`` (the
    frames without their order, what a mean over frames keeps) and ``video`` (the ordered frames)."""
    base = surveillance_world()
    n_last, n_set = int(_last_frame(np.arange(len(VIDEO))).max()) + 1, int(_frame_set(np.arange(len(VIDEO))).max()) + 1
    variables = list(base.variables.values()) + [
        deterministic("last_frame", tuple(f"last{i}" for i in range(n_last)), ("video",), _last_frame),
        deterministic("frame_set", tuple(f"set{i}" for i in range(n_set)), ("video",), _frame_set)]
    return DiscreteWorld(variables, label="abnormal",
                         observes={"last_frame": ("last_frame",), "frame_set": ("frame_set",), "video": ("video",)})


def frame_views(cases: Mapping) -> dict[str, np.ndarray]:
    """``cases`` with the two views of :func:`frame_view_world` added: ``last_frame`` and ``frame_set``."""
    video = _cases_array(cases, "video")
    return {**{k: _cases_array(cases, k) for k in cases}, "last_frame": _last_frame(video), "frame_set": _frame_set(video)}


# ----------------------------------------------------------------------------- renders

IMAGE_SIZE = 32
SAMPLE_RATE = 8000
AUDIO_SAMPLES = 2000                                   # 0.25 s at 8 kHz
FIGURE_COLOUR = (0.95, 0.85, 0.30)                     # people in a warm colour on a dark blue floor
FLOOR_COLOUR = (0.10, 0.12, 0.25)
STAND_W, STAND_H, SLOT = 4, 12, 7                      # a standing figure's box, and the spacing of a crowd
# Sounds: (frequencies in Hz, decay time in s or None for sustained, amplitude modulation in Hz)
SOUNDS = {"quiet": ((), None, 0.0), "thud": ((110.0, 165.0), 0.06, 0.0), "murmur": ((520.0, 740.0), None, 4.0),
          "crash": ((2600.0, 3300.0), 0.03, 0.0)}
LOG_WORDS = {"none": ("no", "event"), "motion": ("motion", "detected"), "fall": ("person", "down"),
             "crowd": ("crowd", "alert"), "glass": ("glass", "break")}
LOG_VOCAB = ("<pad>", "cam") + tuple(f"c{i}" for i in range(CAMERAS)) + tuple(f"t{i:02d}" for i in range(CLOCKS)) \
    + tuple(dict.fromkeys(w for ws in LOG_WORDS.values() for w in ws))
LOG_LENGTH = 5                                          # "cam c2 t03 person down": no padding needed


def _cases_array(cases: Mapping, name: str) -> np.ndarray:
    if name not in cases:
        raise ValueError(f"cases lack the variable {name!r} (keys: {sorted(cases)})")
    a = cases[name]
    return (a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).astype(np.int64)


def _frame_masks() -> np.ndarray:
    """Where people are in every frame of every video value, at every shift: (values, SX, SY, T, S, S)."""
    masks = np.zeros((len(VIDEO), SHIFTS_X, SHIFTS_Y, FRAMES, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for v, name in enumerate(VIDEO):
        for t, (pose, people) in enumerate(FRAME_SCRIPT[name]):
            for sx in range(SHIFTS_X):
                for sy in range(SHIFTS_Y):
                    x0, y0, m = 2 + sx, 6 + sy, masks[v, sx, sy, t]
                    if pose == 1:                                        # lying: the standing box turned
                        m[y0 + STAND_H - STAND_W:y0 + STAND_H, x0 + 3:x0 + 3 + STAND_H] = 1.0
                    for k in range(people if pose == 0 else 0):
                        m[y0:y0 + STAND_H, x0 + SLOT * k:x0 + SLOT * k + STAND_W] = 1.0
    return masks


def render_video(cases: Mapping) -> torch.Tensor:
    """Clips (N, T, 3, S, S) float32 in [0, 1]: the figures each frame of ``FRAME_SCRIPT`` shows, shifted by
    the nuisances ``shift_x`` and ``shift_y``."""
    video, sx, sy = (_cases_array(cases, k) for k in ("video", "shift_x", "shift_y"))
    m = torch.from_numpy(_frame_masks()[video, sx, sy]).unsqueeze(2)          # (N, T, 1, S, S)
    fg, bg = torch.tensor(FIGURE_COLOUR).view(1, 1, 3, 1, 1), torch.tensor(FLOOR_COLOUR).view(1, 1, 3, 1, 1)
    return m * fg + (1 - m) * bg                                               # (N, T, 3, S, S)


def _sound_table() -> np.ndarray:
    """Every sound at every onset, at loudness 1: (values, onsets, W)."""
    t = np.arange(AUDIO_SAMPLES) / SAMPLE_RATE                                  # (W,) seconds
    tau = t[None, :] - (np.arange(ONSETS) * ONSET_STEP)[:, None]               # (onsets, W) time since onset
    table = np.zeros((len(AUDIO), ONSETS, AUDIO_SAMPLES))
    for a, name in enumerate(AUDIO):
        freqs, decay, am = SOUNDS[name]
        if not freqs:
            continue
        tone = sum(np.sin(2 * np.pi * f * tau) for f in freqs) / len(freqs)
        env = np.exp(-np.clip(tau, 0, None) / decay) if decay else 0.6 + 0.4 * np.sin(2 * np.pi * am * tau)
        table[a] = tone * env * (tau >= 0)
    return table


def render_audio(cases: Mapping) -> torch.Tensor:
    """Sound tracks (N, W) float32: the ``audio`` value's tones from the nuisance ``onset``, at ``loudness``."""
    audio, onset, loud = (_cases_array(cases, k) for k in ("audio", "onset", "loudness"))
    wave = _sound_table()[audio, onset] * np.asarray(LOUDNESS)[loud][:, None]    # (N, W)
    return torch.from_numpy(wave).float()


def render_log(cases: Mapping) -> torch.Tensor:
    """Event-log lines (N, L) int64 ids of ``LOG_VOCAB``: ``cam c<camera> t<clock> <two words of the log>``."""
    log, camera, clock = (_cases_array(cases, k) for k in ("log", "camera", "clock"))
    index = {w: i for i, w in enumerate(LOG_VOCAB)}
    words = np.array([[index[w] for w in LOG_WORDS[name]] for name in LOG])    # (values, 2)
    ids = np.stack([np.full(len(log), index["cam"]), index["c0"] + camera, index["t00"] + clock], 1)
    return torch.from_numpy(np.concatenate([ids, words[log]], 1))              # (N, L)


def decode_log(ids: torch.Tensor) -> list[str]:
    """Log lines back as text: (N, L) ids -> N strings."""
    return [" ".join(LOG_VOCAB[i] for i in row if i) for row in ids.tolist()]


class Clips(BatchedDataset):
    """N rendered clips: inputs {"audio": (N, W), "text": (N, L), "video": (N, T, 3, S, S)}, labels (N,) and the
    sampled ``cases`` {variable: (N,) int64}, from which the exact Bayes posterior of any subset follows."""

    def __init__(self, cases: Mapping[str, torch.Tensor], label: str = "abnormal"):
        self.cases = {k: torch.as_tensor(np.asarray(v), dtype=torch.int64) for k, v in cases.items()}
        self.inputs = {"audio": render_audio(self.cases), "text": render_log(self.cases),
                       "video": render_video(self.cases)}
        self.labels = self.cases[label]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self.inputs


def make_clips(world: DiscreteWorld, n: int, seed: int) -> Clips:
    """Sample ``n`` cases from ``world`` with ``seed`` and render them."""
    return Clips(world.sample(n, np.random.default_rng(seed)), world.label)


# ----------------------------------------------------------------------------- Bayes figures

def bayes_report(world: DiscreteWorld, test: Clips | None = None, n_boot: int = 200, seed: int = 0) -> dict:
    """Exact Bayes AP and AUROC of every non-empty sensor subset: {subset: {"ap", "auroc"}} from the table
    and, with a ``test`` set, the same posterior scored on it: "test_ap", "test_ap_se" (bootstrap),
    "test_auroc"."""
    out = {}
    for subset in world.subsets()[1:]:
        table = world.table(subset)
        row = {"ap": table.average_precision(), "auroc": table.auroc()}
        if test is not None:
            y = test.labels.numpy()
            s = world.posterior({k: v.numpy() for k, v in test.cases.items()}, subset)[:, 1]
            row.update(test_ap=average_precision(s, y), test_ap_se=bootstrap_se(average_precision, s, y,
                                                                              n_boot=n_boot, seed=seed),
                       test_auroc=roc_auc(s, y))
        out[subset] = row
    return out


def bayes_scores(world: DiscreteWorld, data: Clips, sensors=SENSORS) -> np.ndarray:
    """The exact P(abnormal | what ``sensors`` observe) of each clip: (N,)."""
    return world.posterior({k: v.numpy() for k, v in data.cases.items()}, sensors)[:, 1]


ADDITIVE_RIDGE = 1e-6     # keeps the one-hot logistic regression's Newton steps invertible (the columns are collinear)


def additive_ceiling(world: DiscreteWorld, sensors=SENSORS, steps: int = 50) -> dict:
    """The best detector whose log-odds are a sum of one score per sensor (what late fusion can represent).

    Fits logistic regression on the one-hot observations of each sensor to the exact joint table (Newton's
    method, weighted by the state probabilities), then scores it on the population.

    Returns:
        {"ap", "auroc", "scores": {sensor: (values,) additive score}, "bias"}.
    """
    subset = world.check_subset(sensors)
    values, prob = world.states()
    blocks = [np.eye(world.variables[v].card)[values[v]] for m in subset for v in world.observes[m]]
    x = np.concatenate([np.ones((len(prob), 1))] + blocks, 1)                     # (K, 1 + sum of cards)
    y = values[world.label].astype(np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (prob * (p - y)) + ADDITIVE_RIDGE * w
        hess = (x * (prob * p * (1 - p))[:, None]).T @ x + ADDITIVE_RIDGE * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    s = x @ w
    sizes = np.cumsum([1] + [b.shape[1] for b in blocks])
    names = [v for m in subset for v in world.observes[m]]
    return {"ap": population_ap(s, prob * y, prob * (1 - y)), "auroc": population_auroc(s, prob * y, prob * (1 - y)),
            "scores": {n: w[a:b] for n, a, b in zip(names, sizes[:-1], sizes[1:])}, "bias": float(w[0])}


# ----------------------------------------------------------------------------- models

class LastFrame(nn.Module):
    """One frame: the last frame's features, (B, T, D) -> (B, D)."""

    def forward(self, f):
        return f[:, -1]


class MeanOverFrames(nn.Module):
    """Temporal average pooling, blind to the frames' order: (B, T, D) -> (B, D)."""

    def forward(self, f):
        return f.mean(1)


class TemporalConvPool(nn.Module):
    """A 1-D convolution over time with kernel 2 (each output sees two consecutive frames, so it can
    respond to a change), ReLU, then the maximum over time: (B, T, D) -> (B, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=2)

    def forward(self, f):
        h = torch.relu(self.conv(f.transpose(1, 2)))                 # (B, D, T - 1)
        return h.amax(2)                                             # (B, D)


class TemporalVideoEncoder(Encoder):
    """A per-frame image encoder, then a temporal pool over the frames: clips (B, T, 3, S, S) -> (B, D).

    Args:
        frame_encoder: maps frames (B*T, 3, S, S) -> (B*T, D) (e.g. :class:`~mmcourse.encoders.CNNImageEncoder`).
        pool: maps (B, T, D) -> (B, D): :class:`LastFrame`, :class:`MeanOverFrames`, :class:`TemporalConvPool`.
        downsample: average-pool each frame by this factor first (``FRAME_DOWNSAMPLE``: the figures are
            4 pixels wide or more, so halving the side keeps them apart and costs a quarter of the compute).
    """

    modality = "video"
    has_tokens = False

    def __init__(self, frame_encoder: Encoder, pool: nn.Module, downsample: int = 1):
        super().__init__(frame_encoder.out_dim)
        self.stem = nn.AvgPool2d(downsample) if downsample > 1 else nn.Identity()
        self.frame_encoder, self.pool = frame_encoder, pool

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Per-frame features (B, T, D)."""
        check_tensor(clips, "video", 5, float_=True)
        b, t = clips.shape[:2]
        frames = self.stem(clips.flatten(0, 1))                         # (B*T, 3, S/k, S/k)
        return self.frame_encoder(frames).view(b, t, -1)                 # (B*T, D) -> (B, T, D)

    def forward(self, clips):
        return self.pool(self.frame_features(clips))


FRAME_DOWNSAMPLE = 2      # frames 32x32 -> 16x16 before the CNN
POOLS = {"last": LastFrame, "mean": MeanOverFrames, "temporal": TemporalConvPool}


@dataclass(frozen=True)
class SurveillanceConfig:
    """Sizes and training of chapter 11 in one profile.

    Attributes:
        train: clips the detectors train on end to end (encoders and fusion together).
        pool: clips whose frozen features train the fusion heads (the first ``train`` of them included);
            features are cheap, so the heads see more clips than the encoders.
        dev: clips that pick the alarm threshold; test: clips that score everything.
        epochs: end-to-end epochs; video_epochs: epochs of the video-only detectors; head_epochs: epochs
            of a fusion head on frozen features.
        batch_size, lr: of every run (Adam, cosine schedule).
        dim: feature width of every encoder; widths: channels of the per-frame CNN's three blocks.
        false_alarm_rate: the alarm budget: the share of normal clips allowed to raise an alarm.
    """

    train: int
    pool: int
    dev: int
    test: int
    epochs: int
    video_epochs: int
    head_epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    dim: int = 32
    widths: tuple[int, ...] = (8, 16, 32)
    false_alarm_rate: float = 0.05

    def __post_init__(self):
        _check_positive(self, ("train", "pool", "dev", "test", "epochs", "video_epochs", "head_epochs",
                               "batch_size", "dim"))
        _check_fraction(self, ("false_alarm_rate",))


SURVEILLANCE = {
    "smoke": SurveillanceConfig(train=400, pool=800, dev=300, test=500, epochs=1, video_epochs=1, head_epochs=2),
    "default": SurveillanceConfig(train=6000, pool=16000, dev=2000, test=4000, epochs=3, video_epochs=4,
                                  head_epochs=20),
    "full": SurveillanceConfig(train=20000, pool=60000, dev=5000, test=20000, epochs=6, video_epochs=6,
                               head_epochs=20, dim=64, widths=(16, 32, 64)),
}


def surveillance_config(profile=None) -> SurveillanceConfig:
    """The settings of ``profile`` (a name, a Profile or None for $MMCOURSE_PROFILE)."""
    return _table_entry(SURVEILLANCE, profile, "surveillance")[1]


def video_encoder(config: SurveillanceConfig, pool: str = "temporal") -> TemporalVideoEncoder:
    """The per-frame CNN with the temporal pool named ``pool`` (a key of ``POOLS``)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    frame = CNNImageEncoder(dim=config.dim, widths=config.widths)
    return TemporalVideoEncoder(frame, TemporalConvPool(config.dim) if pool == "temporal" else POOLS[pool](),
                                downsample=FRAME_DOWNSAMPLE)


def encoders(config: SurveillanceConfig) -> dict[str, Encoder]:
    """One fresh encoder per sensor: audio (log-mel CNN), text (mean-pooled log words), video (temporal)."""
    return {"audio": CNNAudioEncoder(SAMPLE_RATE, dim=config.dim, widths=config.widths),
            "text": MeanPoolTextEncoder(len(LOG_VOCAB), dim=config.dim),
            "video": video_encoder(config)}


def detector(config: SurveillanceConfig, fusion: str, sensors=SENSORS) -> FusionModel:
    """A two-class detector over ``sensors`` with ``fusion`` ``"concat"`` (mid) or ``"late"`` fusion."""
    if fusion not in ("concat", "late"):
        raise ValueError(f"fusion must be 'concat' (mid) or 'late', got {fusion!r}")
    encs = {m: e for m, e in encoders(config).items() if m in sensors}
    return FusionModel(make_fusion(fusion, {m: e.out_dim for m, e in encs.items()}, 2 * config.dim, 2), 2, encs)


def fit_detector(model: nn.Module, data: Clips, config: SurveillanceConfig, device, seed: int = 0,
                 epochs: int | None = None) -> History:
    """Train ``model`` (on ``device``) with cross-entropy on the clips' weak labels; returns the History."""
    loader = make_loader(data, config.batch_size, shuffle=True, seed=seed)
    cfg = TrainConfig(epochs=epochs or config.epochs, lr=config.lr, log_every=max(len(loader), 1))
    return train(model, classification_loss, loader, cfg, device)


def abnormal_scores(model: nn.Module, data: Clips, device) -> np.ndarray:
    """The detector's P(abnormal) of each clip: (N,) float64."""
    out = run_batches(model, lambda m, batch: torch.softmax(m(batch[0]).float(), -1)[:, 1], data, device)
    return out.double().numpy()


ENCODE_CHUNK = 4000       # clips rendered and encoded at a time, so that the pool's renders never all sit in memory


def pool_features(model: FusionModel, world: DiscreteWorld, n: int, seed: int, device,
                  chunk: int = ENCODE_CHUNK) -> FeatureDataset:
    """The frozen encoders' features {sensor: (n, D)} of ``n`` clips sampled with ``seed`` (the same clips as
    ``make_clips(world, n, seed)``), rendered and encoded ``chunk`` at a time."""
    cases = world.sample(n, np.random.default_rng(seed))
    parts = []
    for start in range(0, n, chunk):
        clips = Clips({k: v[start:start + chunk] for k, v in cases.items()}, world.label)
        parts.append(run_batches(model, lambda m, batch: m.features(batch[0]), clips, device))
    return FeatureDataset({m: torch.cat([p[m] for p in parts]) for m in parts[0]},
                          torch.as_tensor(cases[world.label]))


def features_of(model: FusionModel, data: Clips, device) -> FeatureDataset:
    """The frozen encoders' features of ``data``."""
    return FeatureDataset(run_batches(model, lambda m, batch: m.features(batch[0]), data, device), data.labels)


def fusion_head(fusion: str, features: FeatureDataset, config: SurveillanceConfig) -> FusionModel:
    """A fresh fusion head (no encoders) over cached ``features``: ``"concat"`` (mid, two hidden layers) or
    ``"late"`` (a classifier per sensor, logits averaged)."""
    dims = {m: x.shape[1] for m, x in features.features.items()}
    options = {"layers": MID_LAYERS} if fusion == "concat" else {}
    return FusionModel(make_fusion(fusion, dims, HEAD_HIDDEN, 2, **options), 2)


MID_LAYERS = 2            # the mid-fusion head: concatenation, two Linear + ReLU layers, a linear output
HEAD_HIDDEN = 64          # hidden width of every fusion head
