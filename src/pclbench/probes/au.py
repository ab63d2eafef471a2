"""Action-unit detection: multi-label linear probe with subject-exclusive cross-validation.

The authors' AU probe (method doc A.1; 4.4 for the usual protocol) is BatchNorm1d + Linear + sigmoid
trained with BCE on pre-binarised labels, thresholded at a hard-coded 0.0005 and scored by the best
test mean F1 over all epochs, one fold per run. Here:

* Occurrence = AU intensity (FACS 0-5, manifest columns ``AU<k>``) >= ``occurrence_threshold``
  (2 = the DISFA convention).
* Folds come from the manifest ``fold`` column and are checked to be subject-exclusive
  (:func:`pclbench.probes.splits.check_fold_exclusivity`). For each fold k the probe trains on the
  other folds, with its hyperparameters selected on a subject-disjoint validation split carved from
  them, and is tested on fold k.
* Readout: one linear layer with one sigmoid output per AU, per-label BCE (standardisation + Linear
  = BN + Linear at eval time, see :mod:`pclbench.probes.linear`).
* Decision threshold: ``decision_threshold`` = a probability (0.5) or ``validation``: per AU, the
  threshold maximising F1 on the validation split of that fold (chosen with the selected train-only
  model; with ``probe.refit: train_val`` the refit model reuses it). An AU without positives in the
  validation split keeps 0.5.
* Aggregation: every sample is tested exactly once, so the headline per-AU F1 is computed on the
  POOLED test predictions of all folds (stable when an AU is rare in one fold, where a per-fold F1
  is undefined or very noisy); ``mean_f1_pct`` is their plain mean. The per-fold per-AU F1 and the
  mean +- std over folds of the per-fold mean F1 (the other convention) are reported too.
* Selection score on validation: mean F1 under the same decision rule.

F1 values are percentages; an undefined F1 (an AU with no positive and no prediction) is null and is
left out of means.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np

from .. import metrics
from ..config import ConfigError, from_dict
from .linear import ProbeConfig, TrainConfig, fit_probe, load_split, percent, result_header
from .splits import check_fold_exclusivity

log = logging.getLogger(__name__)

_AU_COLUMN = re.compile(r"^AU(\d+)$")


@dataclass
class AUConfig:
    """Section ``tasks.au``."""

    dataset: str
    split: str
    aus: Union[Literal["all"], list[int]]
    occurrence_threshold: float
    decision_threshold: Union[float, Literal["validation"]]
    train: TrainConfig


def au_columns(columns, aus, where: str) -> list[str]:
    """The manifest's AU columns to use, in ascending AU number (``aus: all``) or in config order."""
    present = {int(m.group(1)): c for c in columns if (m := _AU_COLUMN.match(str(c)))}
    if aus == "all":
        if not present:
            raise KeyError(f"{where}: no AU<k> columns")
        return [present[k] for k in sorted(present)]
    missing = [k for k in aus if k not in present]
    if missing:
        raise KeyError(f"{where}: tasks.au.aus asks for AU(s) {missing}, manifest has {sorted(present)}")
    if len(set(aus)) != len(aus):
        raise ConfigError(f"tasks.au.aus has duplicates: {aus}")
    return [present[k] for k in aus]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def decision_thresholds(probs: np.ndarray, y: np.ndarray, rule: float | str) -> np.ndarray:
    """(L,) per-AU probability thresholds: the fixed ``rule`` or, for ``validation``, the F1-optimal
    threshold of each AU on (probs, y) (0.5 for an AU without positives)."""
    n_labels = y.shape[1]
    if rule != "validation":
        return np.full(n_labels, float(rule))
    return np.array([metrics.best_f1_threshold(probs[:, j], y[:, j], fallback=0.5)[0] for j in range(n_labels)])


def _mean_f1(f1: np.ndarray) -> float:
    return float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan")


