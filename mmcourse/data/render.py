"""Renderers: scenes -> images and strike sounds, plus a log-mel spectrogram.

Everything is vectorised over the batch: no Python loop runs per scene.
Nuisance variation (jitter, noise, loudness) comes from the ``rng`` passed in,
so the same seed gives the same pixels and samples.

Shape letters: N scenes, S image side, T audio samples, F frames, M mel bands.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .world import ATTRIBUTES, Scenes, WorldConfig

# RGB in [0, 1] per colour, far apart so colour is unambiguous under jitter.
COLOUR_RGB = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
# Radius as a fraction of the image side, (low, high) per size: the ranges do
# not overlap and a large object still fits in its quadrant.
RADIUS_FRACTION = {"small": (0.12, 0.15), "large": (0.20, 0.22)}
BACKGROUND_RANGE = (0.05, 0.30)  # grey level of the background
PIXEL_NOISE = 0.03               # std of additive (uniform) pixel noise
COLOUR_JITTER = 0.05             # max per-channel colour jitter

# Triangle: outward edge normals (image y axis points down) and inradius.
_TRI_NORMALS = np.array([[0.0, 1.0], [-math.sqrt(3) / 2, -0.5], [math.sqrt(3) / 2, -0.5]])
_TRI_INRADIUS = 0.575
SHAPE_EXTENT = 1.15  # farthest reach of any shape, in radii (the triangle apex)


def _circle(dx, dy):
    return np.sqrt(dx * dx + dy * dy) - 1.0


def _square(dx, dy):
    return np.maximum(np.abs(dx), np.abs(dy)) - 0.8


def _triangle(dx, dy):
    return np.max([n[0] * dx + n[1] * dy for n in _TRI_NORMALS], axis=0) - _TRI_INRADIUS


def _cross(dx, dy):
    ax, ay = np.abs(dx), np.abs(dy)
    return np.minimum(np.maximum(ax - 1.0, ay - 0.3), np.maximum(ax - 0.3, ay - 1.0))


def _diamond(dx, dy):
    return np.abs(dx) + np.abs(dy) - 1.1


# Signed distance (in radius units, < 0 inside) per shape, in the order of ATTRIBUTES["shape"].
SHAPE_SDF = dict(zip(ATTRIBUTES["shape"], (_circle, _square, _triangle, _cross, _diamond)))


def object_geometry(scenes: Scenes, size: int, rng: np.random.Generator):
    """Centre (N, 2) and radius (N,) in pixels, from size and position attributes."""
    n = len(scenes)
    lo = np.array([RADIUS_FRACTION[s][0] for s in ATTRIBUTES["size"]]) * size
    hi = np.array([RADIUS_FRACTION[s][1] for s in ATTRIBUTES["size"]]) * size
    z = scenes.attrs["size"]
    radius = lo[z] + (hi[z] - lo[z]) * rng.random(n)
    pos = scenes.attrs["position"]              # 0 TL, 1 TR, 2 BL, 3 BR
    quadrant = np.stack([pos % 2, pos // 2], 1)  # (N, 2) column, row
    centre = (quadrant * 2 + 1) * size / 4       # quadrant centres
    slack = np.maximum(size / 4 - SHAPE_EXTENT * radius - 0.5, 0.0)  # keep the object inside its quadrant
    centre = centre + (2 * rng.random((n, 2)) - 1) * slack[:, None]
    return centre, radius


def render_images(scenes: Scenes, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render each scene as an RGB image: (N, 3, S, S) uint8."""
    n = len(scenes)
    centre, radius = object_geometry(scenes, size, rng)
    centre, radius = centre.astype(np.float32), radius.astype(np.float32)
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # (N, 1, S)
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # (N, S, 1)
    sdf = np.empty((n, size, size), np.float32)
    for k, fn in enumerate(SHAPE_SDF.values()):  # one vectorised call per shape, not per scene
        rows = scenes.attrs["shape"] == k
        sdf[rows] = fn(dx[rows], dy[rows])
    alpha = np.clip(0.5 - sdf * radius[:, None, None], 0.0, 1.0)      # 1-pixel anti-aliasing
    rgb = np.array([COLOUR_RGB[c] for c in ATTRIBUTES["colour"]], np.float32)[scenes.attrs["colour"]]
    rgb = np.clip(rgb + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)), 0, 1).astype(np.float32)
    background = rng.uniform(*BACKGROUND_RANGE, (n, 1, 1, 1)).astype(np.float32)
    image = background + alpha[:, None] * (rgb[:, :, None, None] - background)  # (N, 3, S, S)
    # Uniform pixel noise of std PIXEL_NOISE, drawn as bytes (Gaussian draws cost 10x more).
    noise = rng.integers(0, 256, image.shape, dtype=np.uint8).astype(np.float32)
    image = image * 255 + (noise - 127.5) * (PIXEL_NOISE * 255 * math.sqrt(3) / 127.5)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


