"""Evaluation: accuracy, the per-class report, the confusion matrix, calibration (ECE, negative
log-likelihood, Brier score), retrieval Recall@K, and the linear-probe accuracy of frozen features.

Shape letters: N samples, C classes, D feature width; Nq queries and Ng gallery items for retrieval.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm

PROBE_MAX_ITER = 2000   # iteration cap of the probe's L-BFGS fit (scikit-learn's default: 100), as the course has used


def accuracy_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent test samples: sqrt(p (1 - p) / n)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be an accuracy in [0, 1], got {p}")
    if n < 1:
        raise ValueError(f"n must be a number of test samples >= 1, got {n}")
    return float(np.sqrt(p * (1.0 - p) / n))


SE_MULTIPLE = 3.0   # a target at a Bayes limit allows 3 standard errors of the test set (about 1 in 700 one-sided)


def bayes_floor(limit: float, n: int, margin: float = 0.0, k: float = SE_MULTIPLE) -> float:
    """The lowest accuracy that still meets a target of ``limit - margin`` measured on ``n`` test samples.

    ``limit`` is an exact Bayes limit (or any ceiling), ``margin`` what the model may fall short of it by
    design, and ``k`` standard errors of the test set absorb sampling noise, so that the target holds on
    any machine whose model is as good as the margin says.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return limit - margin - k * accuracy_se(limit, n)


def as_numpy(x) -> np.ndarray:
    """A tensor on any device, or an array-like, as a NumPy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = as_numpy(pred), as_numpy(true)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"pred and true must be 1-D of equal length, got {pred.shape} and {true.shape}")
    if len(pred) == 0:
        raise ValueError("pred and true are empty")
    return pred, true


SHOWN_LABELS = 5   # out-of-range labels listed in an error message


def _check_labels(pred: np.ndarray | None, true: np.ndarray, num_classes: int) -> None:
    """Every label of ``pred`` (None: no predictions to check) and ``true`` must be an integer class index in [0, C)."""
    for name, x in (("pred", pred), ("true", true)):
        if x is None:
            continue
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {x.dtype}")
        bad = np.unique(x[(x < 0) | (x >= num_classes)])
        if len(bad):
            shown = ", ".join(str(v) for v in bad[:SHOWN_LABELS]) + (", ..." if len(bad) > SHOWN_LABELS else "")
            raise ValueError(f"{name} holds labels outside [0, {num_classes}) for C = {num_classes} classes: {shown}")


def accuracy(pred, true) -> float:
    """Fraction of predictions equal to the labels: (N,), (N,) -> float."""
    pred, true = _check_pair(pred, true)
    return float((pred == true).mean())


def classification_report(pred, true, class_names, digits: int = 3) -> tuple[str, dict]:
    """Per-class precision, recall, F1 and support, with micro, macro and weighted averages.

    The layout follows the article's §5.4 table: one row per class, then the micro, macro
    and weighted averages (every class is listed, so micro precision = recall = F1 = accuracy).

    Args:
        pred, true: (N,) integer class indices in [0, C).
        class_names: the C names, in class-index order.
        digits: decimals printed.

    Returns:
        The text and a dict (keys: the class names, ``"micro avg"``, ``"macro avg"``, ``"weighted avg"``).

    Raises:
        ValueError: for inputs of different lengths, or a label outside [0, C) (naming the array and the labels).
    """
    pred, true = _check_pair(pred, true)
    _check_labels(pred, true, len(class_names))
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
    """Counts (C, C): row = true class, column = predicted class; every sample is counted once.

    Raises:
        ValueError: for inputs of different lengths, or a label outside [0, C) (naming the array and the labels).
    """
    pred, true = _check_pair(pred, true)
    _check_labels(pred, true, num_classes)
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


PROB_FLOOR = float(np.finfo(np.float64).eps)   # -log p is taken of max(p, this): scikit-learn's log_loss clips so
ROW_SUM_TOL = 1e-3                              # |row sum - 1| allowed in a probability matrix (float32 softmax rounding)


def _check_probs(probs, true) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` (N, C) as float64 rows of probabilities, ``true`` (N,) as integer classes in [0, C)."""
    probs, true = as_numpy(probs).astype(np.float64), as_numpy(true)
    if probs.ndim != 2 or true.shape != probs.shape[:1] or len(true) == 0:
        raise ValueError(f"expected probs (N, C) and true (N,) with N >= 1, got {probs.shape} and {true.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must hold finite probabilities in [0, 1]")
    worst = np.abs(probs.sum(1) - 1).max()
    if worst > ROW_SUM_TOL:
        raise ValueError(f"every row of probs (N, C) must sum to 1 (within {ROW_SUM_TOL}); one is off by {worst:.3g}")
    _check_labels(None, true, probs.shape[1])
    return probs, true


