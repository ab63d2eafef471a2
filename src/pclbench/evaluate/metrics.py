"""Evaluation metrics of the four facial tasks (pure numpy).

docs/method.md §4 lists what the paper reports per task; section 6.1 and Appendix A.1-A.2 the
flaws of the authors' scoring that the clean protocol fixes:

* FER (section 4.1): accuracy and, as usual for the imbalanced RAF-DB, the mean of per-class recalls.
* AU detection (section 4.4, A.1): binary F1 per AU and its plain mean.
* Head pose (section 4.2): mean absolute error per angle in degrees and their mean.
* Verification (section 4.3, A.2): the standard LFW 10-fold protocol, which the authors' code lacks
  (it uses one fixed ``theta``): the threshold of fold k is chosen on the other nine folds.

Every function returns fractions in [0, 1] (callers turn them into percentages for tables) and
``nan`` where a value is undefined (for example the recall of a class absent from the test set);
means skip undefined entries.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _as_1d(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    return a


def _same_length(*pairs: tuple[str, np.ndarray]) -> None:
    lengths = {name: len(a) for name, a in pairs}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")


def _as_binary(a: Any, name: str) -> np.ndarray:
    """0/1 or bool array -> bool array; any other value is an error (labels must be clean)."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    bad = ~np.isin(a, (0, 1))
    if bad.any():
        raise ValueError(f"{name}: expected 0/1 or bool values, found {np.unique(a[bad])[:5].tolist()}")
    return a.astype(bool)


# --------------------------------------------------------------------------------------------------
# classification (FER)

def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    y_true, y_pred = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    _same_length(("y_true", y_true), ("y_pred", y_pred))
    if len(y_true) == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    y_true, y_pred = _as_1d(y_true, "y_true").astype(np.int64), _as_1d(y_pred, "y_pred").astype(np.int64)
    _same_length(("y_true", y_true), ("y_pred", y_pred))
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got range "
                             f"[{y.min()}, {y.max()}]")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(K,) recall of each class (correct / true members); ``nan`` for classes absent from y_true."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Mean of the per-class recalls over the classes present in ``y_true`` (balanced accuracy)."""
    pc = per_class_accuracy(y_true, y_pred, num_classes)
    if np.all(np.isnan(pc)):
        raise ValueError("mean class accuracy of an empty set")
    return float(np.nanmean(pc))


# --------------------------------------------------------------------------------------------------
# multi-label (AU detection)

def binary_f1(y_true: Any, y_pred: Any) -> np.ndarray:
    """Binary F1 = 2TP / (2TP + FP + FN) per label column.

    ``y_true``, ``y_pred``: (N, L) 0/1 or bool (a 1-D input is one label). Returns (L,) floats; a
    label with no true and no predicted positive has an undefined F1 and gets ``nan`` (sklearn would
    silently write 0 there, which penalises a correct all-negative prediction).
    """
    t, p = _as_binary(y_true, "y_true"), _as_binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {t.shape} vs y_pred {p.shape}")
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    tp = np.sum(t & p, axis=0)
    fp = np.sum(~t & p, axis=0)
    fn = np.sum(t & ~p, axis=0)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def mean_f1(y_true: Any, y_pred: Any) -> float:
    """Plain mean of the per-label binary F1 over labels where it is defined."""
    f1 = binary_f1(y_true, y_pred)
    return float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan")


def best_f1_threshold(scores: Any, y_true: Any, fallback: float) -> tuple[float, float]:
    """Threshold maximising binary F1 of ``scores > t`` (used to pick an AU decision threshold on
    validation). Candidates are the midpoints of the sorted distinct scores plus one value below the
    minimum and one above the maximum; ties go to the lowest threshold. When ``y_true`` has no
    positive, F1 is undefined for every threshold and ``(fallback, nan)`` is returned."""
    s, y = _as_1d(scores, "scores").astype(np.float64), _as_binary(y_true, "y_true")
    _same_length(("scores", s), ("y_true", y))
    if not y.any():
        return float(fallback), float("nan")
    cand, pos_at_or_above, neg_at_or_above = _sweep(s, y)
    tp = pos_at_or_above
    fp = neg_at_or_above
    fn = y.sum() - tp
    f1 = 2 * tp / (2 * tp + fp + fn)  # denominator > 0 because y has a positive
    j = int(np.argmax(f1))
    return float(cand[j]), float(f1[j])


