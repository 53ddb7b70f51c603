"""A small, honest training loop: one epoch of Adam steps, prediction, and ``fit``.

Metrics are accumulated on the device and read once per epoch, so the hot
loop makes no host synchronisation per step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .data.dataset import to_device
from .metrics import accuracy
from .utils import autocast


@dataclass
class History:
    """Per-epoch records of a run (plots and reports read these)."""

    train_loss: list[float] = field(default_factory=list)
    dev_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device) -> float:
    """One pass over ``loader`` with cross-entropy; returns the mean training loss."""
    model.train()
    total = torch.zeros((), device=device)
    count = 0
    for batch in loader:
        inputs, target = to_device(batch, device)
        with autocast(device):
            loss = nn.functional.cross_entropy(model(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(target)
        count += len(target)
    if count == 0:
        raise ValueError("the training loader yielded no batches")
    return float(total) / count


@torch.no_grad()
def predict(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and true labels over ``loader``: (N,), (N,) on the CPU."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        inputs, target = to_device(batch, device)
        with autocast(device):
            preds.append(model(inputs).argmax(-1))
        labels.append(target)
    return torch.cat(preds).cpu(), torch.cat(labels).cpu()


def accuracy_on(model: nn.Module, loader, device) -> float:
    """Fraction of correct predictions of ``model`` over ``loader``."""
    return accuracy(*predict(model, loader, device))


def fit(model: nn.Module, train_loader, dev_loader, optimizer, epochs: int, device) -> History:
    """Train for ``epochs`` epochs, recording train loss and dev accuracy after each."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    history = History()
    for _ in range(epochs):
        start = time.perf_counter()
        history.train_loss.append(train_epoch(model, train_loader, optimizer, device))
        history.dev_accuracy.append(accuracy_on(model, dev_loader, device))
        history.seconds.append(time.perf_counter() - start)
    return history
