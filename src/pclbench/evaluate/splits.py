"""Validation carving and fold checks for the clean linear-evaluation protocol.

The authors select the probe epoch on the test set (docs/method.md §6.1 item 1, A.1, A.2). Here every
hyperparameter is chosen on a validation split carved from the TRAINING data. When the manifest names
subjects, the carving is subject-disjoint, so validation scores measure generalisation to unseen people
as the test split does (RAF-DB-style sets without identities fall back to a per-image split).
"""
from __future__ import annotations

from typing import Any

import numpy as np

# values that mean "no subject known" in a manifest's `subject` column
_MISSING = {"", "-1", "nan", "none"}


def subject_labels(subjects: Any) -> np.ndarray | None:
    """Normalise a manifest `subject` column to a string array, or ``None`` when no row names a
    subject (column absent, empty or all -1). A column where only SOME rows name a subject is an
    error: mixing subject-disjoint and per-image carving would leak identities."""
    if subjects is None:
        return None
    s = np.asarray([str(x).strip() for x in np.asarray(subjects, dtype=object)], dtype=object)
    missing = np.array([x.lower() in _MISSING for x in s], dtype=bool)
    if missing.all():
        return None
    if missing.any():
        raise ValueError(f"column subject: {int(missing.sum())} of {len(s)} rows have no subject "
                         f"(empty, nan or -1) while the others do; fix the manifest")
    return s


def carve_validation(n: int, fraction: float, rng: np.random.Generator,
                     subjects: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..n-1`` into (train, val), both sorted.

    With subjects: whole subjects, in random order, go to validation until it holds at least
    ``fraction * n`` samples (so no subject is on both sides); at least one subject stays in train.
    Without: a random ``round(fraction * n)`` samples (at least 1) go to validation.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"cannot carve a validation split from {n} training sample(s)")
    subj = subject_labels(subjects)
    if subj is None:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        perm = rng.permutation(n)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    if len(subj) != n:
        raise ValueError(f"subjects has {len(subj)} entries for {n} samples")
    uniq, inv, counts = np.unique(subj, return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        raise ValueError(f"cannot carve a subject-disjoint validation split: only one subject "
                         f"({uniq[0]!r}) in the training data")
    order = rng.permutation(len(uniq))
    target = fraction * n
    chosen, total = [], 0
    for u in order[:-1]:  # the last subject in the order always stays in train
        if total >= target:
            break
        chosen.append(u)
        total += counts[u]
    is_val = np.isin(inv, chosen)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def check_fold_exclusivity(subjects: Any, folds: Any, where: str) -> np.ndarray:
    """Validate subject-exclusive cross-validation folds (AU protocol, docs/method.md §4.4 / A.1).

    Raises ``ValueError`` naming ``where`` when a row has no fold (-1 / missing), when fewer than two
    folds exist, or when a subject appears in more than one fold. Returns the folds as int64.
    """
    f = np.asarray(folds)
    try:
        f = f.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column fold must be integers, got {f[:5].tolist()}") from None
    if np.isnan(f).any() or (f != np.round(f)).any():
        raise ValueError(f"{where}: column fold must hold integers without gaps")
    f = f.astype(np.int64)
    if (f < 0).any():
        raise ValueError(f"{where}: {int((f < 0).sum())} rows have fold {f[f < 0][0]} (no fold); the AU "
                         "protocol needs every row in a subject-exclusive fold")
    if len(np.unique(f)) < 2:
        raise ValueError(f"{where}: need at least 2 folds for cross-validation, found {np.unique(f).tolist()}")
    subj = subject_labels(subjects)
    if subj is None:
        raise ValueError(f"{where}: column subject is missing or empty; subject-exclusive folds cannot "
                         "be checked")
    if len(subj) != len(f):
        raise ValueError(f"{where}: {len(subj)} subjects for {len(f)} folds")
    pairs = np.unique(np.stack([subj.astype(str), f.astype(str)], axis=1), axis=0)
    s_uniq, s_count = np.unique(pairs[:, 0], return_counts=True)
    leaking = s_uniq[s_count > 1]
    if len(leaking):
        examples = {str(s): sorted(int(x) for x in pairs[pairs[:, 0] == s, 1]) for s in leaking[:3]}
        raise ValueError(f"{where}: folds are not subject-exclusive: {len(leaking)} subject(s) appear in "
                         f"several folds, e.g. {examples}")
    return f
