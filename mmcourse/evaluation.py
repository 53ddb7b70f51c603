"""One evaluation loop: run a model over a dataset in batches and gather what it returns.

Every pass that only reads a model (features for a probe, embeddings for retrieval,
predictions for a score) is :func:`run_batches` with a small ``fn(model, batch)``,
the same calling convention as the training loop's ``loss_fn(model, batch)``. The
loop decides nothing about the device itself: :func:`mmcourse.utils.inference` gives
no_grad and the training loop's precision, :func:`mmcourse.utils.prepare_inputs`
moves each batch (channels-last images on CUDA).

Shape letters: N samples, B batch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from .data.dataset import make_loader
from .utils import inference, prepare_inputs

EVAL_BATCH_SIZE = 512   # samples per forward pass when given a dataset: the default every evaluation helper had


def _to_host(out, non_blocking: bool):
    """Start copying ``fn``'s output (tensor, or tuple / dict of them) to the CPU; each tensor must be (B, ...)."""
    if isinstance(out, torch.Tensor):
        if out.dim() == 0:
            raise ValueError("fn must return tensors with a batch dimension (B, ...), got a 0-d tensor")
        return out.detach().to("cpu", non_blocking=non_blocking)
    if isinstance(out, Mapping):
        return {k: _to_host(v, non_blocking) for k, v in out.items()}
    if isinstance(out, tuple):
        return tuple(_to_host(v, non_blocking) for v in out)
    raise TypeError(f"fn must return a tensor, or a tuple or dict of tensors, got {type(out).__name__}")


def _concat(parts: list):
    """Concatenate per-batch outputs along the batch dimension; half-precision floats come back as float32."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        out = torch.cat(parts)
        return out.float() if out.is_floating_point() and out.element_size() < 4 else out
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    return tuple(_concat(list(column)) for column in zip(*parts))


def run_batches(model: nn.Module, fn: Callable, data, device, batch_size: int = EVAL_BATCH_SIZE):
    """``fn(model, batch)`` on every batch of ``data``, concatenated in order on the CPU.

    The model is put in eval mode for the pass and every submodule's train/eval mode is
    restored afterwards. Each batch is moved by :func:`mmcourse.utils.prepare_inputs`
    and ``fn`` runs under :func:`mmcourse.utils.inference` (no gradients; bf16 autocast
    on CUDA, as in training). Outputs are copied to the CPU without waiting, and the
    device is synchronised once, before concatenating.

    Args:
        model: the module ``fn`` runs (on ``device`` already).
        fn: ``fn(model, batch)`` returns a tensor (B, ...), or a tuple or dict of them.
        data: a ``Dataset`` (batched with :func:`mmcourse.data.make_loader` and ``batch_size``)
            or anything that yields batches, e.g. a ``DataLoader`` (``batch_size`` unused).
        device: where ``fn`` runs.
        batch_size: samples per batch for a ``Dataset``.

    Returns:
        ``fn``'s structure with each tensor (N, ...) on the CPU; bf16/fp16 floats as float32.

    Raises:
        ValueError: if ``data`` yields no batches, or ``fn`` returns a 0-d tensor.
    """
    device = torch.device(device)
    batches = make_loader(data, batch_size) if isinstance(data, Dataset) else data
    non_blocking = device.type == "cuda"          # a CUDA-to-CPU copy lands in pinned memory, ordered on the stream
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    parts = []
    try:
        with inference(device):
            for batch in batches:
                parts.append(_to_host(fn(model, prepare_inputs(batch, device)), non_blocking))
    finally:
        for module, training in modes:
            module.training = training
    if not parts:
        raise ValueError(f"data yielded no batches (an empty {type(data).__name__}): nothing to evaluate")
    if non_blocking:
        torch.cuda.synchronize(device)            # the copies must have landed before the CPU reads them
    return _concat(parts)