def negative_log_likelihood(probs, true) -> float:
    """Mean negative log-likelihood of the true classes: mean over samples of -log p(true class), in nats.

    The cross-entropy of the predicted distribution against the one-hot labels (scikit-learn's
    ``log_loss``); a model that puts probability near 0 on a true class pays without bound, so
    over-confident mistakes dominate it. p is clipped at :data:`PROB_FLOOR`.

    Args:
        probs: (N, C) class probabilities (rows sum to 1).
        true: (N,) true classes in [0, C).

    Raises:
        ValueError: for shapes other than (N, C) and (N,), values outside [0, 1], rows that do not sum to 1,
            or a label outside [0, C).
    """
    probs, true = _check_probs(probs, true)
    p_true = probs[np.arange(len(true)), true]                             # (N,)
    return float(-np.log(np.maximum(p_true, PROB_FLOOR)).mean())


def brier_score(probs, true) -> float:
    """Brier score: mean over samples of the squared distance sum_c (p_c - [c = y])^2 to the one-hot label.

    Brier (1950, "Verification of forecasts expressed in terms of probability"), multi-class form: 0 for
    certain right predictions, 2 for certain wrong ones; unlike the negative log-likelihood it is bounded.

    Args:
        probs: (N, C) class probabilities (rows sum to 1).
        true: (N,) true classes in [0, C).

    Raises:
        ValueError: as :func:`negative_log_likelihood`.
    """
    probs, true = _check_probs(probs, true)
    one_hot = np.eye(probs.shape[1])[true]                                  # (N, C)
    return float(((probs - one_hot) ** 2).sum(1).mean())


def recall_at_k(similarity, ks=(1, 5, 10)) -> dict[int, float]:
    """Retrieval Recall@K: the fraction of queries whose match is among the K best-scored gallery items.

    Query i's match is gallery item i (paired data: image i and caption i). Ties count
    against the query: the rank of the match is the number of *other* gallery items that
    score at least as high as it (0 = first), and query i is a hit at K when that rank is
    below K. So a model that gives every item the same score gets Recall@K = 0 for K < N,
    never the chance level K / N by luck of the sort order.

    Args:
        similarity: (Nq, Ng) scores, Nq <= Ng; row i scores query i against every gallery
            item, its match in column i (a tensor or an array).
        ks: the cut-offs K, each >= 1.

    Returns:
        ``{K: recall}``, floats in [0, 1], in the order of ``ks``.

    Raises:
        ValueError: if ``similarity`` is not 2-D with Nq <= Ng and Nq >= 1, holds NaN, or a K is < 1.
    """
    sim = torch.as_tensor(similarity)
    if sim.dim() != 2 or sim.shape[0] == 0 or sim.shape[0] > sim.shape[1]:
        raise ValueError(f"similarity must be (Nq, Ng) with 1 <= Nq <= Ng (query i matches gallery i), "
                         f"got shape {tuple(sim.shape)}")
    if sim.is_floating_point() and bool(torch.isnan(sim).any()):
        raise ValueError("similarity holds NaN scores")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be integers >= 1, got {ks}")
    rows = torch.arange(sim.shape[0], device=sim.device)
    match = sim[rows, rows].unsqueeze(1)                                 # (Nq, 1)
    rank = (sim >= match).sum(1) - 1                                     # (Nq,): others scoring >= the match
    return {k: float((rank < k).double().mean()) for k in ks}


def linear_probe_accuracy(train_x, train_y, test_x, test_y, per_class: int | None = None, seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe on frozen features, optionally from few labels.

    A measurement of what features make linearly available (chapter 06 scores pretrained
    encoders with it, chapter 07 each encoder of a joint model, chapter 09 MiniLM), not a
    way to adapt a model: ``mmcourse.adapt``'s ``linear_probe`` method trains a head by
    gradient descent instead.

    Args:
        train_x: (N, D) features; train_y: (N,) class indices.
        test_x: (N', D); test_y: (N',).
        per_class: keep only this many training samples per class (drawn with ``seed``); None: all.

    Features are standardised with the (kept) training rows' mean and deviation. The fit runs
    on one BLAS thread: for a problem this small, more threads only wait on each other
    (measured: 100x slower with two threads on a busy 2-core machine).
    """
    from sklearn.linear_model import LogisticRegression      # imported here: most users of metrics never fit a probe
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, xt = as_numpy(train_x).astype(np.float64), as_numpy(test_x).astype(np.float64)
    y, yt = as_numpy(train_y), as_numpy(test_y)
    if x.ndim != 2 or xt.ndim != 2 or x.shape[1] != xt.shape[1] or y.shape != x.shape[:1] or yt.shape != xt.shape[:1]:
        raise ValueError(f"expected train_x (N, D), train_y (N,), test_x (N', D), test_y (N',), got "
                         f"{x.shape}, {y.shape}, {xt.shape}, {yt.shape}")
    if per_class is not None:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
        x, y = x[keep], y[keep]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
    with threadpool_limits(1):
        return float((probe.fit(x, y).predict(xt) == yt).mean())
