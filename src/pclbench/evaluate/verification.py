"""Face verification: the standard 10-fold protocol on frozen features (docs/method.md §4.3, A.2).

The authors' code predicts "same" when cos >= a fixed config ``theta`` that is recorded nowhere and
scores all 6000 LFW pairs as one list (A.2 a), or trains a Siamese BatchNorm1d + Linear with a
cosine-embedding loss and reports the best TEST epoch (A.2 b). Here, ``tasks.verification.mode``:

* ``cosine`` (default, training-free): the cosine similarity of the two raw features of the readout
  (no standardisation or mean subtraction, as A.2 a). For each of the folds of ``pairs.csv`` the
  threshold maximising accuracy on the other folds is applied to the held-out fold
  (:func:`pclbench.evaluate.metrics.verification_10fold`). Seeds do not matter: one run per readout, and the
  reported spread is the sample std over the folds (``std_over: folds``). ``n_train``/``n_val`` = 0.
* ``linear`` (the A.2 b variant inside the 10-fold protocol): for each test fold k, a shared map
  ``x -> W standardise(x) + c`` (standardisation with the fit images' statistics = BN at eval time;
  W (D, D) initialised at the identity, so training starts from the cosine protocol on standardised
  features) is applied to both images and trained on the PAIRS of the other folds with the cosine
  embedding loss: ``1 - cos`` for same pairs, ``max(0, cos - margin)`` for different ones (the
  authors' margin is their theta; here ``tasks.verification.margin``). Prediction is again "cos of
  the projected features > threshold", the threshold chosen on the training folds' pairs.
  Clean protocol: (lr, weight decay, epoch) are selected on one training fold held out as validation
  (the fold after k, cyclically; LFW folds are identity-disjoint, so validation identities are
  unseen), the threshold for a validation score being chosen on the remaining folds; then the model is
  refit on all training folds (``probe.refit: train_val``) or kept (``train_only``). Paper protocol:
  trained on all training folds, the best TEST-fold accuracy over the grid and epochs, per fold.

Pairs: ``<raw_root>/<dataset>/<pairs_file>`` with columns ``fold, path_a, path_b, same``; paths are
mapped to feature rows through the aligned manifest's ``path`` column. A pair whose image failed
alignment (absent from the aligned manifest or from the feature cache) is dropped and counted
(``n_pairs_dropped``). Metric: ``accuracy_pct`` = mean over folds of the fold accuracy.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pclbench.evaluate import metrics
from pclbench.core.config import from_dict, setting
from pclbench.core.device import resolve_device
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, optimise_linear, require_columns

log = logging.getLogger(__name__)

# The task's headline number (the probe-result contract's ``primary_metric``; the tables' primary column)
PRIMARY_METRIC = "accuracy_pct"
HIGHER_IS_BETTER = True


@dataclass
class VerificationConfig:
    """Section ``tasks.verification`` (protocol only; the dataset and split live in the benchmark)."""

    pairs_file: str = setting("Pair list in the raw dataset folder (fold,path_a,path_b,same).")
    n_folds: int = setting("Folds of the protocol (threshold of each fold chosen on the other folds).", minimum=2)
    mode: Literal["cosine", "linear"] = setting(
        "cosine = training-free; linear = Siamese linear map trained on the other folds' pairs.")
    margin: float = setting("Cosine-embedding margin for different pairs (linear mode).",
                            minimum=-1, exclusiveMaximum=1)
    train: TrainConfig = setting("Linear mode: optimiser and selection grid.")


def training_free(config: dict) -> bool:
    """Cosine mode has no trained parameter: every seed gives the same result."""
    return config["tasks"]["verification"]["mode"] == "cosine"


def describe(probe: ProbeConfig, config: dict) -> str:
    cfg = config["tasks"]["verification"]
    if cfg["mode"] == "cosine":
        return (f"training-free: cosine similarity of the raw features, {cfg['n_folds']}-fold protocol "
                "(threshold of each fold chosen on the other folds); std over folds")
    return (f"linear (Siamese) probe trained on the pairs of the other folds with the cosine-embedding loss "
            f"(margin {cfg['margin']}), {cfg['n_folds']}-fold protocol; " + probe.describe())


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


def _pairs_and_features(bench, roots, cfg: VerificationConfig, readout: str):
    x, manifest = roots.load(bench.test, readout)
    return (x, *_pairs(bench, roots, cfg, manifest))


def _pairs(bench, roots, cfg: VerificationConfig, manifest: pd.DataFrame):
    """(ia, ib, same, folds, n_pairs_total, n_dropped) of the pairs whose two images are rows of
    ``manifest`` (the rows with cached features, in feature order)."""
    require_columns(manifest, ["path"], roots.manifest_path(bench.test))
    pairs_path = roots.raw / bench.test.dataset / cfg.pairs_file
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
    return (ia[keep].astype(np.int64).to_numpy(), ib[keep].astype(np.int64).to_numpy(),
            kept["same"].astype(int).to_numpy(), kept["fold"].to_numpy(), len(pairs), n_dropped)


def run(bench, roots, config: dict, probe: ProbeConfig, seed: int, readout: str) -> dict:
    """Score all pairs with the fold protocol (cosine or linear mode); returns the run dict."""
    cfg = from_dict(VerificationConfig, config["tasks"]["verification"], "tasks.verification")
    cfg.train.check("tasks.verification.train")
    x, ia, ib, same, folds, n_total, n_dropped = _pairs_and_features(bench, roots, cfg, readout)
    if cfg.mode == "cosine":
        cv = metrics.verification_10fold(cosine_similarity(x[ia], x[ib]), same, folds)
        fold_acc, thresholds, selected = cv["fold_accuracy"], cv["thresholds"], None
    else:
        fold_acc, thresholds, selected = [], [], []
        for k in np.unique(folds):
            acc, t, sel = _linear_fold(x, ia, ib, same, folds, k, cfg, probe, seed)
            fold_acc.append(acc)
            thresholds.append(t)
            selected.append({"fold": k.item() if hasattr(k, "item") else k, **sel})
    fold_ids = [f.item() if hasattr(f, "item") else f for f in np.unique(folds)]
    acc_pct = [100.0 * a for a in fold_acc]
    run = {
        "metrics": {"accuracy_pct": float(np.mean(acc_pct))},
        "per_fold": [{"fold": f, "accuracy_pct": a, "threshold": t, "n_pairs": int((folds == f).sum())}
                     for f, a, t in zip(fold_ids, acc_pct, thresholds)],
        "fold_summary": {"accuracy_pct": {"mean": float(np.mean(acc_pct)),
                                          "std": float(np.std(acc_pct, ddof=1)), "n": len(acc_pct)}},
        "mode": cfg.mode,
        "selected": ({"thresholds": thresholds, "similarity": "cosine"} if selected is None
                     else {"per_fold": selected, "similarity": "cosine of the projected features"}),
        "n_pairs_total": int(n_total), "n_pairs_dropped": n_dropped, "n_pairs_used": int(len(same)),
        "n_same": int(same.sum()), "n_different": int(len(same) - same.sum()),
        "n_train": 0, "n_val": 0, "n_test": int(len(same)),
    }
    if selected is not None:
        run["n_train"] = int(round(np.mean([s["n_train_pairs"] for s in selected])))
        run["n_val"] = int(round(np.mean([s["n_val_pairs"] for s in selected])))
    return run


# --------------------------------------------------------------------------------------------------
# linear (Siamese) mode

def train_siamese(xa: torch.Tensor, xb: torch.Tensor, same: torch.Tensor, *, lr: float, weight_decay: float,
                  margin: float, cfg: TrainConfig, seed: int,
                  eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  stop_epoch: int | None = None) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Train the shared map W x + c (W (D, D) from the identity, c from 0) on pairs (xa, xb (P, D),
    already standardised; same (P,) 0/1) with the cosine-embedding loss; return, every
    ``cfg.eval_every`` epochs and at the last, the cosine of the projected pairs of each eval set.

    Weight decay (coupled L2 for adam/lbfgs, decoupled for adamw) pulls W towards 0, not towards the
    identity -- as weight decay on the authors' Linear layer would."""
    d = xa.shape[1]
    model = torch.nn.Linear(d, d, device=xa.device)
    with torch.no_grad():
        model.weight.copy_(torch.eye(d, device=xa.device))
        model.bias.zero_()
    target = same.float() * 2 - 1  # +1 same, -1 different (CosineEmbeddingLoss convention)

    def loss_of(idx) -> torch.Tensor:
        return F.cosine_embedding_loss(model(xa[idx]), model(xb[idx]), target[idx], margin=margin)

    def evaluate(epoch: int) -> tuple[int, dict[str, np.ndarray]]:
        with torch.no_grad():
            return epoch, {name: F.cosine_similarity(model(a), model(b), dim=1).double().cpu().numpy()
                           for name, (a, b) in eval_sets.items()}

    return optimise_linear(model, loss_of, len(xa), lr=lr, weight_decay=weight_decay, cfg=cfg, seed=seed,
                           stop_epoch=stop_epoch, evaluate=evaluate)