# --------------------------------------------------------------------------------------------------
# regression (head pose)

def mae_per_column(y_true: Any, y_pred: Any) -> np.ndarray:
    """(C,) mean absolute error of each column of (N, C) arrays (degrees for pose)."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"expected two (N, C) arrays of equal shape, got {t.shape} and {p.shape}")
    if len(t) == 0:
        raise ValueError("MAE of an empty set")
    return np.mean(np.abs(t - p), axis=0)


# --------------------------------------------------------------------------------------------------
# verification (LFW-style)

def _sweep(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All distinct decisions ``scores > t`` at once.

    With u_0 < ... < u_{m-1} the distinct scores, candidate j (j = 0..m) is u_0 - 1, the midpoint
    (u_{j-1} + u_j) / 2, or u_{m-1} + 1; it labels positive exactly the scores >= u_j. Returns the
    (m+1,) candidates and, for each, the number of positives and negatives predicted positive.
    """
    u, inv = np.unique(scores, return_inverse=True)
    pos_cnt = np.bincount(inv, weights=positive.astype(np.float64), minlength=len(u))
    neg_cnt = np.bincount(inv, weights=(~positive).astype(np.float64), minlength=len(u))
    # suffix sums: predicted positive for candidate j = values with index >= j
    pos_ge = np.concatenate([np.cumsum(pos_cnt[::-1])[::-1], [0.0]])  # (m+1,)
    neg_ge = np.concatenate([np.cumsum(neg_cnt[::-1])[::-1], [0.0]])
    cand = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    return cand, pos_ge, neg_ge


def best_accuracy_threshold(scores: Any, same: Any) -> tuple[float, float]:
    """Threshold t maximising the accuracy of "same iff score > t" on (scores, same).

    Candidates as in :func:`best_f1_threshold` (midpoints of the sorted distinct scores and the two
    outside values); ties go to the lowest threshold. Returns (threshold, accuracy)."""
    s, y = _as_1d(scores, "scores").astype(np.float64), _as_binary(same, "same")
    _same_length(("scores", s), ("same", y))
    if len(s) == 0:
        raise ValueError("threshold selection on an empty set")
    cand, pos_ge, neg_ge = _sweep(s, y)
    # correct = same pairs above t + different pairs at or below t
    correct = pos_ge + ((~y).sum() - neg_ge)
    j = int(np.argmax(correct))
    return float(cand[j]), float(correct[j] / len(s))


def verification_10fold(scores: Any, same: Any, folds: Any) -> dict[str, Any]:
    """The standard LFW protocol (docs/method.md §4.3 / A.2 fix): for each fold k, choose the threshold
    maximising accuracy on the other folds (:func:`best_accuracy_threshold`) and measure accuracy on
    fold k. Works for any number (>= 2) of folds; LFW and SynthFaces use 10.

    Returns ``{"folds": [...], "fold_accuracy": [...], "thresholds": [...], "mean": m, "std": s,
    "sem": e}`` with accuracies as fractions. ``std`` is the population standard deviation over folds
    (ddof=0, what common LFW evaluation code prints as "mean +- std"); ``sem`` = sample standard
    deviation (ddof=1) / sqrt(k), the standard error the LFW README asks for.
    """
    s = _as_1d(scores, "scores").astype(np.float64)
    y = _as_binary(same, "same")
    f = _as_1d(folds, "folds")
    _same_length(("scores", s), ("same", y), ("folds", f))
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain nan or inf")
    fold_ids = np.unique(f)
    if len(fold_ids) < 2:
        raise ValueError(f"need at least 2 folds, got {fold_ids.tolist()}")
    accs, thresholds = [], []
    for k in fold_ids:
        test = f == k
        t, _ = best_accuracy_threshold(s[~test], y[~test])
        thresholds.append(t)
        accs.append(float(np.mean((s[test] > t) == y[test])))
    a = np.asarray(accs)
    return {
        "folds": [x.item() if hasattr(x, "item") else x for x in fold_ids],
        "fold_accuracy": accs,
        "thresholds": thresholds,
        "mean": float(a.mean()),
        "std": float(a.std(ddof=0)),
        "sem": float(a.std(ddof=1) / np.sqrt(len(a))),
    }
