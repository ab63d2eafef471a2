"""The QC record of an aligned split: ``qc.json`` and the QC files written next to it.

docs/architecture.md, "Stage 2". ``qc.json`` (:func:`qc_report`): counts, every failure with its
reason, the alignment score of the kept faces (geometry.qc_scores: RMS residual of the five crop
points after their best similarity fit to the template), padding, timings and the config. Next to it
(:func:`write_qc_files`): ``failures.csv`` (every failed file and why), ``qc_samples.png`` and
``qc_worst.png`` (contact sheets of evenly spaced faces, and of the crops rejected by the QC
(pclbench.align.rejection) with their reason followed by the worst-scoring kept faces).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pclbench.align.contact_sheet import contact_sheet
from pclbench.align.rejection import FAIL_OUTSIDE, FAIL_PADDING, FAIL_SCALE
from pclbench.align.workdir import Gathered, Plan

QC_FILES = ("failures.csv", "qc_samples.png", "qc_worst.png")  # written next to qc.json by write_qc_files
# Short captions of rejected crops on qc_worst.png (a 48 px cell holds ~8 characters).
_REJECT_TAGS = {FAIL_OUTSIDE: "REJ out", FAIL_SCALE: "REJ scale", FAIL_PADDING: "REJ pad"}


def _stat(fn, values: np.ndarray) -> float | None:
    """``fn`` over the finite values, None when there are none (JSON has no NaN)."""
    v = values[np.isfinite(values)]
    return float(fn(v)) if len(v) else None


def worst_kept(score: np.ndarray, qc_samples: int) -> list[int]:
    """Shard rows of the (at most ``qc_samples``) worst-scoring kept faces, worst first (ties: row order)."""
    n_show = min(qc_samples, len(score))
    return np.argsort(-score, kind="stable")[:n_show].tolist()


def qc_report(plan: Plan, g: Gathered, size: int, template: np.ndarray, *, points: str, qc_samples: int,
              max_failure_rate: float, chunk_size: int, config: dict[str, Any],
              extra: dict | None) -> dict[str, Any]:
    """The ``qc.json`` of a split gathered into ``g`` (``config``: the align section as a dict; ``extra``:
    keys added at the end). ``timings_s`` holds the chunks' stage times; the caller adds its wall times."""
    kept, failures, score, padding, rejected = g.kept, g.failures, g.score, g.padding, g.rejected
    n_total = len(plan.rel_paths)
    why = dict(failures)
    worst = worst_kept(score, qc_samples)
    return {
        "dataset": plan.dataset,
        "split": plan.split,
        "backend": plan.fingerprint["backend"],
        "detector": plan.fingerprint["detector"],
        "crop": plan.fingerprint["crop"],
        "box": plan.fingerprint["box"],
        "points": points,
        "size": size,
        "template": template.round(4).tolist(),
        "n_total": n_total,
        "n_kept": len(kept),
        "n_failed": len(failures),
        "failure_rate": len(failures) / n_total,
        "max_failure_rate": max_failure_rate,
        "failures_by_reason": dict(sorted(g.by_reason.items())),
        "failures": [{"row": r, "path": plan.rel_paths[r], "reason": why} for r, why in failures],
        "score": {
            "definition": "RMS residual of the five crop points after their least-squares similarity "
                          "fit onto the template, in px of the crop",
            # rows without landmarks (align.crop as_is) have no score: NaN, left out here
            # so qc.json stays standard JSON
            "n_scored": int(np.isfinite(score).sum()),
            "median": _stat(np.median, score),
            "p95": _stat(lambda v: np.percentile(v, 95), score),
            "max": _stat(np.max, score),
            "worst": [{"row": int(i), "path": plan.rel_paths[kept[i]], "score": float(score[i])}
                      for i in worst if np.isfinite(score[i])],
        },
        "padding": {
            "definition": "fraction of a kept crop's pixels outside its image (black)",
            "median": float(np.median(padding)) if len(padding) else None,
            "p95": float(np.percentile(padding, 95)) if len(padding) else None,
            "max": float(padding.max()) if len(padding) else None,
        },
        # QC-rejected crops shown first on qc_worst.png (align.qc), at most qc_samples
        "rejected_shown": [{"path": plan.rel_paths[r], "reason": why[r]} for r in rejected],
        "n_chunks": len(plan.chunks),
        "chunk_size": chunk_size,
        "timings_s": {
            # stage times summed over chunks, workers and jobs (CPU time, not wall time);
            # merge = this gathering step's wall time
            **{k: g.seconds[k] for k in ("read", "landmarks", "warp")},
        },
        "config": config,
        **(extra or {}),
    }


def write_qc_files(shard_dir: Path, rel_paths: list[str], g: Gathered, qc_samples: int) -> None:
    """QC files next to qc.json: every failed file, a sheet of samples, a sheet of the worst scores.

    ``shard_dir`` holds the shard's ``images.npy`` already (the sheets are cut from it).
    """
    kept, failures, score, rejected = g.kept, g.failures, g.score, g.rejected
    pd.DataFrame(
        {"row": [r for r, _ in failures], "path": [rel_paths[r] for r, _ in failures],
         "reason": [w for _, w in failures]}
    ).to_csv(shard_dir / "failures.csv", index=False)
    n_show = min(qc_samples, len(kept))
    worst = worst_kept(score, qc_samples)
    why = dict(failures)
    if kept:
        images = np.load(shard_dir / "images.npy", mmap_mode="r")
        sample = np.unique(np.linspace(0, len(kept) - 1, n_show).round().astype(int)).tolist()
        contact_sheet(images, sample, shard_dir / "qc_samples.png")
    if kept or rejected:
        # the worst cases: the QC-rejected crops (caption: why) first, then the worst-scoring kept ones
        tiles = list(g.rejected_crops) + ([np.asarray(images[i]) for i in worst] if kept else [])
        captions = ([_REJECT_TAGS.get(why[r].split(":")[0], "REJ") for r in rejected]
                    + [f"{score[i]:.2f}" for i in worst])
        contact_sheet(np.stack(tiles), range(len(tiles)), shard_dir / "qc_worst.png", captions=captions)
    if kept:
        del images  # the memory map, before the folder is renamed into place