# Strike sound per material: partial frequency ratios, their amplitudes and the
# decay time constant in seconds. Metal and glass ring (inharmonic, slow decay),
# wood and rubber thud (fast decay).
TIMBRE = {
    "metal": ((1.0, 2.76, 5.40), (1.0, 0.6, 0.4), 0.100),
    "glass": ((1.0, 2.32, 4.25), (1.0, 0.8, 0.5), 0.050),
    "wood": ((1.0, 2.0, 3.0), (1.0, 0.5, 0.25), 0.020),
    "rubber": ((1.0,), (1.0,), 0.012),
}
BASE_PITCH_HZ = {"small": 400.0, "large": 200.0}  # small objects sound higher
PITCH_JITTER = 0.08                                # relative, uniform
ONSET_MAX_S = 0.02
AUDIO_NOISE = 0.05


def render_audio(scenes: Scenes, config: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Render each scene's strike sound (or noise alone): (N, T) float32."""
    n, t_len, sr = len(scenes), config.audio_samples, config.sample_rate
    width = max(len(TIMBRE[m][0]) for m in ATTRIBUTES["material"])
    ratios = np.zeros((len(TIMBRE), width), np.float32)
    amps = np.zeros_like(ratios)
    for i, m in enumerate(ATTRIBUTES["material"]):
        r, a, _ = TIMBRE[m]
        ratios[i, : len(r)], amps[i, : len(a)] = r, a
    tau = np.array([TIMBRE[m][2] for m in ATTRIBUTES["material"]], np.float32)
    mat = scenes.attrs["material"]
    base = np.array([BASE_PITCH_HZ[s] for s in ATTRIBUTES["size"]], np.float32)[scenes.attrs["size"]]
    f0 = base * (1 + rng.uniform(-PITCH_JITTER, PITCH_JITTER, n).astype(np.float32))
    onset = rng.uniform(0, ONSET_MAX_S, n).astype(np.float32)
    loudness = rng.uniform(0.5, 1.0, n).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, width)).astype(np.float32)
    noise = rng.normal(0.0, AUDIO_NOISE, (n, t_len)).astype(np.float32)
    t = np.arange(t_len, dtype=np.float32) / sr - onset[:, None]      # (N, T) time since strike
    freq = f0[:, None] * ratios[mat]                                  # (N, P) partial frequencies
    amp = np.where(freq < sr / 2, amps[mat], 0.0)                     # drop partials above Nyquist
    tone = (amp[:, :, None] * np.sin(2 * np.pi * freq[:, :, None] * t[:, None, :] + phase[:, :, None])).sum(1)
    envelope = np.where(t >= 0, np.exp(-np.maximum(t, 0) / tau[mat][:, None]), 0.0)
    struck = scenes.events["audio.strike"][:, None]
    wave = noise + struck * loudness[:, None] * envelope * tone / amps.sum(1).max()
    return wave.astype(np.float32)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the mel scale (HTK formula): (n_freqs, M)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = np.linspace(0, sample_rate / 2, n_freqs)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0, None).T.astype(np.float32))


SPECTROGRAM_HOP = 64  # samples between frames: 8 ms at 8 kHz


def log_mel_spectrogram(wave: torch.Tensor, sample_rate: int, n_fft: int = 256,
                        hop: int = SPECTROGRAM_HOP, n_mels: int = 32,
                        filterbank: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel spectrogram of waveforms (N, T) -> (N, M, F).

    ``filterbank`` (n_fft/2+1, M) may be passed in precomputed (a module keeps it as a
    buffer on its device); by default it is built for ``sample_rate`` and ``n_mels``.
    """
    if wave.dim() != 2:
        raise ValueError(f"wave must be (N, T), got shape {tuple(wave.shape)}")
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True).abs() ** 2  # (N, n_fft/2+1, F)
    if filterbank is None:
        filterbank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
    return torch.log(torch.einsum("nkf,km->nmf", spec, filterbank.to(wave.device, wave.dtype)) + 1e-6)
