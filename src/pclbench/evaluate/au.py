"""Action-unit detection: multi-label linear probe with subject-exclusive cross-validation.

The authors' AU probe (docs/method.md §A.1; 4.4 for the usual protocol) is BatchNorm1d + Linear + sigmoid
trained with BCE on pre-binarised labels, thresholded at a hard-coded 0.0005 and scored by the best
test mean F1 over all epochs, one fold per run. Here:

* Occurrence = AU intensity (FACS 0-5, manifest columns ``AU<k>``) >= ``occurrence_threshold``
  (2 = the DISFA convention).
* Folds come from the manifest ``fold`` column and are checked to be subject-exclusive
  (:func:`pclbench.evaluate.splits.check_fold_exclusivity`). For each fold k the probe trains on the
  other folds, with its hyperparameters selected on a subject-disjoint validation split carved from
  them, and is tested on fold k.
* Readout: one linear layer with one sigmoid output per AU, per-label BCE (standardisation + Linear
  = BN + Linear at eval time, see :mod:`pclbench.evaluate.linear`).
* Decision threshold (``tasks.au.threshold``): ``fixed`` = the probability ``fixed_threshold`` (0.5,
  the usual rule; the authors hard-code 0.0005) for every AU, or ``validation`` = per AU the threshold
  maximising F1 on the validation split of that fold, predicted by the selected train-only model (with
  ``probe.refit: train_val`` the refit model reuses it). An AU without positives in the validation
  split keeps ``fixed_threshold``. Under ``probe.protocol: paper`` no validation split exists: the
  per-AU thresholds are chosen on the fold's training predictions instead, and the best-test-epoch
  selection scores with the fixed threshold (never fitting thresholds on test).
* Aggregation: every sample is tested exactly once, so the headline per-AU F1 is computed on the
  POOLED test predictions of all folds (stable when an AU is rare in one fold, where a per-fold F1
  is undefined or very noisy); ``mean_f1_pct`` is their plain mean. The per-fold per-AU F1 and the
  mean +- std over folds of the per-fold mean F1 (the other convention) are reported too.
* Selection score: mean F1 under the same decision rule, on validation (clean) or on the test fold
  (paper: the authors' best test epoch per fold, A.1).
* AUs: the benchmark's ``labels`` name the manifest columns (``[AU1, AU2, ...]``); null = every
  ``AU<k>`` column in ascending AU number. Metric keys: ``mean_f1_pct`` and ``f1_AU<k>_pct``.

F1 values are percentages; an undefined F1 (an AU with no positive and no prediction) is null and is
left out of means.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pclbench.evaluate import metrics
from pclbench.core.config import from_dict, setting
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe, percent
from pclbench.evaluate.splits import check_fold_exclusivity

log = logging.getLogger(__name__)

_AU_COLUMN = re.compile(r"^AU(\d+)$")

# The task's headline number (the probe-result contract's ``primary_metric``; the tables' primary column)
PRIMARY_METRIC = "mean_f1_pct"
HIGHER_IS_BETTER = True


@dataclass
class AUConfig:
    """Section ``tasks.au`` (protocol only; the dataset, split and AU list live in the benchmark)."""

    occurrence_threshold: float = setting("Occurrence = intensity >= this.", minimum=0, maximum=5)
    threshold: Literal["fixed", "validation"] = setting(
        "fixed = fixed_threshold for every AU; validation = per-AU F1-optimal threshold on validation.")
    fixed_threshold: float = setting("Probability above which an AU is predicted present (threshold fixed).",
                                     exclusiveMinimum=0, exclusiveMaximum=1)
    train: TrainConfig = setting("Optimisation and selection grid of the linear probe.")


def au_columns(columns, labels, where: str) -> list[str]:
    """The manifest's AU columns to use: ``labels`` in their order, or (null) every ``AU<k>`` column
    in ascending AU number."""
    present = {int(m.group(1)): c for c in columns if (m := _AU_COLUMN.match(str(c)))}
    if labels is None:
        if not present:
            raise KeyError(f"{where}: no AU<k> columns")
        return [present[k] for k in sorted(present)]
    missing = [c for c in labels if c not in set(map(str, columns))]
    if missing:
        raise KeyError(f"{where}: the benchmark's labels ask for column(s) {missing}; the manifest has "
                       f"{[present[k] for k in sorted(present)]}")
    return list(labels)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def decision_thresholds(probs: np.ndarray, y: np.ndarray, rule: str, fixed: float) -> np.ndarray:
    """(L,) per-AU probability thresholds: ``fixed`` for every AU (rule ``fixed``) or, for
    ``validation``, the F1-optimal threshold of each AU on (probs, y) (``fixed`` for an AU without
    positives)."""
    n_labels = y.shape[1]
    if rule == "fixed":
        return np.full(n_labels, float(fixed))
    return np.array([metrics.best_f1_threshold(probs[:, j], y[:, j], fallback=fixed)[0] for j in range(n_labels)])


def _mean_f1(f1: np.ndarray) -> float:
    return float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan")


def _occurrence(manifest, bench, cfg: AUConfig, where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(AU columns, (N,) checked subject-exclusive folds, (N, L) float32 0/1 occurrence) of a manifest."""
    cols = au_columns(manifest.columns, bench.labels, where)
    for c in ("subject", "fold"):
        if c not in manifest.columns:
            raise KeyError(f"{where}: missing column {c!r} (needed for subject-exclusive AU folds)")
    folds = check_fold_exclusivity(manifest["subject"].to_numpy(), manifest["fold"].to_numpy(), where)
    intensity = manifest[cols].to_numpy(dtype=np.float64)  # (N, L)
    if np.isnan(intensity).any():
        raise ValueError(f"{where}: AU columns contain missing values")
    y = (intensity >= cfg.occurrence_threshold).astype(np.float32)  # (N, L) occurrence
    return cols, folds, y