def run(features_dir: Path, aligned_dir: Path, raw_dir: Path, config: dict, seed: int, method: str) -> dict:
    """Cross-validated AU probe; returns the stage-5 result dict."""
    t0 = time.perf_counter()
    probe = from_dict(ProbeConfig, config["probe"], "probe").check()
    cfg = from_dict(AUConfig, config["tasks"]["au"], "tasks.au")
    cfg.train.check("tasks.au.train")
    if cfg.decision_threshold != "validation" and not 0.0 < cfg.decision_threshold < 1.0:
        raise ConfigError(f"tasks.au.decision_threshold must be in (0, 1) or 'validation', "
                          f"got {cfg.decision_threshold}")
    where = f"{aligned_dir}/{cfg.split}/manifest.csv"
    x, manifest = load_split(features_dir, aligned_dir, cfg.split, probe.readout)
    cols = au_columns(manifest.columns, cfg.aus, where)
    for c in ("subject", "fold"):
        if c not in manifest.columns:
            raise KeyError(f"{where}: missing column {c!r} (needed for subject-exclusive AU folds)")
    folds = check_fold_exclusivity(manifest["subject"].to_numpy(), manifest["fold"].to_numpy(), where)
    intensity = manifest[cols].to_numpy(dtype=np.float64)  # (N, L)
    if np.isnan(intensity).any():
        raise ValueError(f"{where}: AU columns contain missing values")
    y = (intensity >= cfg.occurrence_threshold).astype(np.float32)  # (N, L) occurrence
    names = list(cols)
    rule = cfg.decision_threshold

    def score(logits: np.ndarray, yv: np.ndarray) -> float:
        p = _sigmoid(logits)
        th = decision_thresholds(p, yv, rule)
        return metrics.mean_f1(yv, p > th)

    pooled_pred = np.zeros_like(y, dtype=bool)
    per_fold = []
    n_trains, n_vals = [], []
    for i, k in enumerate(np.unique(folds)):
        test = folds == k
        tr_idx = np.flatnonzero(~test)
        out = fit_probe(x[tr_idx], y[tr_idx], x[test], loss="bce", out_dim=len(cols), probe=probe,
                        train=cfg.train, score=score, higher_is_better=True,
                        seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                        subjects=manifest["subject"].to_numpy()[tr_idx])
        th = decision_thresholds(_sigmoid(out.val_outputs), y[tr_idx][out.val_index], rule)
        pred = _sigmoid(out.test_outputs) > th  # (N_k, L)
        pooled_pred[test] = pred
        f1 = metrics.binary_f1(y[test], pred)
        per_fold.append({
            "fold": int(k), "mean_f1_pct": percent(_mean_f1(f1)),
            "per_au_f1_pct": {n: percent(float(v)) for n, v in zip(names, f1)},
            "thresholds": {n: float(t) for n, t in zip(names, th)},
            "selected": out.selected, "n_train": out.n_train, "n_val": out.n_val,
            "n_test": int(test.sum()), "n_fit": out.n_fit,
        })
        n_trains.append(out.n_train)
        n_vals.append(out.n_val)
        log.info("au fold %s: mean F1 %.2f%%", k, 100 * _mean_f1(f1))

    f1 = metrics.binary_f1(y, pooled_pred)
    fold_means = np.array([np.nan if pf["mean_f1_pct"] is None else pf["mean_f1_pct"] for pf in per_fold])
    res = result_header("au", method, cfg.dataset, probe, seed, config,
                        protocol=probe.protocol() + f"; {len(per_fold)} subject-exclusive folds, F1 on pooled "
                                                    "test predictions")
    res.update({
        "metrics": {"mean_f1_pct": percent(_mean_f1(f1)),
                    "fold_mean_f1_mean_pct": float(np.nanmean(fold_means)) if np.isfinite(fold_means).any() else None,
                    "fold_mean_f1_std_pct": float(np.nanstd(fold_means)) if np.isfinite(fold_means).any() else None},
        "per_au": {n: {"f1_pct": percent(float(v)), "base_rate_pct": percent(float(y[:, j].mean()))}
                   for j, (n, v) in enumerate(zip(names, f1))},
        "per_fold": per_fold,
        "aggregation": "pooled",
        "occurrence_threshold": cfg.occurrence_threshold,
        "decision_threshold": rule,
        "selected": {"per_fold": [pf["selected"] for pf in per_fold]},
        # train/val sizes differ per fold: their per-fold mean (rounded); every sample is tested once
        "n_train": int(round(np.mean(n_trains))), "n_val": int(round(np.mean(n_vals))), "n_test": int(len(y)),
        "elapsed_s": time.perf_counter() - t0,
    })
    return res
