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


# ----------------------------------------------------------------------------- detection and risk scores
# Binary scores (chapters 11-13): the higher the score, the likelier the positive class. A weighted form
# (distinct scores with the positive and negative mass at each) serves both a sample (masses = counts) and
# a population (masses = probabilities), so the exact Bayes values of mmcourse.applications and the
# test-set figures are one computation.

TIE_DECIMALS = 12   # scores equal to 12 decimals are one tie group (a posterior computed two ways differs by ~1e-16)


def _check_binary(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = as_numpy(scores).astype(np.float64), as_numpy(labels)
    if s.ndim != 1 or y.shape != s.shape or len(s) == 0:
        raise ValueError(f"scores and labels must be 1-D of equal length >= 1, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    if y.min() == y.max():
        raise ValueError(f"labels must hold both classes to rank them; all {len(y)} are {int(y[0])}")
    return s, y


def _groups(s, pos, neg):
    """Tie groups in descending score order: (distinct scores, positive mass, negative mass), each (G,)."""
    s = np.round(np.asarray(s, np.float64), TIE_DECIMALS)
    distinct, inverse = np.unique(-s, return_inverse=True)            # ascending -s = descending s
    p = np.bincount(inverse.reshape(-1), weights=pos, minlength=len(distinct))
    n = np.bincount(inverse.reshape(-1), weights=neg, minlength=len(distinct))
    return -distinct, p, n


def _check_masses(s, pos, neg):
    s, pos, neg = (np.asarray(a, np.float64).reshape(-1) for a in (s, pos, neg))
    if not (s.shape == pos.shape == neg.shape) or (pos < 0).any() or (neg < 0).any():
        raise ValueError(f"scores, positive and negative masses must be equal-length and >= 0, got shapes "
                         f"{s.shape}, {pos.shape}, {neg.shape}")
    if pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("both the positive and the negative mass must be > 0")
    return s, pos, neg


def population_auroc(s, pos, neg) -> float:
    """AUROC of scores ``s`` (O,) with positive and negative masses (O,): P(s+ > s-) + P(s+ = s-) / 2."""
    _, p, n = _groups(*_check_masses(s, pos, neg))
    below = n.sum() - np.cumsum(n)                                     # negative mass strictly below each group
    return float((p * (below + 0.5 * n)).sum() / (p.sum() * n.sum()))


def population_ap(s, pos, neg) -> float:
    """Average precision of a population: the area under its precision-recall curve, tied scores ordered at
    random (within a tie group the positives come at the group's rate, so precision moves smoothly).

    A group holding mass m = p + n after mass b with positive mass a adds
    (s/P) * integral_0^m (a + s t) / (b + t) dt, s = p / m:  (s/P) (s m + (a - s b) ln((b + m) / b)).
    """
    _, p, n = _groups(*_check_masses(s, pos, neg))
    m = p + n
    a = np.cumsum(p) - p                                               # positive mass before each group
    b = np.cumsum(m) - m                                               # all mass before each group
    rate = np.divide(p, m, out=np.zeros_like(p), where=m > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(b > 0, (a - rate * b) * np.log(np.where(b > 0, (b + m) / b, 1.0)), 0.0)
    return float((rate * (rate * m + log_term)).sum() / p.sum())


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of binary ``scores`` (N,) for ``labels`` (N,) in {0, 1}; ties count 1/2
    (scikit-learn's ``roc_auc_score``)."""
    s, y = _check_binary(scores, labels)
    return population_auroc(s, y == 1, y == 0)


def average_precision(scores, labels) -> float:
    """Average precision of binary ``scores`` (N,): mean over positives of the precision at their rank.

    Without ties it equals scikit-learn's ``average_precision_score``. Tied scores are ordered at random,
    where scikit-learn takes the whole group at its last rank: the j-th of a group's p positives among its
    m cases is put at its expected rank j (m + 1) / (p + 1) within the group. (The exact expectation of the
    precision is higher by a Jensen gap of order 1/m, below 0.002 for the groups of chapters 11-13; the
    tests measure it.) So a tied score, such as a Bayes posterior that takes few values, is not penalised
    against a model whose continuous scores never tie.
    """
    s, y = _check_binary(scores, labels)
    _, p, n = _groups(s, (y == 1).astype(np.float64), (y == 0).astype(np.float64))
    m = p + n
    a, b = np.cumsum(p) - p, np.cumsum(m) - m
    counts = p.astype(np.int64)
    g = np.repeat(np.arange(len(p)), counts)                           # the group of each positive
    j = np.arange(len(g)) - np.repeat(np.cumsum(counts) - counts, counts) + 1   # its index 1..p in the group
    precision = (a[g] + j) / (b[g] + j * (m[g] + 1) / (p[g] + 1))   # the j-th positive's expected rank in its group
    return float(precision.sum() / p.sum())


def binary_brier(probs, labels) -> float:
    """Brier score of P(positive) ``probs`` (N,) for ``labels`` (N,) in {0, 1}: mean (p - y)^2.

    Half the multi-class :func:`brier_score` of the two-column probabilities.
    """
    p, y = as_numpy(probs).astype(np.float64), as_numpy(labels)
    if p.ndim != 1 or y.shape != p.shape or len(p) == 0:
        raise ValueError(f"probs and labels must be 1-D of equal length >= 1, got {p.shape} and {y.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must hold probabilities in [0, 1]")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return float(((p - y) ** 2).mean())


def reliability_bins(probs, labels, bins: int = 10) -> dict[str, np.ndarray]:
    """A reliability diagram's data for binary ``probs`` (N,): per equal-width bin of P(positive), its
    count, mean predicted probability and observed positive rate (NaN for an empty bin); and the binary
    expected calibration error sum over bins |rate - mean prob| * count / N under key ``"ece"``."""
    p, y = as_numpy(probs).astype(np.float64), as_numpy(labels).astype(np.float64)
    if p.ndim != 1 or y.shape != p.shape or len(p) == 0 or bins < 1:
        raise ValueError(f"expected probs (N,), labels (N,) and bins >= 1, got {p.shape}, {y.shape}, {bins}")
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=bins) / count
        rate = np.bincount(index, weights=y, minlength=bins) / count
    ece = float(np.nansum(np.abs(rate - mean_p) * count) / len(p))
    return {"count": count, "mean_prob": mean_p, "rate": rate, "edges": np.linspace(0, 1, bins + 1),
            "ece": np.float64(ece)}


def bootstrap_se(metric, *arrays, n_boot: int = 200, seed: int = 0) -> float:
    """Standard error of ``metric(*arrays)`` over test sets resampled with replacement (all arrays alike).

    Resamples in which ``metric`` raises a ValueError (e.g. no positive drawn) are skipped.
    """
    arrays = [as_numpy(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays) or n == 0:
        raise ValueError(f"arrays must share one length >= 1, got {[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            values.append(metric(*(a[idx] for a in arrays)))
        except ValueError:
            continue
    if len(values) < 2:
        raise ValueError("fewer than 2 bootstrap resamples could be scored")
    return float(np.std(values, ddof=1))


def threshold_at_false_alarm_rate(scores, labels, rate: float) -> tuple[float, float, float]:
    """The alarm threshold of binary ``scores`` whose false-alarm rate on these labels is at most ``rate``.

    Alarm when score >= threshold. Returns (threshold, false-alarm rate, detection rate) at the lowest such
    threshold among the scores (ties move together: a threshold cannot split a tie).
    """
    s, y = _check_binary(scores, labels)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a false-alarm rate in [0, 1], got {rate}")
    distinct, p, n = _groups(s, (y == 1).astype(np.float64), (y == 0).astype(np.float64))
    far = np.cumsum(n) / n.sum()                                       # alarm at >= each distinct score
    ok = np.flatnonzero(far <= rate + 1e-12)
    if len(ok) == 0:
        return float(np.inf), 0.0, 0.0
    k = ok[-1]
    return float(distinct[k]), float(far[k]), float(np.cumsum(p)[k] / p.sum())