def run(bench, roots, config: dict, probe: ProbeConfig, seed: int, readout: str) -> dict:
    """Cross-validated AU probe over the subject-exclusive folds of ``bench.test``; returns the run dict."""
    cfg = from_dict(AUConfig, config["tasks"]["au"], "tasks.au")
    cfg.train.check("tasks.au.train")
    where = roots.manifest_path(bench.test)
    x, manifest = roots.load(bench.test, readout)
    cols, folds, y = _occurrence(manifest, bench, cfg, where)
    names = list(cols)

    # paper protocol: the selection score is computed on the TEST fold; choosing thresholds there too
    # would add a second test-set fit, so it scores with the fixed threshold
    sel_rule = "fixed" if probe.protocol == "paper" else cfg.threshold

    def score(logits: np.ndarray, yv: np.ndarray) -> float:
        p = _sigmoid(logits)
        th = decision_thresholds(p, yv, sel_rule, cfg.fixed_threshold)
        return metrics.mean_f1(yv, p > th)

    pooled_pred = np.zeros_like(y, dtype=bool)
    per_fold = []
    n_trains, n_vals = [], []
    for i, k in enumerate(np.unique(folds)):
        test = folds == k
        tr_idx = np.flatnonzero(~test)
        out = fit_probe(x[tr_idx], y[tr_idx], x[test], loss="bce", out_dim=len(cols), probe=probe,
                        train=cfg.train, score=score, higher_is_better=True, y_test=y[test],
                        seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                        subjects=manifest["subject"].to_numpy()[tr_idx])
        th = decision_thresholds(_sigmoid(out.val_outputs), y[tr_idx][out.val_index], cfg.threshold,
                                 cfg.fixed_threshold)
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
        log.debug("au fold %s: mean F1 %.2f%%", k, 100 * _mean_f1(f1))

    f1 = metrics.binary_f1(y, pooled_pred)
    fold_means = [pf["mean_f1_pct"] for pf in per_fold]
    fold_stats = [v for v in fold_means if v is not None]
    return {
        "metrics": {"mean_f1_pct": percent(_mean_f1(f1)),
                    **{f"f1_{n}_pct": percent(float(v)) for n, v in zip(names, f1)}},
        "per_au": {n: {"f1_pct": percent(float(v)), "base_rate_pct": percent(float(y[:, j].mean()))}
                   for j, (n, v) in enumerate(zip(names, f1))},
        "per_fold": per_fold,
        "fold_mean_f1": {"mean_pct": float(np.mean(fold_stats)) if fold_stats else None,
                         "std_pct": float(np.std(fold_stats, ddof=1)) if len(fold_stats) > 1 else None,
                         "n": len(fold_stats)},
        "aggregation": "pooled",
        "occurrence_threshold": cfg.occurrence_threshold,
        "threshold": cfg.threshold, "fixed_threshold": cfg.fixed_threshold,
        "selected": {"per_fold": [pf["selected"] for pf in per_fold]},
        # train/val sizes differ per fold: their per-fold mean (rounded); every sample is tested once
        "n_train": int(round(np.mean(n_trains))), "n_val": int(round(np.mean(n_vals))), "n_test": int(len(y)),
    }


def describe(probe: ProbeConfig, config: dict) -> str:
    cfg = config["tasks"]["au"]
    rule = (f"fixed decision threshold {cfg['fixed_threshold']}" if cfg["threshold"] == "fixed"
            else "per-AU decision thresholds chosen for F1 on " + ("the training folds" if probe.protocol == "paper"
                                                                   else "validation"))
    return (probe.describe() + "; subject-exclusive folds (train on the others, test on each), F1 on the pooled "
            f"test predictions; occurrence = intensity >= {cfg['occurrence_threshold']}; {rule}")


def trivial(y: np.ndarray, names: list[str]) -> dict:
    """Floor of the AU benchmark from LABELS ONLY: every AU predicted present (all-positive) on every
    test image, scored like :func:`run`: per-AU binary F1 on the pooled test predictions of all folds
    (each sample is tested exactly once, so pooling the folds' all-positive predictions = all-positive
    on the whole set) and ``mean_f1_pct`` = their plain mean. For an AU with base rate p the F1 of
    all-positive is 2p / (1 + p) (precision p, recall 1); an AU without any positive gets F1 0 (every
    prediction a false positive). ``y``: (N, L) 0/1 occurrence, columns ``names``."""
    y = np.asarray(y)
    f1 = metrics.binary_f1(y, np.ones_like(y, dtype=bool))  # (L,)
    return {
        "predictor": "every AU predicted present (all-positive) on every test image",
        "metrics": {"mean_f1_pct": percent(_mean_f1(f1)),
                    **{f"f1_{n}_pct": percent(float(v)) for n, v in zip(names, f1)}},
    }


def floor(bench, roots, config: dict) -> dict:
    """:func:`trivial` on exactly the rows and occurrence labels :func:`run` uses (same folds and
    ``occurrence_threshold``; the rows with cached features); no feature is read."""
    cfg = from_dict(AUConfig, config["tasks"]["au"], "tasks.au")
    where = roots.manifest_path(bench.test)
    manifest = roots.rows(bench.test)
    cols, _, y = _occurrence(manifest, bench, cfg, where)
    return trivial(y, list(cols))
