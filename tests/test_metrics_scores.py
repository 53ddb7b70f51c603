"""mmcourse.metrics, binary scores (chapters 11-13): AUROC and average precision against scikit-learn and
against brute force written here (all pairs; every random order of tied scores), their population forms
against large samples, the Brier score, reliability bins, the bootstrap SE and the alarm threshold."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from mmcourse.metrics import (average_precision, binary_brier, bootstrap_se, population_ap, population_auroc,
                              reliability_bins, roc_auc, threshold_at_false_alarm_rate)


def _pairs_auroc(s, y):
    """P(s+ > s-) + P(s+ = s-) / 2 over every positive-negative pair."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _ap_of_order(y_sorted):
    """Mean over positives of the precision at their rank, for labels in ranked order (no ties)."""
    hits = np.cumsum(y_sorted)
    ranks = np.arange(1, len(y_sorted) + 1)
    return float((hits / ranks)[y_sorted == 1].mean())


@pytest.fixture
def tied():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    s = np.round(np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1), 1)     # 11 distinct values: many ties
    return s, y


def test_auroc_equals_all_pairs_and_sklearn_with_ties(tied):
    s, y = tied
    assert roc_auc(s, y) == pytest.approx(_pairs_auroc(s, y), abs=1e-12)
    assert roc_auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_ap_without_ties_equals_sklearn_and_the_explicit_loop():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = y * 0.5 + rng.random(300)
    assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(_ap_of_order(y[np.argsort(-s)]), abs=1e-12)
    # one tie of two: the positive comes first or second, AP 1 or 1/2, expected 3/4; at its expected rank 3/2, 2/3
    assert average_precision(s[:1].repeat(2), np.array([0, 1])) == pytest.approx(2 / 3)


def test_ap_with_ties_is_the_mean_over_random_tie_breaking():
    # Exact on a tiny case: every order of a tie group of 2 positives and 2 negatives after 1 positive.
    s = np.array([1.0, 0.5, 0.5, 0.5, 0.5])
    y = np.array([1, 1, 1, 0, 0])
    orders = [np.array((1,) + p) for p in set(itertools.permutations((1, 1, 0, 0)))]
    exact = np.mean([_ap_of_order(o) for o in orders])
    assert average_precision(s, y) == pytest.approx(exact, abs=0.03)     # expected ranks: a Jensen gap on 4 cases
    # Monte-Carlo over random tie-breaks of a large tied sample: the approximation is well inside 0.002.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 3000)
    s = np.round(np.clip(0.2 * y + rng.random(3000) * 0.8, 0, 1), 1)
    mc = np.mean([skm.average_precision_score(y, s + rng.random(3000) * 1e-6) for _ in range(40)])
    assert average_precision(s, y) == pytest.approx(mc, abs=0.002)
    assert average_precision(s, y) > skm.average_precision_score(y, s) + 0.01     # sklearn takes ties at their end


def test_population_forms_are_the_limit_of_large_samples():
    s = np.array([0.9, 0.6, 0.6, 0.2, 0.05])                 # two observations tie at 0.6
    weight = np.array([0.1, 0.15, 0.05, 0.3, 0.4])
    pos, neg = weight * s, weight * (1 - s)
    n = 200000
    counts_pos, counts_neg = np.rint(pos * n).astype(int), np.rint(neg * n).astype(int)
    ss = np.concatenate([np.repeat(s, counts_pos), np.repeat(s, counts_neg)])
    yy = np.concatenate([np.ones(counts_pos.sum(), int), np.zeros(counts_neg.sum(), int)])
    assert population_auroc(s, pos, neg) == pytest.approx(roc_auc(ss, yy), abs=1e-4)
    assert population_ap(s, pos, neg) == pytest.approx(average_precision(ss, yy), abs=1e-4)
    # A single tie group: precision is the prevalence everywhere, AP = AUROC's chance = ...
    assert population_ap([0.3], [0.3], [0.7]) == pytest.approx(0.3)
    assert population_auroc([0.3], [0.3], [0.7]) == pytest.approx(0.5)


def test_brier_and_reliability_bins():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    assert binary_brier(p, y) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    bins = reliability_bins(p, y, bins=10)
    assert bins["count"][1] == 2 and bins["rate"][1] == 0.5 and bins["mean_prob"][9] == pytest.approx(0.9)
    assert float(bins["ece"]) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert np.isnan(bins["rate"][5])                                        # an empty bin
    rng = np.random.default_rng(4)
    q = rng.random(100000)
    assert float(reliability_bins(q, rng.random(100000) < q)["ece"]) < 0.01   # calibrated by construction


def test_bootstrap_se_of_a_mean_is_the_analytic_se():
    rng = np.random.default_rng(5)
    x = (rng.random(2000) < 0.3).astype(float)
    se = bootstrap_se(np.mean, x, n_boot=400, seed=0)
    assert se == pytest.approx(np.sqrt(0.3 * 0.7 / 2000), rel=0.15)
    assert bootstrap_se(np.mean, x, n_boot=50, seed=1) == bootstrap_se(np.mean, x, n_boot=50, seed=1)


def test_threshold_at_false_alarm_rate():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    tau, far, det = threshold_at_false_alarm_rate(s, y, 0.2)
    assert (tau, far, det) == (0.4, pytest.approx(2 / 7), pytest.approx(1.0)) or far <= 0.2
    assert far <= 0.2 and tau == 0.6 and det == pytest.approx(1.0)
    assert threshold_at_false_alarm_rate(s, y, 0.0)[2] == pytest.approx(1 / 3)
    tau, far, det = threshold_at_false_alarm_rate(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0]), 0.1)
    assert tau == np.inf and det == 0.0                                     # a tie cannot be split


@pytest.mark.parametrize("call, message", [
    (lambda: roc_auc([0.1, 0.2], [1, 1]), "must hold both classes"),
    (lambda: roc_auc([0.1, 0.2], [0, 2]), "labels must be 0"),
    (lambda: average_precision([0.1], [0, 1]), "1-D of equal length"),
    (lambda: average_precision([np.nan, 0.2], [0, 1]), "finite"),
    (lambda: binary_brier([1.2], [1]), r"\[0, 1\]"),
    (lambda: threshold_at_false_alarm_rate([0.1, 0.2], [0, 1], 1.5), "rate must be"),
    (lambda: population_auroc([0.1], [0.0], [1.0]), "positive and the negative mass"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
