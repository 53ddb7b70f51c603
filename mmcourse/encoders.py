"""Encoders: one network per modality, one interface for all of them.

An encoder reads one modality's batch tensor and returns pooled features
``(B, D)``; encoders of modalities made of tokens (words, image patches or
positions, spectrogram frames) also return their token features through
:meth:`Encoder.tokens` as ``(B, L, D)`` with a ``(B, L)`` mask of real tokens.

Families (``ENCODERS``):

* text: ``mean_pool`` (embeddings averaged over real tokens, then an MLP),
  ``cnn`` (1-D convolutions, max over real tokens), ``transformer`` (a small
  pre-norm Transformer encoder, mean over real tokens);
* image: ``mlp`` (the article's flat MLP), ``cnn`` (three conv blocks, global
  average pool), ``vit`` (a tiny Vision Transformer with a class token),
  ``resnet18`` (torchvision's ResNet-18 with ``weights=None``, stem adapted to
  small images);
* audio: ``cnn`` (fixed log-mel front end, learned input normalisation, a 2-D CNN);
* tabular: ``mlp`` (standardisation + MLP) on a feature vector, e.g.
  :func:`spectral_summary` of a sound.

Shape letters: B batch, L tokens, D feature width, S image side, T audio
samples, M mel bands, F frames, K tabular features, C classes.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from .data.dataset import make_loader
from .data.render import SPECTROGRAM_HOP, log_mel_spectrogram, mel_filterbank
from .data.text import PAD_ID, WORLD_VOCAB
from .evaluation import EVAL_BATCH_SIZE, run_batches
from .modality import check_tensor
from .models import masked_mean

N_FFT = 256
N_MELS = 32
FFN_MULT = 2    # feed-forward width / model width in the small Transformers (4 in Vaswani et al. 2017; 2 keeps them tiny)


def pre_norm_transformer(dim: int, heads: int, layers: int, dropout: float = 0.0) -> nn.TransformerEncoder:
    """The course's Transformer: ``layers`` pre-norm encoder blocks and a final LayerNorm, (B, L, D) -> (B, L, D).

    Each block is ``x = x + Attention(LN(x)); x = x + FFN(LN(x))`` with a ReLU FFN of
    width ``FFN_MULT * dim``; normalising before each sublayer (pre-norm, Xiong et al.
    2020, "On Layer Normalization in the Transformer Architecture") trains stably without
    a learning-rate warm-up, and needs the final LayerNorm (``.norm``) on the residual
    stream. Call it as ``encoder(x, src_key_padding_mask=~mask)`` with ``mask`` (B, L) True
    for real tokens. The text encoder, the ViT and stage 1's fusion Transformer use it.

    Args:
        dim: D; heads: attention heads (must divide D); layers: blocks; dropout: inside each block.
    """
    block = nn.TransformerEncoderLayer(dim, heads, FFN_MULT * dim, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class Encoder(nn.Module):
    """Base class. Subclasses set ``modality`` and ``out_dim`` and implement ``tokens`` or ``forward``.

    By default ``forward`` pools the token features over real tokens.
    """

    modality: str = ""
    has_tokens: bool = True

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features (B, L, D) and the mask of real tokens (B, L) bool."""
        raise NotImplementedError(f"{type(self).__name__} has no token features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D)."""
        feats, mask = self.tokens(x)
        return masked_mean(feats, mask)


# ----------------------------------------------------------------------------- text

class _TextEncoder(Encoder):
    modality = "text"

    def __init__(self, vocab_size: int, dim: int, max_len: int | None = None):
        super().__init__(dim)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)

    def _embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(ids, "text", 2, float_=False)
        if self.max_len is not None and ids.shape[1] > self.max_len:
            raise ValueError(f"text has {ids.shape[1]} tokens, more than max_len={self.max_len}")
        return self.embedding(ids), ids != PAD_ID                   # (B, L, D), (B, L)


class MeanPoolTextEncoder(_TextEncoder):
    """Embeddings averaged over real tokens, then a two-layer MLP (a bag of words, order ignored)."""

    def __init__(self, vocab_size: int = len(WORLD_VOCAB), dim: int = 64):
        super().__init__(vocab_size, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def tokens(self, ids):
        return self._embed(ids)

    def forward(self, ids):
        return self.mlp(masked_mean(*self.tokens(ids)))


class ConvTextEncoder(_TextEncoder):
    """Two 1-D convolutions over the token sequence (n-gram detectors), max over real tokens."""

    def __init__(self, vocab_size: int = len(WORLD_VOCAB), dim: int = 64, kernel_size: int = 3):
        super().__init__(vocab_size, dim)
        pad = kernel_size // 2
        self.convs = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, padding=pad), nn.ReLU(),
            nn.Conv1d(dim, dim, kernel_size, padding=pad), nn.ReLU())

    def tokens(self, ids):
        x, mask = self._embed(ids)
        x, keep = x.transpose(1, 2), mask.unsqueeze(1)              # (B, D, L), (B, 1, L)
        for layer in self.convs:                                    # zero the padding before every conv, so
            x = layer(x * keep if isinstance(layer, nn.Conv1d) else x)  # extra padding changes no real token
        return x.transpose(1, 2), mask                              # (B, L, D)

    def forward(self, ids):
        feats, mask = self.tokens(ids)
        return feats.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).clamp_min(0.0)  # ReLU >= 0


