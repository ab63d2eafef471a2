"""Face verification: cosine similarity of frozen features, standard 10-fold protocol.

The authors' code (method doc 4.3, A.2) predicts "same" when cos >= a fixed config ``theta`` that is
recorded nowhere and scores all 6000 LFW pairs as one list. Here the standard LFW protocol is used:
for each of the 10 folds of ``pairs.csv`` the threshold maximising accuracy on the other nine folds
is applied to the held-out fold (:func:`pclbench.metrics.verification_10fold`); the report is the
mean +- std of the 10 fold accuracies.

It is training-free: the only fitted quantity, the threshold, is chosen on the nine other folds, so
no validation split is carved and ``n_train``/``n_val`` are 0. The cosine is taken on the raw
features of ``probe.readout`` (no standardisation or mean subtraction, as A.2).

Pairs: ``<raw_dir>/<pairs_file>`` with columns ``fold, path_a, path_b, same``; paths are mapped to
feature rows through the aligned manifest's ``path`` column. A pair whose image failed alignment
(absent from the aligned manifest or from the feature cache) is dropped and counted
(``n_pairs_dropped``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics
from ..config import ConfigError, from_dict
from .linear import ProbeConfig, load_split, percent, require_columns, result_header

log = logging.getLogger(__name__)


@dataclass
class VerificationConfig:
    """Section ``tasks.verification``."""

    dataset: str
    split: str
    pairs_file: str
    n_folds: int


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (P, D) arrays; a zero vector has similarity 0 with everything."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na = np.linalg.norm(a64, axis=1)
    nb = np.linalg.norm(b64, axis=1)
    dot = np.einsum("pd,pd->p", a64, b64)  # (P,)
    return dot / np.maximum(na * nb, 1e-12)


def read_pairs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"verification pairs not found: {path}")
    pairs = pd.read_csv(path)
    require_columns(pairs, ["fold", "path_a", "path_b", "same"], str(path))
    bad = ~pairs["same"].isin([0, 1, True, False])
    if bad.any():
        raise ValueError(f"{path}: column same must be 0/1, found {pairs.loc[bad, 'same'].unique()[:5].tolist()}")
    return pairs


def run(features_dir: Path, aligned_dir: Path, raw_dir: Path, config: dict, seed: int, method: str) -> dict:
    """Score all pairs with the 10-fold protocol; returns the stage-5 result dict."""
    t0 = time.perf_counter()
    probe = from_dict(ProbeConfig, config["probe"], "probe").check()
    cfg = from_dict(VerificationConfig, config["tasks"]["verification"], "tasks.verification")
    if cfg.n_folds < 2:
        raise ConfigError(f"tasks.verification.n_folds must be >= 2, got {cfg.n_folds}")

    x, manifest = load_split(features_dir, aligned_dir, cfg.split, probe.readout)
    require_columns(manifest, ["path"], f"{aligned_dir}/{cfg.split}/manifest.csv")
    pairs_path = Path(raw_dir) / cfg.pairs_file
    pairs = read_pairs(pairs_path)
    index = {p: i for i, p in enumerate(manifest["path"].astype(str))}
    ia = pairs["path_a"].astype(str).map(index)
    ib = pairs["path_b"].astype(str).map(index)
    keep = (ia.notna() & ib.notna()).to_numpy()
    n_dropped = int((~keep).sum())
    if n_dropped:
        log.warning("verification: %d of %d pairs dropped (image not aligned / no feature)", n_dropped, len(pairs))
    kept = pairs[keep]
    folds_all = np.unique(pairs["fold"].to_numpy())
    if len(folds_all) != cfg.n_folds:
        raise ValueError(f"{pairs_path}: {len(folds_all)} folds {folds_all.tolist()}, expected "
                         f"tasks.verification.n_folds = {cfg.n_folds}")
    empty = sorted(set(folds_all.tolist()) - set(kept["fold"].tolist()))
    if empty:
        raise ValueError(f"{pairs_path}: fold(s) {empty} have no pair left after dropping pairs with "
                         "unaligned images")
    a = x[ia[keep].astype(np.int64).to_numpy()]  # (P, D)
    b = x[ib[keep].astype(np.int64).to_numpy()]
    scores = cosine_similarity(a, b)
    same = kept["same"].astype(int).to_numpy()
    cv = metrics.verification_10fold(scores, same, kept["fold"].to_numpy())

    res = result_header("verification", method, cfg.dataset, probe, seed, config,
                        protocol=f"training-free: cosine similarity, {cfg.n_folds}-fold threshold "
                                 "selection (threshold of each fold chosen on the other folds)")
    res.update({
        "metrics": {"accuracy_mean_pct": percent(cv["mean"]), "accuracy_std_pct": percent(cv["std"]),
                    "accuracy_sem_pct": percent(cv["sem"])},
        "per_fold": [{"fold": f, "accuracy_pct": percent(acc), "threshold": t,
                      "n_pairs": int((kept["fold"] == f).sum())}
                     for f, acc, t in zip(cv["folds"], cv["fold_accuracy"], cv["thresholds"])],
        "selected": {"thresholds": cv["thresholds"], "similarity": "cosine"},
        "n_pairs_total": int(len(pairs)), "n_pairs_dropped": n_dropped, "n_pairs_used": int(keep.sum()),
        "n_same": int(same.sum()), "n_different": int(len(same) - same.sum()),
        "n_train": 0, "n_val": 0, "n_test": int(keep.sum()),
        "elapsed_s": time.perf_counter() - t0,
    })
    return res
