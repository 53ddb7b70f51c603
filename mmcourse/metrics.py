"""Evaluation: accuracy, the per-class report, the confusion matrix, calibration.

Shape letters: N samples, C classes.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _as_numpy(pred), _as_numpy(true)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"pred and true must be 1-D of equal length, got {pred.shape} and {true.shape}")
    if len(pred) == 0:
        raise ValueError("pred and true are empty")
    return pred, true


def accuracy(pred, true) -> float:
    """Fraction of predictions equal to the labels: (N,), (N,) -> float."""
    pred, true = _check_pair(pred, true)
    return float((pred == true).mean())


def classification_report(pred, true, class_names, digits: int = 3) -> tuple[str, dict]:
    """Per-class precision, recall, F1 and support, with micro, macro and weighted averages.

    The layout follows the article's §5.4 table. Returns the text and a dict.
    """
    pred, true = _check_pair(pred, true)
    labels = list(range(len(class_names)))
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0)
    text = skm.classification_report(true, pred, digits=digits, **kwargs)
    table = skm.classification_report(true, pred, output_dict=True, **kwargs)
    # With every class listed, scikit-learn prints 'accuracy'; the article prints the micro average.
    p, r, f, _ = skm.precision_recall_fscore_support(true, pred, labels=labels, average="micro", zero_division=0)
    table["micro avg"] = {"precision": p, "recall": r, "f1-score": f, "support": len(true)}
    width = max(len(n) for n in (*class_names, "weighted avg"))
    micro = f"{'micro avg':>{width}}  {p:>9.{digits}f} {r:>9.{digits}f} {f:>9.{digits}f} {len(true):>9}"
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("accuracy")]
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("macro avg"))
    return "\n".join(lines[:at] + [micro] + lines[at:]), table


def confusion_matrix(pred, true, num_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class."""
    pred, true = _check_pair(pred, true)
    return skm.confusion_matrix(true, pred, labels=list(range(num_classes)))


def expected_calibration_error(probs, true, bins: int = 10) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over confidence bins.

    Predictions are grouped into ``bins`` equal-width bins of their confidence
    (the largest probability); ECE = sum over bins of |sum(correct - confidence)| / N,
    i.e. each bin's |accuracy - mean confidence| weighted by its share of samples.

    Args:
        probs: (N, C) class probabilities (rows sum to 1).
        true: (N,) true classes.
        bins: number of bins on [0, 1].
    """
    probs = torch.as_tensor(probs)
    true = torch.as_tensor(true)
    if probs.dim() != 2 or true.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and true (N,), got {tuple(probs.shape)} and {tuple(true.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, pred = probs.max(dim=1)
    index = (confidence * bins).long().clamp(0, bins - 1)
    gap = torch.bincount(index.cpu(), weights=((pred == true).double() - confidence.double()).cpu(), minlength=bins)
    return float(gap.abs().sum() / len(true))