class TransformerTextEncoder(_TextEncoder):
    """Token + learned position embeddings, a small pre-norm Transformer encoder, mean over real tokens."""

    def __init__(self, vocab_size: int = len(WORLD_VOCAB), dim: int = 64, heads: int = 4, layers: int = 2,
                 max_len: int = 64, dropout: float = 0.0):
        super().__init__(vocab_size, dim, max_len)
        self.position = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.position, std=0.02)
        self.encoder = pre_norm_transformer(dim, heads, layers, dropout)
        self.prompt = None   # prompt tuning (mmcourse.adapt.add_prompts) sets learnable tokens here

    def tokens(self, ids):
        x, mask = self._embed(ids)
        x = x + self.position[:, : x.shape[1]]
        attend = mask.clone()
        attend[:, 0] |= ~mask.any(1)        # a caption of padding only attends to its first slot (else NaN)
        if self.prompt is not None:         # prompts attend like tokens, then leave: outputs stay aligned with ids
            x, attend = self.prompt.prepend(x, attend)
        h = self.encoder(x, src_key_padding_mask=~attend)
        return (self.prompt.strip(h) if self.prompt is not None else h), mask


# ----------------------------------------------------------------------------- image

class _ImageEncoder(Encoder):
    modality = "image"

    def __init__(self, out_dim: int, image_size: int | None):
        super().__init__(out_dim)
        self.image_size = image_size

    def _check_image(self, x: torch.Tensor) -> None:
        s = self.image_size
        check_tensor(x, "image", 4, float_=True, trailing=(3, s, s) if s else (3, "S", "S"))


class MLPImageEncoder(_ImageEncoder):
    """The article's image encoder: flatten, Linear, ReLU, Linear, ReLU (no notion of neighbouring pixels)."""

    has_tokens = False

    def __init__(self, image_size: int = 32, dim: int = 128):
        super().__init__(dim, image_size)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size**2, dim), nn.ReLU(),
                                 nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x):
        self._check_image(x)
        return self.mlp(x)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU, 2x2 max pool: halves the side."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class CNNImageEncoder(_ImageEncoder):
    """Three conv blocks (side S -> S/8), a 1x1 projection to ``dim``; tokens are the S/8 x S/8 positions."""

    def __init__(self, dim: int = 64, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__(dim, None)
        chans = (3,) + tuple(widths)
        self.blocks = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans, chans[1:])])
        self.project = nn.Conv2d(chans[-1], dim, 1)

    def tokens(self, x):
        self._check_image(x)
        feats = self.project(self.blocks(x)).flatten(2).transpose(1, 2)  # (B, L, D), L = (S/8)^2
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=x.device)