def _linear_fold(x: np.ndarray, ia: np.ndarray, ib: np.ndarray, same: np.ndarray, folds: np.ndarray, k,
                 cfg: VerificationConfig, probe: ProbeConfig, seed: int) -> tuple[float, float, dict]:
    """Test fold ``k`` of the linear mode -> (accuracy, threshold, selected setting)."""
    device = resolve_device(probe.device, "probe.device")
    fold_ids = np.unique(folds)
    train_folds = fold_ids[fold_ids != k]
    paper = probe.protocol == "paper"
    # validation fold (clean): the next fold after k, cyclically, among the training folds
    val_fold = None if paper else train_folds[(int(np.searchsorted(train_folds, k)) % len(train_folds))]
    test_m = folds == k
    trainall_m = ~test_m
    fit_m = trainall_m if paper else trainall_m & (folds != val_fold)
    val_m = test_m if paper else folds == val_fold  # the set the selection scores (paper: test)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)

    def standardiser(mask: np.ndarray):
        rows = np.unique(np.concatenate([ia[mask], ib[mask]]))
        mean = xt[rows].mean(0)
        sd = xt[rows].std(0, unbiased=False)
        inv = torch.where(sd > 1e-8, 1.0 / sd, torch.ones_like(sd))
        return (lambda t: (t - mean) * inv) if probe.standardize else (lambda t: t)

    def pairs(mask: np.ndarray, std):
        return std(xt[ia[mask]]), std(xt[ib[mask]])

    def fold_seed(extra: int) -> int:
        return int(np.random.SeedSequence([seed, int(k) if np.issubdtype(type(k), np.integer) else 0, extra])
                   .generate_state(1)[0])

    std = standardiser(fit_m)
    fa, fb = pairs(fit_m, std)
    evals = {"fit": (fa, fb), "sel": pairs(val_m, std)}
    if not paper and probe.refit == "train_only":
        evals["test"] = pairs(test_m, std)
    same_t = torch.as_tensor(np.array(same), device=device)
    best = None
    for lr, wd in itertools.product(cfg.train.lr_grid, cfg.train.weight_decay_grid):
        for epoch, sc in train_siamese(fa, fb, same_t[torch.as_tensor(fit_m, device=device)], lr=lr,
                                       weight_decay=wd, margin=cfg.margin, cfg=cfg.train, seed=fold_seed(0),
                                       eval_sets=evals):
            t, _ = metrics.best_accuracy_threshold(sc["fit"], same[fit_m])
            acc = float(np.mean((sc["sel"] > t) == same[val_m].astype(bool)))
            if best is None or acc > best[0]:
                best = (acc, lr, wd, epoch, t, sc)
    acc_sel, lr, wd, epoch, t, sc = best
    sel = {"lr": lr, "weight_decay": wd, "epoch": epoch, ("test_score" if paper else "val_score"): acc_sel,
           "selected_on": "test" if paper else "validation", "validation_fold": None if paper else val_fold.item(),
           "n_train_pairs": int(fit_m.sum()), "n_val_pairs": 0 if paper else int(val_m.sum())}
    if paper:
        return acc_sel, t, sel
    if probe.refit == "train_only":
        return float(np.mean((sc["test"] > t) == same[test_m].astype(bool))), t, sel
    std = standardiser(trainall_m)
    ta, tb = pairs(trainall_m, std)
    (_, sc), = train_siamese(ta, tb, same_t[torch.as_tensor(trainall_m, device=device)], lr=lr, weight_decay=wd,
                             margin=cfg.margin, cfg=cfg.train, seed=fold_seed(1),
                             eval_sets={"fit": (ta, tb), "test": pairs(test_m, std)}, stop_epoch=epoch)
    t, _ = metrics.best_accuracy_threshold(sc["fit"], same[trainall_m])
    return float(np.mean((sc["test"] > t) == same[test_m].astype(bool))), t, sel


