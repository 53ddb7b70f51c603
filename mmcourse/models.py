"""Models. For now: the article's text-image classifier (its §5.2), rebuilt so it runs.

Every model takes the modality dict of :mod:`mmcourse.data.dataset` and
returns class logits.

Shape letters: B batch, L tokens, E embedding width, H hidden width, C classes,
S image side.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data.text import PAD_ID


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``, optionally only those with gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token features over real tokens: (B, L, E), (B, L) bool -> (B, E).

    A row with no real token gives zeros (not NaN).
    """
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (B, L, E) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
    weights = mask.to(x.dtype).unsqueeze(-1)                     # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, E)


@dataclass
class ReferenceConfig:
    """Hyper-parameters of the article's model (§5.2): embed 128, hidden 128, 10 classes."""

    vocab_size: int          # the article hard-codes 1000; we use the tokenizer's vocabulary
    image_size: int = 32     # the article's listing assumes 3x64x64 images
    embed_dim: int = 128
    hidden_dim: int = 128
    num_classes: int = 10


class ReferenceModel(nn.Module):
    """Text encoder (embedding, mean pool, 2-layer MLP) + image encoder (flat 2-layer MLP),
    concatenation fusion with one hidden layer, linear classifier.

    Two fixes to the printed listing: the token embeddings are mean-pooled over
    real tokens before the MLP (the listing keeps a (B, L, E) tensor and cannot
    concatenate it with the (B, H) image feature), and the image is flattened
    before its first Linear layer.
    """

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.config = config
        e, h = config.embed_dim, config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, e, padding_idx=PAD_ID)
        self.text_mlp = nn.Sequential(nn.Linear(e, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.image_encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * config.image_size**2, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU())
        self.fc = nn.Linear(h, config.num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        text, image = inputs["text"], inputs["image"]           # (B, L), (B, 3, S, S)
        s = self.config.image_size
        if image.shape[1:] != (3, s, s):
            raise ValueError(f"image must be (B, 3, {s}, {s}), got {tuple(image.shape)}")
        tokens = self.embedding(text)                           # (B, L, E)
        text_feat = self.text_mlp(masked_mean(tokens, text != PAD_ID))  # (B, H)
        image_feat = self.image_encoder(image)                  # (B, H)
        fused = self.fusion(torch.cat([text_feat, image_feat], dim=1))  # (B, H)
        return self.fc(fused)                                   # (B, C)


def count_flops(module: nn.Module, *inputs) -> int:
    """Floating-point operations of one forward pass on ``inputs`` (torch's FLOP counter: a multiply-add is 2).

    Attention's fused kernels are invisible to the counter (the inference fast
    path of ``nn.MultiheadAttention``, and the CPU flash kernel of
    ``scaled_dot_product_attention``), so while counting the fast path is off
    and attention runs on its plain matmul ("math") backend: the arithmetic is the same.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training, fastpath = module.training, torch.backends.mha.get_fastpath_enabled()
    grads = [p.requires_grad for p in module.parameters()]
    module.eval()
    # The counter's module tracker fails on views of gradient-requiring parameters under no_grad
    # ("Expected gradient function to be set", seen with nn.MultiheadAttention): freeze them meanwhile.
    module.requires_grad_(False)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
        for p, g in zip(module.parameters(), grads):
            p.requires_grad_(g)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def _on_cuda(x) -> bool:
    """Whether a tensor, or any tensor in a (nested) dict / list / tuple, lives on a CUDA device."""
    if isinstance(x, torch.Tensor):
        return x.is_cuda
    if isinstance(x, dict):
        return any(_on_cuda(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_on_cuda(v) for v in x)
    return False


def measure_latency(module: nn.Module, *inputs, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass on ``inputs`` in eval mode without gradients (synchronising CUDA)."""
    import statistics
    import time

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    was_training = module.training
    module.eval()
    on_cuda = _on_cuda(inputs) or any(p.is_cuda for p in module.parameters())
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                module(*inputs)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        module.train(was_training)
    return statistics.median(times)
