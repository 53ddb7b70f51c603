"""mmcourse.metrics: accuracy, the per-class report against scikit-learn, the confusion matrix, calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.metrics import precision_recall_fscore_support

from mmcourse.metrics import accuracy, classification_report, confusion_matrix, expected_calibration_error

CLASSES = ("ringing circle", "muted circle", "ringing square", "muted square")


@pytest.fixture
def pred_true():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, true, rng.integers(0, 4, 200))
    pred[pred == 3] = 2  # class 3 is never predicted: precision 0 by convention, not a crash
    return pred, true


def test_accuracy_counts_matches():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(torch.tensor([3]), torch.tensor([3])) == 1.0  # tensors, batch of one


@pytest.mark.parametrize("pred, true, message", [
    ([0, 1], [0], r"pred and true must be 1-D of equal length, got \(2,\) and \(1,\)"),
    ([[0]], [[0]], r"must be 1-D of equal length, got \(1, 1\)"),
    ([], [], "pred and true are empty"),
])
def test_bad_inputs_raise(pred, true, message):
    with pytest.raises(ValueError, match=message):
        accuracy(pred, true)


def _rows(text: str) -> dict[str, list[float]]:
    """Parse the report text: row name -> numbers (class names hold spaces)."""
    rows = {}
    for line in text.splitlines():
        parts = line.rsplit(maxsplit=4)
        if len(parts) == 5:
            rows[parts[0].strip()] = [float(x) for x in parts[1:]]
    return rows


def test_report_numbers_equal_scikit_learn(pred_true):
    pred, true = pred_true
    text, table = classification_report(pred, true, CLASSES, digits=3)
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=range(4), zero_division=0)
    rows = _rows(text)
    for k, name in enumerate(CLASSES):
        # The text prints 3 decimals: half a unit in the last place is 5e-4.
        np.testing.assert_allclose(rows[name][:3], [p[k], r[k], f[k]], atol=5e-4 + 1e-12)
        assert rows[name][3] == s[k]
        assert table[name]["precision"] == pytest.approx(p[k], abs=1e-12)
        assert table[name]["recall"] == pytest.approx(r[k], abs=1e-12)
        assert table[name]["f1-score"] == pytest.approx(f[k], abs=1e-12)
    assert p[3] == 0.0  # the never-predicted class


def test_report_micro_average_line(pred_true):
    pred, true = pred_true
    text, table = classification_report(pred, true, CLASSES)
    p, r, f, _ = precision_recall_fscore_support(true, pred, labels=range(4), average="micro", zero_division=0)
    rows = _rows(text)
    np.testing.assert_allclose(rows["micro avg"], [p, r, f, len(true)], atol=5e-4)
    assert table["micro avg"]["precision"] == pytest.approx(p, abs=1e-12)
    # With every class listed, micro precision = recall = F1 = accuracy.
    assert p == pytest.approx(accuracy(pred, true), abs=1e-12)
    assert list(rows)[-3:] == ["micro avg", "macro avg", "weighted avg"]
    assert not any(line.strip().startswith("accuracy") for line in text.splitlines())


def test_report_columns_line_up(pred_true):
    pred, true = pred_true
    text, _ = classification_report(pred, true, CLASSES)
    lines = [line for line in text.splitlines() if line.strip() and "precision" not in line]
    assert len({len(line) for line in lines}) == 1, lines  # every row has the same width


def test_confusion_matrix_rows_are_true_classes():
    true = [0, 0, 0, 1, 2]
    pred = [0, 1, 1, 1, 0]
    cm = confusion_matrix(pred, true, num_classes=3)
    expected = np.array([[1, 2, 0],    # true 0: once right, twice called 1
                         [0, 1, 0],
                         [1, 0, 0]])   # true 2 called 0
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(true)


def test_confusion_matrix_keeps_absent_classes():
    assert confusion_matrix([0], [0], num_classes=4).shape == (4, 4)


def _random_labels(seed: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (pred, true) over C classes, with class 0 never predicted and class C-1 never true."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c - 1, n)                                         # never C - 1
    pred = np.where(rng.random(n) < 0.5, true, rng.integers(1, c, n))
    pred[pred == 0] = 1                                                       # never 0
    return pred, true


@pytest.mark.parametrize("seed, n, c", [(0, 300, 5), (1, 40, 8), (2, 1, 3), (3, 1000, 2)])
def test_report_and_confusion_matrix_equal_scikit_learn_on_random_labels(seed, n, c):
    pred, true = _random_labels(seed, n, c)
    names = [f"class {k}" for k in range(c)]
    labels = list(range(c))
    np.testing.assert_array_equal(confusion_matrix(pred, true, c), skm.confusion_matrix(true, pred, labels=labels))
    text, table = classification_report(pred, true, names)
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    rows = _rows(text)
    for k, name in enumerate(names):
        assert table[name]["precision"] == pytest.approx(p[k], abs=1e-12)
        assert table[name]["recall"] == pytest.approx(r[k], abs=1e-12)
        assert table[name]["f1-score"] == pytest.approx(f[k], abs=1e-12)
        assert table[name]["support"] == s[k] == rows[name][3]
    for average in ("micro", "macro", "weighted"):
        expected = precision_recall_fscore_support(true, pred, labels=labels, average=average, zero_division=0)[:3]
        got = [table[f"{average} avg"][k] for k in ("precision", "recall", "f1-score")]
        np.testing.assert_allclose(got, expected, atol=1e-12)
        np.testing.assert_allclose(rows[f"{average} avg"][:3], expected, atol=5e-4 + 1e-12)   # printed to 3 decimals
    assert table["micro avg"]["precision"] == pytest.approx(accuracy(pred, true), abs=1e-12)
    assert sum(ln.split()[:2] == ["micro", "avg"] for ln in text.splitlines()) == 1
    # The cases the draw is built to hold: class 0 never predicted, class C-1 never true.
    assert table["class 0"]["precision"] == 0.0 and table[names[-1]]["support"] == 0


@pytest.mark.parametrize("pred, true, message", [
    ([0, 1, 4], [0, 1, 2], r"pred holds labels outside \[0, 4\) for C = 4 classes: 4"),
    ([0, 1, 2], [0, -1, 7], r"true holds labels outside \[0, 4\) for C = 4 classes: -1, 7"),
    ([9, 8, 7, 6, 5, 4, 0], [0] * 7, r"pred holds labels .*: 4, 5, 6, 7, 8, \.\.\."),
    ([0.0, 1.0], [0, 1], "pred must hold integer class indices, got dtype float64"),
])
def test_labels_outside_the_classes_raise(pred, true, message):
    # Before: scikit-learn dropped such samples, so micro precision could exceed accuracy and the micro row
    # was printed twice (once by scikit-learn, once by us).
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred, true, num_classes=4)
    with pytest.raises(ValueError, match=message):
        classification_report(pred, true, CLASSES)
    with pytest.raises(ValueError, match="true holds labels outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 4]), num_classes=4)       # tensors too


def test_expected_calibration_error_equals_a_loop_over_bins():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=gen), dim=1)
    true = torch.randint(0, 4, (500,), generator=gen)
    conf, pred = probs.max(1)
    expected = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        in_bin = [i for i in range(500) if lo <= conf[i] < hi or (b == 9 and conf[i] == 1.0)]
        if in_bin:
            acc = sum(float(pred[i] == true[i]) for i in in_bin) / len(in_bin)
            mean_conf = sum(float(conf[i]) for i in in_bin) / len(in_bin)
            expected += len(in_bin) / 500 * abs(acc - mean_conf)
    assert expected_calibration_error(probs, true) == pytest.approx(expected, abs=1e-9)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[0.75, 0.25]] * 4)           # confidence 0.75, three of four right
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, torch.tensor([1, 1, 1, 1])) == pytest.approx(0.75)


def test_expected_calibration_error_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"probs \(N, C\) and true \(N,\)"):
        expected_calibration_error(torch.ones(3, 2) / 2, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="bins must be >= 1"):
        expected_calibration_error(torch.ones(3, 2) / 2, torch.zeros(3, dtype=torch.long), bins=0)


# --- chapter 06 ---

from mmcourse.metrics import recall_at_k  # noqa: E402


def _recall_by_sorting(sim: np.ndarray, k: int) -> float:
    """Reference: sort each row by score, the match placed after every item tied with it (ties count against)."""
    hits = 0
    for i, row in enumerate(sim):
        is_match = np.arange(len(row)) == i
        order = np.lexsort((is_match, -row))           # by score descending, then the match last among equals
        hits += int(np.flatnonzero(order == i)[0] < k)
    return hits / len(sim)


@pytest.mark.parametrize("shape, ties", [((50, 50), False), ((30, 80), False), ((60, 60), True), ((1, 1), False)])
def test_recall_at_k_equals_a_reference_that_sorts(shape, ties):
    rng = np.random.default_rng(sum(shape))
    sim = rng.integers(0, 4, shape).astype(float) if ties else rng.normal(size=shape)   # few values: many ties
    got = recall_at_k(torch.from_numpy(sim), ks=(1, 5, 10))
    assert list(got) == [1, 5, 10]
    for k, value in got.items():
        assert value == pytest.approx(_recall_by_sorting(sim, k)), k
    assert recall_at_k(sim, ks=(1,)) == {1: got[1]}                     # arrays work too


def test_recall_at_k_counts_ties_against_the_query():
    assert recall_at_k(torch.ones(5, 5), ks=(1, 4, 5)) == {1: 0.0, 4: 0.0, 5: 1.0}
    assert recall_at_k(torch.eye(5), ks=(1,)) == {1: 1.0}
    sim = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.1], [0.5, 0.1, 0.4]])
    assert recall_at_k(sim, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}


@pytest.mark.parametrize("sim, ks, message", [
    (torch.ones(3), (1,), r"similarity must be \(Nq, Ng\) with 1 <= Nq <= Ng .* got shape \(3,\)"),
    (torch.ones(4, 3), (1,), r"got shape \(4, 3\)"),
    (torch.full((2, 2), float("nan")), (1,), "similarity holds NaN"),
    (torch.ones(2, 2), (0,), r"ks must be integers >= 1, got \(0,\)"),
])
def test_recall_at_k_rejects_bad_input(sim, ks, message):
    with pytest.raises(ValueError, match=message):
        recall_at_k(sim, ks)


# --- chapter 06: linear probes ---

from mmcourse.metrics import linear_probe_accuracy  # noqa: E402


def test_linear_probe_uses_few_labels_and_checks_shapes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = np.eye(3)[y] * 3 + rng.normal(size=(600, 3)) * 0.3               # separable classes
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:], per_class=5) == 1.0
    with pytest.raises(ValueError, match=r"expected train_x \(N, D\), train_y \(N,\)"):
        linear_probe_accuracy(x[:300], y[:200], x[300:], y[300:])


def test_accuracy_se_and_the_bayes_floor():
    from mmcourse.metrics import accuracy_se, bayes_floor
    assert accuracy_se(0.5, 100) == pytest.approx(0.05)
    assert accuracy_se(1.0, 10) == 0.0
    assert bayes_floor(0.9, 900, margin=0.02) == pytest.approx(0.9 - 0.02 - 3 * 0.01)
    with pytest.raises(ValueError, match="p must be an accuracy"):
        accuracy_se(1.2, 10)
    with pytest.raises(ValueError, match="n must be"):
        accuracy_se(0.5, 0)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        bayes_floor(0.9, 100, margin=-0.1)


from mmcourse.metrics import brier_score, negative_log_likelihood  # noqa: E402

# Three samples, three classes, worked by hand:
#   p(true) = 0.7, 0.5, 0.2  ->  NLL = -(ln 0.7 + ln 0.5 + ln 0.2) / 3 = (0.35667 + 0.69315 + 1.60944) / 3 = 0.8864200
#   Brier rows: (0.7-1)^2+0.2^2+0.1^2 = 0.14; 0.25^2+(0.5-1)^2+0.25^2 = 0.375; 0.4^2+0.4^2+(0.2-1)^2 = 0.96
#   -> mean (0.14 + 0.375 + 0.96) / 3 = 0.4916667
HAND_PROBS = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.4, 0.4, 0.2]])
HAND_TRUE = np.array([0, 1, 2])


def test_nll_and_brier_of_a_hand_computed_case():
    assert negative_log_likelihood(HAND_PROBS, HAND_TRUE) == pytest.approx(0.8864200, abs=1e-7)
    assert brier_score(HAND_PROBS, HAND_TRUE) == pytest.approx(0.4916667, abs=1e-7)
    # torch tensors on input give the same numbers
    assert negative_log_likelihood(torch.tensor(HAND_PROBS), torch.tensor(HAND_TRUE)) == pytest.approx(0.8864200,
                                                                                                       abs=1e-7)


@pytest.mark.parametrize("seed, n, c", [(0, 50, 4), (1, 7, 10), (2, 200, 2)])
def test_nll_equals_scikit_learn_log_loss_and_brier_its_multiclass_brier(seed, n, c):
    rng = np.random.default_rng(seed)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(n, c)) * 3), dim=1).numpy()
    true = rng.integers(0, c, size=n)
    labels = list(range(c))
    assert negative_log_likelihood(probs, true) == pytest.approx(skm.log_loss(true, probs, labels=labels), rel=1e-9)
    # scikit-learn's multi-class Brier score (scale_by_half=False) is the same sum over classes, averaged
    assert brier_score(probs, true) == pytest.approx(
        skm.brier_score_loss(true, probs, labels=labels, scale_by_half=False), rel=1e-9)


def test_nll_is_cross_entropy_of_the_logits_and_brier_is_bounded():
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    true = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, dim=1)
    assert negative_log_likelihood(probs, true) == pytest.approx(torch.nn.functional.cross_entropy(logits, true).item(),
                                                                 rel=1e-9)
    certain_wrong = np.eye(5)[(true.numpy() + 1) % 5]
    assert brier_score(certain_wrong, true) == pytest.approx(2.0)         # the largest value
    assert brier_score(np.eye(5)[true.numpy()], true) == pytest.approx(0.0)
    # a certain wrong answer is clipped, not infinite: -ln(PROB_FLOOR) = 36.04 nats
    assert negative_log_likelihood(certain_wrong, true) == pytest.approx(-np.log(np.finfo(np.float64).eps))


@pytest.mark.parametrize("fn", [negative_log_likelihood, brier_score])
@pytest.mark.parametrize("probs, true, message", [
    (np.full((3, 2), 0.5), np.zeros(4, dtype=int), r"probs \(N, C\) and true \(N,\)"),
    (np.full(3, 0.5), np.zeros(3, dtype=int), r"probs \(N, C\) and true \(N,\)"),
    (np.array([[0.5, 0.6]]), np.array([0]), r"must sum to 1 \(within 0.001\); one is off by 0.1"),
    (np.array([[1.5, -0.5]]), np.array([0]), r"finite probabilities in \[0, 1\]"),
    (np.array([[0.5, 0.5]]), np.array([2]), r"true holds labels outside \[0, 2\).*: 2"),
    (np.array([[0.5, 0.5]]), np.array([0.0]), r"true must hold integer class indices"),
])
def test_nll_and_brier_reject_bad_input(fn, probs, true, message):
    with pytest.raises(ValueError, match=message):
        fn(probs, true)