def trivial(same: np.ndarray, folds: np.ndarray) -> dict:
    """Floor of the verification benchmark from LABELS ONLY: the best constant decision learnt on the
    training folds. The protocol has train folds (each fold is tested with the other folds as its
    training data, as the threshold is), so for test fold k the constant is the majority answer
    ("same" or "different") among the pairs of the OTHER folds, applied to every pair of fold k; a tie
    (balanced pairs, as LFW's 300 same + 300 different per fold) has no majority and the fold scores
    the expected accuracy of picking either constant at random, the mean of their two accuracies
    (= 50 %, chance). ``accuracy_pct`` = mean over folds of the fold accuracy, as :func:`run` reports.
    ``same``: (P,) 0/1, ``folds``: (P,) fold id of each pair (the pairs :func:`run` uses)."""
    same, folds = np.asarray(same).astype(bool), np.asarray(folds)
    fold_ids = np.unique(folds)
    acc, decisions = [], []
    for k in fold_ids:
        test, train = same[folds == k], same[folds != k]
        n_same, n_diff = int(train.sum()), int((~train).sum())
        if n_same == n_diff:
            decisions.append(None)
            acc.append(0.5 * (float(np.mean(test)) + float(np.mean(~test))))
        else:
            decisions.append("same" if n_same > n_diff else "different")
            acc.append(float(np.mean(test == (n_same > n_diff))))
    acc_pct = [100.0 * a for a in acc]
    return {
        "predictor": ("majority answer (same / different) of the other folds' pairs for every pair of the "
                      "test fold; 50 % (chance) for a fold whose training folds are balanced"),
        "metrics": {"accuracy_pct": float(np.mean(acc_pct))},
        "per_fold": [{"fold": f.item() if hasattr(f, "item") else f, "decision": d, "accuracy_pct": a}
                     for f, d, a in zip(fold_ids, decisions, acc_pct)],
    }


def floor(bench, roots, config: dict) -> dict:
    """:func:`trivial` on exactly the pairs :func:`run` uses (a pair with an unaligned image, or one
    without cached features, dropped the same way); no feature is read."""
    cfg = from_dict(VerificationConfig, config["tasks"]["verification"], "tasks.verification")
    _, _, same, folds, _, _ = _pairs(bench, roots, cfg, roots.rows(bench.test))
    return trivial(same, folds)
