"""Facial expression recognition: a 7-way linear classifier on frozen features (method doc 4.1).

The authors train Linear(D, 7) with Adam / cross-entropy on the trunk feature and report the best
test accuracy over 300 epochs (6.1 item 1). Here the same linear model and loss are trained on cached
features with validation-only selection (:func:`pclbench.probes.linear.fit_probe`), and the report
adds the mean of per-class recalls (RAF-DB is imbalanced) and the confusion matrix.

Labels: manifest column ``expression``, 0-based in RAF-DB order (``tasks.expression.class_names``).
Result metrics are percentages: ``accuracy_pct``, ``mean_class_accuracy_pct``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .. import metrics
from ..config import from_dict
from .linear import (ProbeConfig, TrainConfig, fit_probe, load_split, percent, require_columns,
                     result_header)


@dataclass
class ExpressionConfig:
    """Section ``tasks.expression``."""

    dataset: str
    train_split: str
    test_split: str
    class_names: list[str]
    selection_metric: Literal["accuracy", "mean_class_accuracy"]
    train: TrainConfig


def _labels(manifest, num_classes: int, where: str) -> np.ndarray:
    require_columns(manifest, ["expression"], where)
    y = manifest["expression"].to_numpy()
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: column expression must hold integers, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{where}: expression labels must lie in [0, {num_classes}) "
                         f"(tasks.expression.class_names), found {np.unique(y[bad]).tolist()}")
    return y.astype(np.int64)


def run(features_dir: Path, aligned_dir: Path, raw_dir: Path, config: dict, seed: int, method: str) -> dict:
    """Train and score the expression probe; returns the stage-5 result dict."""
    t0 = time.perf_counter()
    probe = from_dict(ProbeConfig, config["probe"], "probe").check()
    cfg = from_dict(ExpressionConfig, config["tasks"]["expression"], "tasks.expression")
    cfg.train.check("tasks.expression.train")
    k = len(cfg.class_names)
    if k < 2:
        raise ValueError("tasks.expression.class_names needs at least 2 classes")

    x_tr, m_tr = load_split(features_dir, aligned_dir, cfg.train_split, probe.readout)
    x_te, m_te = load_split(features_dir, aligned_dir, cfg.test_split, probe.readout)
    y_tr = _labels(m_tr, k, f"{aligned_dir}/{cfg.train_split}/manifest.csv")
    y_te = _labels(m_te, k, f"{aligned_dir}/{cfg.test_split}/manifest.csv")

    select = metrics.accuracy if cfg.selection_metric == "accuracy" else (
        lambda t, p: metrics.mean_class_accuracy(t, p, k))

    def score(logits: np.ndarray, y: np.ndarray) -> float:
        return select(y, logits.argmax(axis=1))

    out = fit_probe(x_tr, y_tr, x_te, loss="ce", out_dim=k, probe=probe, train=cfg.train, score=score,
                    higher_is_better=True, seed=seed,
                    subjects=m_tr["subject"].to_numpy() if "subject" in m_tr.columns else None)
    pred = out.test_outputs.argmax(axis=1)
    per_class = metrics.per_class_accuracy(y_te, pred, k)
    res = result_header("expression", method, cfg.dataset, probe, seed, config)
    res.update({
        "metrics": {"accuracy_pct": percent(metrics.accuracy(y_te, pred)),
                    "mean_class_accuracy_pct": percent(metrics.mean_class_accuracy(y_te, pred, k))},
        "per_class": {name: {"accuracy_pct": percent(float(a)), "support": int((y_te == i).sum())}
                      for i, (name, a) in enumerate(zip(cfg.class_names, per_class))},
        "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                             "class_names": list(cfg.class_names),
                             "counts": metrics.confusion_matrix(y_te, pred, k).tolist()},
        "selected": {**out.selected, "selection_metric": cfg.selection_metric},
        "selection_grid": out.grid,
        "n_train": out.n_train, "n_val": out.n_val, "n_test": int(len(y_te)), "n_fit": out.n_fit,
        "elapsed_s": time.perf_counter() - t0,
    })
    return res
