"""Facial expression recognition: a K-way linear classifier on frozen features (docs/method.md §4.1).

The authors train Linear(6272, 7) with Adam / cross-entropy on the trunk feature and report the best
test accuracy over 300 epochs (6.1 item 1). Here the same linear model and loss are trained on cached
features with validation-only selection (:func:`pclbench.evaluate.linear.fit_probe`; ``probe.protocol:
paper`` reproduces the best-test-epoch selection), and the report
adds the mean of per-class recalls (RAF-DB is imbalanced) and the confusion matrix.

Labels: manifest column ``expression``, 0-based in the order of the benchmark's ``labels`` (RAF-DB
order for the SynthFaces/RAF-DB benchmarks); the number of names is the number of classes. Rows whose
label is >= that number belong to classes outside the benchmark and are left out and counted
(``n_excluded``): the 7-class AffectNet benchmark drops contempt (label 7) that way, the 8-class one
keeps it. Result metrics are percentages: ``accuracy_pct``, ``mean_class_accuracy_pct``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pclbench.evaluate import metrics
from pclbench.core.config import from_dict, setting
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe, percent, require_columns

# The task's headline number (the probe-result contract's ``primary_metric``; the tables' primary column)
PRIMARY_METRIC = "accuracy_pct"
HIGHER_IS_BETTER = True


@dataclass
class ExpressionConfig:
    """Section ``tasks.expression`` (protocol only; data and class names live in the benchmark)."""

    selection_metric: Literal["accuracy", "mean_class_accuracy"] = setting(
        "Metric that selects the probe setting: accuracy, or the mean of per-class recalls.")
    train: TrainConfig = setting("Optimisation and selection grid of the linear probe.")


def _labels(manifest, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, keep mask): labels >= num_classes are classes outside the benchmark (excluded)."""
    require_columns(manifest, ["expression"], where)
    y = manifest["expression"].to_numpy()
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: column expression must hold integers, got dtype {y.dtype}")
    if (y < 0).any():
        raise ValueError(f"{where}: expression labels must be >= 0, found {np.unique(y[y < 0]).tolist()}")
    return y.astype(np.int64), y < num_classes


def run(bench, roots, config: dict, probe: ProbeConfig, seed: int, readout: str) -> dict:
    """Train and score the expression probe for one (readout, seed); returns the run dict."""
    cfg = from_dict(ExpressionConfig, config["tasks"]["expression"], "tasks.expression")
    cfg.train.check("tasks.expression.train")
    names = list(bench.labels)
    k = len(names)
    x_tr, m_tr = roots.load(bench.train, readout)
    x_te, m_te = roots.load(bench.test, readout)
    y_tr, keep_tr = _labels(m_tr, k, roots.manifest_path(bench.train))
    y_te, keep_te = _labels(m_te, k, roots.manifest_path(bench.test))
    x_tr, y_tr, m_tr = x_tr[keep_tr], y_tr[keep_tr], m_tr[keep_tr].reset_index(drop=True)
    x_te, y_te = x_te[keep_te], y_te[keep_te]
    if len(y_te) == 0 or len(y_tr) < 2:
        raise ValueError(f"{bench.test}: no test rows (or < 2 train rows) with a label in [0, {k})")

    select = metrics.accuracy if cfg.selection_metric == "accuracy" else (
        lambda t, p: metrics.mean_class_accuracy(t, p, k))

    def score(logits: np.ndarray, y: np.ndarray) -> float:
        return select(y, logits.argmax(axis=1))

    out = fit_probe(x_tr, y_tr, x_te, loss="ce", out_dim=k, probe=probe, train=cfg.train, score=score,
                    higher_is_better=True, seed=seed, y_test=y_te,
                    subjects=m_tr["subject"].to_numpy() if "subject" in m_tr.columns else None)
    pred = out.test_outputs.argmax(axis=1)
    per_class = metrics.per_class_accuracy(y_te, pred, k)
    return {
        "metrics": {"accuracy_pct": percent(metrics.accuracy(y_te, pred)),
                    "mean_class_accuracy_pct": percent(metrics.mean_class_accuracy(y_te, pred, k))},
        "per_class": {name: {"accuracy_pct": percent(float(a)), "support": int((y_te == i).sum())}
                      for i, (name, a) in enumerate(zip(names, per_class))},
        "confusion_matrix": {"rows": "true class", "columns": "predicted class", "class_names": names,
                             "counts": metrics.confusion_matrix(y_te, pred, k).tolist()},
        "selected": {**out.selected, "selection_metric": cfg.selection_metric},
        "selection_grid": out.grid,
        "n_train": out.n_train, "n_val": out.n_val, "n_test": int(len(y_te)), "n_fit": out.n_fit,
        "n_excluded": {"train": int((~keep_tr).sum()), "test": int((~keep_te).sum())},
    }


def trivial(y_train: np.ndarray, y_test: np.ndarray, num_classes: int) -> dict:
    """Floor of the expression benchmark from LABELS ONLY: the majority class of the training labels
    predicted for every test image, scored with the probe's own metrics (:mod:`pclbench.evaluate.metrics`).

    ``y_train`` / ``y_test``: (N,) int labels already restricted to [0, num_classes) (the rows the probe
    uses). A tie between training classes goes to the lowest label (``np.argmax``), so the result is
    deterministic. ``chance_pct`` = 100 / K, the expected accuracy of a uniform random guess, is
    recorded beside it. Returns ``{"predictor", "metrics", "majority_class"}``."""
    y_train, y_test = np.asarray(y_train, dtype=np.int64), np.asarray(y_test, dtype=np.int64)
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError("trivial expression floor: empty training or test labels")
    majority = int(np.bincount(y_train, minlength=num_classes).argmax())
    pred = np.full_like(y_test, majority)  # (N_test,)
    return {
        "predictor": "majority class of the training labels for every test image",
        "metrics": {"accuracy_pct": percent(metrics.accuracy(y_test, pred)),
                    "mean_class_accuracy_pct": percent(metrics.mean_class_accuracy(y_test, pred, num_classes)),
                    "chance_pct": percent(1.0 / num_classes)},
        "majority_class": majority,
    }


def floor(bench, roots, config: dict) -> dict:
    """:func:`trivial` on exactly the rows :func:`run` uses (the rows with cached features,
    :meth:`pclbench.evaluate.benchmark.Roots.rows`; the same exclusion of labels outside the benchmark);
    no feature is read."""
    k = len(bench.labels)
    m_tr, m_te = roots.rows(bench.train), roots.rows(bench.test)
    y_tr, keep_tr = _labels(m_tr, k, roots.manifest_path(bench.train))
    y_te, keep_te = _labels(m_te, k, roots.manifest_path(bench.test))
    return trivial(y_tr[keep_tr], y_te[keep_te], k)
