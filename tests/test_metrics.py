"""Metrics against hand computations and brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pclbench.evaluate import metrics


def test_accuracy_and_class_metrics_by_hand():
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 0, 2]
    assert metrics.accuracy(y, p) == pytest.approx(4 / 6)
    cm = metrics.confusion_matrix(y, p, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    pc = metrics.per_class_accuracy(y, p, 4)
    assert pc[:3] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert math.isnan(pc[3])  # class 3 absent from y_true: recall undefined
    assert metrics.mean_class_accuracy(y, p, 4) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_class_metrics_reject_bad_labels():
    with pytest.raises(ValueError, match="lie in"):
        metrics.confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="length"):
        metrics.accuracy([0, 1], [0])


def test_binary_f1_by_hand():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    p = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    # AU0: TP1 FP1 FN1 -> 2/4; AU1: TP1 FP1 FN1 -> 2/4; AU2: no positives at all -> undefined
    f1 = metrics.binary_f1(y, p)
    assert f1[:2] == pytest.approx([0.5, 0.5])
    assert math.isnan(f1[2])
    assert metrics.mean_f1(y, p) == pytest.approx(0.5)
    # a different count: TP2 FP0 FN1 -> 4/5
    assert metrics.binary_f1([1, 1, 1, 0], [1, 1, 0, 0])[0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="0/1"):
        metrics.binary_f1([[2]], [[1]])


def test_mae_per_column_by_hand():
    t = np.array([[10.0, 0.0, -5.0], [20.0, 4.0, 5.0]])
    p = np.array([[12.0, 1.0, -5.0], [17.0, 0.0, 6.0]])
    assert metrics.mae_per_column(t, p) == pytest.approx([2.5, 2.5, 0.5])


def _brute_best_accuracy(s, y):
    """Independent reference: try every midpoint (and the outside values) with an explicit loop."""
    u = sorted(set(s.tolist()))
    cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1.0]
    best_t, best_acc = None, -1.0
    for t in cands:
        acc = sum(int((si > t) == yi) for si, yi in zip(s, y)) / len(s)
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t, best_acc


def test_best_accuracy_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 40))
        s = np.round(rng.normal(size=n), 1)  # rounding makes ties between scores
        y = rng.integers(0, 2, n).astype(bool)
        t, acc = metrics.best_accuracy_threshold(s, y)
        bt, bacc = _brute_best_accuracy(s, y)
        assert acc == pytest.approx(bacc)
        assert t == pytest.approx(bt)


def test_verification_10fold_hand_example():
    # fold 0: (0.9 same, 0.1 diff), fold 1: (0.8 same, 0.3 diff), fold 2: (0.4 same, 0.6 diff)
    scores = [0.9, 0.1, 0.8, 0.3, 0.4, 0.6]
    same = [1, 0, 1, 0, 1, 0]
    folds = [0, 0, 1, 1, 2, 2]
    r = metrics.verification_10fold(scores, same, folds)
    # test fold 0, train {.3d,.4s,.6d,.8s}: t=.35 and t=.7 both give 3/4; the lower (.35) wins;
    #   on fold 0 both pairs are right -> 1.0
    # test fold 1, train {.1d,.4s,.6d,.9s}: t=.25 (3/4) and .75 (3/4) -> .25; 0.3 > .25 wrongly "same" -> 0.5
    # test fold 2, train {.1d,.3d,.8s,.9s}: separable at t=.55; 0.4 and 0.6 both wrong -> 0.0
    assert r["thresholds"] == pytest.approx([0.35, 0.25, 0.55])
    assert r["fold_accuracy"] == pytest.approx([1.0, 0.5, 0.0])
    assert r["mean"] == pytest.approx(0.5)
    assert r["std"] == pytest.approx(math.sqrt(1 / 6))
    assert r["sem"] == pytest.approx(0.5 / math.sqrt(3))
    assert r["folds"] == [0, 1, 2]


def test_verification_separable_scores_give_100_percent():
    rng = np.random.default_rng(1)
    n = 200
    same = rng.integers(0, 2, n)
    scores = np.where(same == 1, rng.uniform(0.5, 1.0, n), rng.uniform(-1.0, 0.4, n))
    folds = np.arange(n) % 10
    r = metrics.verification_10fold(scores, same, folds)
    assert r["mean"] == 1.0 and r["std"] == 0.0
    assert all(0.4 <= t <= 0.5 for t in r["thresholds"])


def test_verification_needs_two_folds_and_finite_scores():
    with pytest.raises(ValueError, match="2 folds"):
        metrics.verification_10fold([0.1, 0.2], [0, 1], [0, 0])
    with pytest.raises(ValueError, match="nan"):
        metrics.verification_10fold([0.1, np.nan], [0, 1], [0, 1])


def test_best_f1_threshold_matches_brute_force():
    rng = np.random.default_rng(2)
    for trial in range(20):
        n = int(rng.integers(2, 40))
        s = np.round(rng.uniform(size=n), 1)
        y = rng.integers(0, 2, n).astype(bool)
        if not y.any():
            y[0] = True
        t, f1 = metrics.best_f1_threshold(s, y, fallback=0.5)
        u = sorted(set(s.tolist()))
        cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1.0]
        best = max(cands, key=lambda c: (metrics.binary_f1(y, s > c)[0], -c))
        assert f1 == pytest.approx(metrics.binary_f1(y, s > best)[0])
        assert t == pytest.approx(best)
    t, f1 = metrics.best_f1_threshold([0.2, 0.9], [0, 0], fallback=0.5)
    assert t == 0.5 and math.isnan(f1)