class ViTImageEncoder(_ImageEncoder):
    """A tiny Vision Transformer: non-overlapping patches, a class token, pre-norm encoder; pooled = class token."""

    def __init__(self, image_size: int = 32, patch_size: int = 8, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__(dim, image_size)
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, n + 1, dim))
        nn.init.normal_(self.position, std=0.02)
        self.encoder = pre_norm_transformer(dim, heads, layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The Transformer's input: patch embeddings after the class token, plus positions, (B, 3, S, S) -> (B, 1 + L, D).

        The strided convolution (kernel = stride = patch side p) is one linear map applied to
        each flattened p x p x 3 patch (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").
        """
        self._check_image(x)
        patches = self.patch(x).flatten(2).transpose(1, 2)            # (B, L, D), patches in row-major order
        cls = self.cls.expand(len(x), -1, -1)                         # (B, 1, D)
        return torch.cat([cls, patches], 1) + self.position           # (B, 1 + L, D)

    def _encode(self, x):
        return self.encoder(self.embed(x))                            # (B, 1 + L, D)

    def tokens(self, x):
        feats = self._encode(x)[:, 1:]
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=x.device)

    def forward(self, x):
        return self._encode(x)[:, 0]


class ResNet18ImageEncoder(_ImageEncoder):
    """torchvision's ResNet-18 (``weights=None``: nothing is downloaded) adapted to small images.

    ImageNet's stem (7x7 stride-2 conv, then max pool) shrinks a 32-pixel
    image to 8 pixels before the first residual block; here the stem is a 3x3
    stride-1 conv followed by the max pool, so the blocks see S/2 .. S/16.
    The 512-d pooled output is projected to ``dim``.
    """

    def __init__(self, dim: int = 64):
        super().__init__(dim, None)
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.project = nn.Linear(512, dim)

    def tokens(self, x):
        self._check_image(x)
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))                # (B, 512, S/16, S/16)
        feats = self.project(x.flatten(2).transpose(1, 2))
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=x.device)


# ----------------------------------------------------------------------------- audio and tabular

class LogMel(nn.Module):
    """Fixed (not learned) log-mel front end: waveforms (B, T) -> (B, M, F); the filterbank is a buffer."""

    def __init__(self, sample_rate: int = 8000, n_fft: int = N_FFT, hop: int = SPECTROGRAM_HOP, n_mels: int = N_MELS):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop = sample_rate, n_fft, hop
        self.register_buffer("filterbank", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        check_tensor(wave, "audio", 2, float_=True)
        if wave.shape[1] < self.n_fft:
            raise ValueError(f"audio must have at least n_fft={self.n_fft} samples, got {wave.shape[1]}")
        return log_mel_spectrogram(wave.float(), self.sample_rate, self.n_fft, self.hop,  # stft has no bf16 kernel
                                   filterbank=self.filterbank)


class CNNAudioEncoder(Encoder):
    """Log-mel spectrogram, batch-norm over the input (learned normalisation), three conv blocks;
    tokens are the time frames (features averaged over the remaining mel axis)."""

    modality = "audio"

    def __init__(self, sample_rate: int = 8000, dim: int = 64, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__(dim)
        self.frontend = LogMel(sample_rate)
        self.norm = nn.BatchNorm2d(1)
        chans = (1,) + tuple(widths)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
                          nn.MaxPool2d((2, 1) if i == len(widths) - 1 else 2, ceil_mode=True))
            for i, (a, b) in enumerate(zip(chans, chans[1:]))])
        self.project = nn.Linear(chans[-1], dim)

    def tokens(self, wave):
        x = self.blocks(self.norm(self.frontend(wave).unsqueeze(1)))  # (B, C, M', F')
        feats = self.project(x.mean(2).transpose(1, 2))               # (B, F', D)
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=wave.device)


def spectral_summary(wave: torch.Tensor, sample_rate: int = 8000) -> torch.Tensor:
    """Hand-made tabular features of sounds: per mel band, the mean and the max over time: (B, 2M)."""
    spec = LogMel(sample_rate).to(wave.device)(wave)                   # (B, M, F)
    return torch.cat([spec.mean(2), spec.amax(2)], 1)


class MLPTabularEncoder(Encoder):
    """Standardisation (batch norm without affine) + two-layer MLP for a (B, K) feature vector."""

    modality = "tabular"
    has_tokens = False

    def __init__(self, in_features: int, dim: int = 64, hidden: int = 128):
        super().__init__(dim)
        self.in_features = in_features
        self.mlp = nn.Sequential(nn.BatchNorm1d(in_features, affine=False), nn.Linear(in_features, hidden),
                                 nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())

    def forward(self, x):
        check_tensor(x, "tabular", 2, float_=True, trailing=(self.in_features,))
        return self.mlp(x)


# ----------------------------------------------------------------------------- registry and helpers

ENCODERS: dict[str, dict[str, type[Encoder]]] = {
    "text": {"mean_pool": MeanPoolTextEncoder, "cnn": ConvTextEncoder, "transformer": TransformerTextEncoder},
    "image": {"mlp": MLPImageEncoder, "cnn": CNNImageEncoder, "vit": ViTImageEncoder,
              "resnet18": ResNet18ImageEncoder},
    "audio": {"cnn": CNNAudioEncoder},
    "tabular": {"mlp": MLPTabularEncoder},
}


def make_encoder(modality: str, family: str, **kwargs) -> Encoder:
    """Build an encoder by modality and family name, e.g. ``make_encoder("image", "cnn", dim=64)``."""
    if modality not in ENCODERS:
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(ENCODERS)}")
    if family not in ENCODERS[modality]:
        raise ValueError(f"unknown {modality} encoder {family!r}; valid: {', '.join(ENCODERS[modality])}")
    return ENCODERS[modality][family](**kwargs)


class UnimodalClassifier(nn.Module):
    """An encoder and a linear head: reads ``inputs[encoder.modality]`` of the modality dict, returns logits (B, C)."""

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        key = self.encoder.modality
        if key not in inputs:
            raise ValueError(f"inputs have no {key!r} entry (keys: {sorted(inputs)}); "
                             f"{type(self.encoder).__name__} reads {key!r}")
        return self.head(self.encoder(inputs[key]))


def _entries(dataset, key: str, batch_size: int):
    """The ``key`` entry of every batch of ``dataset``, so that only it travels to the device."""
    for inputs, _ in make_loader(dataset, batch_size):
        if key not in inputs:
            raise ValueError(f"the dataset's batches have no {key!r} entry (keys: {sorted(inputs)})")
        yield inputs[key]


def encode(encoder: Encoder, dataset, device, batch_size: int = EVAL_BATCH_SIZE, key: str | None = None
           ) -> torch.Tensor:
    """Pooled features of every sample of ``dataset`` in order, in eval mode: (N, D) float32 on the CPU.

    ``key`` names the entry of the batch dict to encode (default: the encoder's modality).
    The encoder's train/eval mode is restored afterwards (:func:`mmcourse.evaluation.run_batches`).
    """
    key = key or encoder.modality
    return run_batches(encoder, lambda enc, x: enc(x), _entries(dataset, key, batch_size), device)
