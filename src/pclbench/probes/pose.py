"""Head-pose estimation: linear regression of (yaw, pitch, roll) with L1 loss (method doc 4.2).

The authors' regressor is BatchNorm1d + Linear(D, 3) with L1 loss in degrees, selected on the best
test epoch, and their logs label the columns pitch / yaw / roll although FSA-Net's npz order is
[yaw, pitch, roll] (6.1 item 5). Here:

* Angle order is fixed and named: :data:`ANGLES` = (yaw, pitch, roll), read from the manifest columns
  of the same names (degrees), so no column can be swapped silently; outputs and per-angle metrics use
  that order.
* Regressor: standardised features + Linear(D, 3), L1 loss -- at evaluation time the same affine map as
  BN + Linear (see :mod:`pclbench.probes.linear`). With ``standardize_targets`` the three targets are
  standardised with the fit set's statistics while training (conditioning only; predictions and
  metrics are in degrees).
* Metrics: MAE per angle and their mean, in degrees (``mae_<angle>_deg``, ``mae_mean_deg``), plus the
  MAE of always predicting the training median (a feature-free baseline) for context.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..config import from_dict
from .linear import ProbeConfig, TrainConfig, fit_probe, load_split, require_columns, result_header

ANGLES = ("yaw", "pitch", "roll")


@dataclass
class PoseConfig:
    """Section ``tasks.pose``."""

    dataset: str
    train_split: str
    test_split: str
    standardize_targets: bool
    train: TrainConfig


def _angles(manifest, where: str) -> np.ndarray:
    require_columns(manifest, ANGLES, where)
    y = manifest[list(ANGLES)].to_numpy(dtype=np.float64)  # (N, 3) degrees
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{where}: yaw/pitch/roll contain missing or non-finite values")
    return y


def run(features_dir: Path, aligned_dir: Path, raw_dir: Path, config: dict, seed: int, method: str) -> dict:
    """Train and score the pose regressor; returns the stage-5 result dict."""
    t0 = time.perf_counter()
    probe = from_dict(ProbeConfig, config["probe"], "probe").check()
    cfg = from_dict(PoseConfig, config["tasks"]["pose"], "tasks.pose")
    cfg.train.check("tasks.pose.train")
    x_tr, m_tr = load_split(features_dir, aligned_dir, cfg.train_split, probe.readout)
    x_te, m_te = load_split(features_dir, aligned_dir, cfg.test_split, probe.readout)
    y_tr = _angles(m_tr, f"{aligned_dir}/{cfg.train_split}/manifest.csv")
    y_te = _angles(m_te, f"{aligned_dir}/{cfg.test_split}/manifest.csv")

    def score(pred: np.ndarray, y: np.ndarray) -> float:
        return float(metrics.mae_per_column(y, pred).mean())

    out = fit_probe(x_tr, y_tr.astype(np.float32), x_te, loss="l1", out_dim=len(ANGLES), probe=probe,
                    train=cfg.train, score=score, higher_is_better=False, seed=seed,
                    subjects=m_tr["subject"].to_numpy() if "subject" in m_tr.columns else None,
                    standardize_targets=cfg.standardize_targets)
    mae = metrics.mae_per_column(y_te, out.test_outputs.astype(np.float64))  # (3,)
    base = metrics.mae_per_column(y_te, np.broadcast_to(np.median(y_tr, axis=0), y_te.shape))
    res = result_header("pose", method, cfg.dataset, probe, seed, config)
    res.update({
        "metrics": {**{f"mae_{a}_deg": float(v) for a, v in zip(ANGLES, mae)}, "mae_mean_deg": float(mae.mean())},
        "per_angle": {a: {"mae_deg": float(v), "baseline_median_mae_deg": float(b)}
                      for a, v, b in zip(ANGLES, mae, base)},
        "angle_order": list(ANGLES),
        "selected": {**out.selected, "selection_metric": "mae_mean_deg"},
        "selection_grid": out.grid,
        "n_train": out.n_train, "n_val": out.n_val, "n_test": int(len(y_te)), "n_fit": out.n_fit,
        "elapsed_s": time.perf_counter() - t0,
    })
    return res
