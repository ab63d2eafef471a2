"""Landmark-based face alignment: raw dataset split (Stage 1) -> aligned uint8 shard (Stage 2).

docs/architecture.md, "Stage 2". For every image of ``<raw_dir>/<split>.csv``:

1. read it (RGB) and get its 68 iBUG landmarks from a backend (``data/landmarks.py``);
2. fit the least-squares similarity (rotation + uniform scale + translation, no reflection;
   Umeyama 1991) from the five ArcFace points of those landmarks (eye centres, nose tip, mouth
   corners) to a canonical template;
3. warp bilinearly into an ``S x S`` crop and move all 68 landmarks with the same transform.

Template: the standard 5-point ArcFace template of a 112 x 112 crop (InsightFace), normalised to the
unit square, then scaled about the crop centre by ``crop_scale`` (the face's size relative to that
tight crop; < 1 zooms out and keeps more context) and shifted down by ``shift_y`` crop heights.

Coordinates are (x, y), 0-based, (0, 0) = the centre of the top-left pixel (see landmarks.py). In
the unit square the crop spans [0, 1] edge to edge, so pixel-centre p of an S-pixel crop sits at
(p + 0.5) / S; the ArcFace numbers are pixel-centre coordinates (they are used with OpenCV's
warpAffine), hence ``(ARCFACE_112 + 0.5) / 112``.

Anti-aliasing: bilinear sampling is only faithful down to a scale of 1/2, so when the crop shrinks
the face more than 2x, the image is first box-averaged by an integer factor f = floor(1/scale)
(``PIL.Image.reduce``), then warped with scale * f in (1/2, 1].

Failures (unreadable file, no face, missing/malformed landmarks, backend error, degenerate
landmarks) are counted and skipped; the split fails only when the failure rate exceeds
``align.max_failure_rate``, and then nothing is written at the destination.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..config import ConfigError
from ..io import atomic_dir
from .landmarks import (
    FAIL_BACKEND,
    FAIL_DEGENERATE,
    FAIL_UNREADABLE,
    LANDMARKERS,
    N_POINTS,
    DlibOptions,
    FaceAlignmentOptions,
    GroundTruthOptions,
    five_points,
)
from .shards import ShardWriter

log = logging.getLogger(__name__)

# ArcFace / InsightFace 5-point template for a 112 x 112 crop, (x, y) pixel centres. "Left" = image left.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye centre
        [73.5318, 51.5014],  # right eye centre
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ]
)
ARCFACE_UNIT = (ARCFACE_112 + 0.5) / 112.0  # the same points in the unit square (edge to edge)


class AlignmentError(RuntimeError):
    """The split cannot be aligned (e.g. too many failures); nothing was written."""


@dataclass
class AlignConfig:
    """Config section ``align`` (see config/config.yaml for the meaning of each key)."""

    backend: str  # a name in landmarks.LANDMARKERS: groundtruth | dlib | face_alignment
    points: Literal["five"]  # landmark points fitted to the template (only the ArcFace five)
    crop_scale: float  # face size relative to the tight ArcFace crop (< 1: more context)
    shift_y: float  # template shift down, in crop heights (> 0: face lower in the crop)
    max_failure_rate: float  # the split fails above this fraction of failed images
    batch_size: int  # images per landmark call (and per FAN forward)
    device: str  # torch device for face_alignment: auto | cpu | cuda | cuda:0 ...
    groundtruth: GroundTruthOptions
    dlib: DlibOptions
    face_alignment: FaceAlignmentOptions

    def __post_init__(self) -> None:
        if self.backend not in LANDMARKERS:
            raise ConfigError(f"align.backend: {self.backend!r} is not one of {LANDMARKERS.names()}")
        if not (np.isfinite(self.crop_scale) and self.crop_scale > 0):
            raise ConfigError(f"align.crop_scale: must be > 0, got {self.crop_scale!r}")
        if not (-0.5 < self.shift_y < 0.5):
            raise ConfigError(f"align.shift_y: must be in (-0.5, 0.5), got {self.shift_y!r}")
        if not (0.0 <= self.max_failure_rate <= 1.0):
            raise ConfigError(f"align.max_failure_rate: must be in [0, 1], got {self.max_failure_rate!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", self.device):
            raise ConfigError(f"align.device: expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.batch_size < 1:
            raise ConfigError(f"align.batch_size: must be >= 1, got {self.batch_size!r}")


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def canonical_template(size: int, crop_scale: float, shift_y: float) -> np.ndarray:
    """The five template points ``(5, 2)`` in pixel-centre coordinates of a ``size x size`` crop."""
    unit = 0.5 + crop_scale * (ARCFACE_UNIT - 0.5) + np.array([0.0, shift_y])
    return unit * size - 0.5


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` without reflection (Umeyama 1991, Eqs. 40-42).

    ``src``: ``(B, n, 2)`` or ``(n, 2)``; ``dst``: the same or ``(n, 2)`` shared by the batch.
    Returns ``(B, 2, 3)`` (or ``(2, 3)``) matrices ``[s R | t]``. Degenerate sources (all points equal)
    give non-finite matrices; callers check ``np.isfinite``.
    """
    src = np.asarray(src, dtype=np.float64)
    single = src.ndim == 2
    if single:
        src = src[None]
    dst = np.broadcast_to(np.asarray(dst, dtype=np.float64), src.shape)
    n = src.shape[1]
    mu_s, mu_d = src.mean(axis=1), dst.mean(axis=1)  # (B, 2)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]  # (B, n, 2)
    var_s = (xs**2).sum(axis=(1, 2)) / n  # (B,)
    cov = np.einsum("bni,bnj->bij", xd, xs) / n  # (B, 2, 2) = Sigma_xy of the paper (dst x src^T)
    u, d, vt = np.linalg.svd(cov)
    # S = diag(1, sign(det U det V)) forbids reflections.
    sgn = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sgn[sgn == 0] = 1.0
    s_mat = np.zeros((len(src), 2, 2))
    s_mat[:, 0, 0], s_mat[:, 1, 1] = 1.0, sgn
    rot = u @ s_mat @ vt  # (B, 2, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (d[:, 0] + sgn * d[:, 1]) / var_s  # trace(D S) / sigma_x^2
    a = scale[:, None, None] * rot
    t = mu_d - np.einsum("bij,bj->bi", a, mu_s)
    m = np.concatenate([a, t[:, :, None]], axis=2)  # (B, 2, 3)
    return m[0] if single else m


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``m (..., 2, 3)`` applied to ``points (..., n, 2)``."""
    return np.einsum("...ij,...nj->...ni", m[..., :, :2], points) + m[..., None, :, 2]


def warp_to_crop(image: Image.Image, m: np.ndarray, size: int) -> np.ndarray:
    """Warp an RGB image with ``m`` (source pixel centres -> crop pixel centres) -> ``(3, S, S)`` uint8.

    Bilinear; outside the image is black. PIL's affine maps output to input *edge* coordinates
    (pixel i spans [i, i+1)), hence the +-0.5 around the inverse.
    """
    a, t = m[:, :2], m[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(a))))
    factor = int(np.floor(1.0 / scale)) if scale < 0.5 else 1
    if factor > 1:
        image = image.reduce(factor)  # box filter; reduced edge coordinate = original edge coordinate / f
    a_inv = np.linalg.inv(a)
    # input_edge = (a_inv @ (out_edge - 0.5 - t) + 0.5) / f
    lin = a_inv / factor
    off = (a_inv @ (-0.5 - t) + 0.5) / factor
    coeffs = (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])
    out = image.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)


def alignment_transforms(landmarks: np.ndarray, template: np.ndarray, points: str) -> np.ndarray:
    """Similarities ``(B, 2, 3)`` taking landmarks ``(B, 68, 2)`` onto the template."""
    if points != "five":
        raise ValueError(f"points: only 'five' is implemented, got {points!r}")
    return umeyama(five_points(landmarks), template)


def align_images(
    images: Sequence[Image.Image | np.ndarray], landmarks: np.ndarray, size: int, template: np.ndarray, points: str
) -> tuple[np.ndarray, np.ndarray]:
    """Align images with known landmarks ``(B, 68, 2)`` -> crops ``(B, 3, S, S)`` uint8, landmarks ``(B, 68, 2)``."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    m = alignment_transforms(landmarks, template, points)
    if not np.all(np.isfinite(m)):
        raise ValueError("degenerate landmarks: no similarity transform")
    crops = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        crops[i] = warp_to_crop(pil.convert("RGB"), m[i], size)
    return crops, apply_affine(m, landmarks).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# One split
# --------------------------------------------------------------------------------------------------


@dataclass
class _ChunkResult:
    kept: list[int]  # raw-manifest row indices, in order
    crops: np.ndarray  # (k, 3, S, S) uint8
    landmarks: np.ndarray  # (k, 68, 2) float32, crop coordinates
    failures: list[tuple[int, str]]  # (raw row, reason)
    seconds: dict[str, float]


class _ChunkAligner:
    """Reads, landmarks and warps one chunk of a split; one per process."""

    def __init__(self, cfg: AlignConfig, size: int):
        self.cfg = cfg
        self.size = size
        self.template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
        self.backend = LANDMARKERS.get(cfg.backend)(cfg)

    def _landmarks(self, arrays: list[np.ndarray], paths: list[Path]) -> list[np.ndarray | str]:
        try:
            res = self.backend.detect(arrays, paths)
            if len(res) != len(arrays):
                raise RuntimeError(f"backend returned {len(res)} results for {len(arrays)} images")
            return res
        except Exception:
            if len(arrays) == 1:
                raise
        # A batch failed: retry image by image so one bad image costs only itself.
        out: list[np.ndarray | str] = []
        for a, p in zip(arrays, paths):
            try:
                out.append(self._landmarks([a], [p])[0])
            except Exception as e:
                out.append(f"{FAIL_BACKEND}: {type(e).__name__}: {e}")
        return out

    def __call__(self, chunk: list[tuple[int, Path]]) -> _ChunkResult:
        seconds = {"read": 0.0, "landmarks": 0.0, "warp": 0.0}
        failures: list[tuple[int, str]] = []
        t0 = time.perf_counter()
        rows, paths, images = [], [], []
        for row, path in chunk:
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            except Exception as e:
                failures.append((row, f"{FAIL_UNREADABLE}: {type(e).__name__}: {e}"))
                continue
            rows.append(row)
            paths.append(path)
        arrays = [np.asarray(im) for im in images]  # (H, W, 3) uint8 RGB
        t1 = time.perf_counter()
        try:
            results = self._landmarks(arrays, paths) if arrays else []
        except Exception as e:  # a single image's backend call raised
            results = [f"{FAIL_BACKEND}: {type(e).__name__}: {e}"] * len(arrays)
        t2 = time.perf_counter()
        good = []
        for j, res in enumerate(results):
            if isinstance(res, str):
                failures.append((rows[j], res))
                continue
            res = np.asarray(res, dtype=np.float64)
            if res.shape != (N_POINTS, 2) or not np.all(np.isfinite(res)):
                failures.append((rows[j], f"{FAIL_BACKEND}: landmarks of shape {res.shape} or non-finite"))
                continue
            good.append((j, res))
        crops = np.empty((len(good), 3, self.size, self.size), dtype=np.uint8)
        lms = np.empty((len(good), N_POINTS, 2), dtype=np.float32)
        kept: list[int] = []
        if good:
            lm_src = np.stack([g[1] for g in good])  # (k, 68, 2)
            m = alignment_transforms(lm_src, self.template, self.cfg.points)  # (k, 2, 3)
            ok = np.all(np.isfinite(m), axis=(1, 2))
            ok[ok] = np.abs(np.linalg.det(m[ok, :, :2])) > 1e-12
            lm_crop = apply_affine(m, lm_src)
            n = 0
            for (j, _), m_i, ok_i, lm_i in zip(good, m, ok, lm_crop):
                if not ok_i:
                    failures.append((rows[j], f"{FAIL_DEGENERATE}: the five alignment points coincide"))
                    continue
                crops[n] = warp_to_crop(images[j], m_i, self.size)
                lms[n] = lm_i
                kept.append(rows[j])
                n += 1
            crops, lms = crops[:n], lms[:n]
        seconds["read"] = t1 - t0
        seconds["landmarks"] = t2 - t1
        seconds["warp"] = time.perf_counter() - t2
        failures.sort()
        return _ChunkResult(kept, crops, lms, failures, seconds)


_WORKER: _ChunkAligner | None = None
_WORKER_ERROR: BaseException | None = None


def _worker_init(cfg: AlignConfig, size: int) -> None:
    # Each worker is one core: keep torch/BLAS from oversubscribing (torch is imported after this).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = _ChunkAligner(cfg, size)
    except Exception as e:  # raising here would make the Pool respawn workers forever
        _WORKER_ERROR = e


def _worker_run(chunk: list[tuple[int, Path]]) -> _ChunkResult:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER is not None
    return _WORKER(chunk)


def _progress(total: int, desc: str):
    """tqdm on a terminal; otherwise periodic log lines (every ~10%)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img")

    class _Log:
        def __init__(self) -> None:
            self.n, self.next = 0, max(1, total // 10)

        def update(self, k: int) -> None:
            self.n += k
            if self.n >= self.next or self.n == total:
                log.info("%s: %d/%d images", desc, self.n, total)
                self.next = self.n + max(1, total // 10)

        def close(self) -> None:
            pass

    return _Log()


def align_split(
    raw_dir: str | os.PathLike, split: str, out_dir: str | os.PathLike, cfg: AlignConfig, size: int, workers: int = 1
) -> dict:
    """Align ``<raw_dir>/<split>.csv`` into the shard folder ``out_dir``; returns the qc dict.

    ``size`` is the crop size S (64 for pretraining, per task for evaluation). ``workers`` > 1 runs
    chunks in that many spawned processes (each builds its own backend; keep 1 for a GPU backend).
    Raises :class:`AlignmentError` (and writes nothing) when the failure rate exceeds
    ``cfg.max_failure_rate``; an existing shard at ``out_dir`` is only replaced on success.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if size < 8:
        raise ValueError(f"crop size must be >= 8 px, got {size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    manifest_path = raw_dir / f"{split}.csv"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest of split {split!r} not found")
    # Read every cell as text so the shard's manifest.csv repeats the raw rows verbatim (no float
    # re-formatting, no "NA" -> NaN); readers parse both files the same way.
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    if "path" not in manifest.columns:
        raise ValueError(f"{manifest_path}: no 'path' column (columns: {', '.join(map(str, manifest.columns))})")
    if len(manifest) == 0:
        raise ValueError(f"{manifest_path}: the manifest has no rows")
    if "row" in manifest.columns:
        raise ValueError(f"{manifest_path}: column 'row' is reserved for the aligned shard")
    rel_paths = manifest["path"].tolist()
    items = [(i, raw_dir / p) for i, p in enumerate(rel_paths)]
    chunks = [items[s : s + cfg.batch_size] for s in range(0, len(items), cfg.batch_size)]
    n_total = len(items)

    t_start = time.perf_counter()
    seconds = Counter({"read": 0.0, "landmarks": 0.0, "warp": 0.0})
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    desc = f"align {raw_dir.name}/{split}"
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, capacity=n_total, size=size)
        try:
            pool = None
            if workers > 1:
                pool = multiprocessing.get_context("spawn").Pool(workers, _worker_init, (cfg, size))
                results: Iterator[_ChunkResult] = pool.imap(_worker_run, chunks)
            else:
                aligner = _ChunkAligner(cfg, size)
                results = (aligner(c) for c in chunks)
            t_ready = time.perf_counter()
            bar = _progress(n_total, desc)
            try:
                for res in results:
                    writer.append(res.crops, res.landmarks)
                    kept.extend(res.kept)
                    failures.extend(res.failures)
                    seconds.update(res.seconds)
                    bar.update(len(res.kept) + len(res.failures))
            except BaseException:
                if pool is not None:
                    pool.terminate()
                raise
            finally:
                bar.close()
                if pool is not None:
                    pool.close()
                    pool.join()
            n_failed = len(failures)
            rate = n_failed / n_total
            by_reason = Counter(reason.split(":")[0] for _, reason in failures)
            wall = time.perf_counter() - t_start
            qc: dict[str, Any] = {
                "dataset": raw_dir.name,
                "split": split,
                "backend": cfg.backend,
                "points": cfg.points,
                "size": size,
                "template": canonical_template(size, cfg.crop_scale, cfg.shift_y).round(4).tolist(),
                "n_total": n_total,
                "n_kept": len(kept),
                "n_failed": n_failed,
                "failure_rate": rate,
                "max_failure_rate": cfg.max_failure_rate,
                "failures_by_reason": dict(sorted(by_reason.items())),
                "failures": [{"row": r, "path": rel_paths[r], "reason": why} for r, why in failures],
                "timings_s": {
                    "total": wall,
                    "setup": t_ready - t_start,
                    # summed over workers (CPU time per stage, not wall time when workers > 1)
                    **{k: seconds[k] for k in ("read", "landmarks", "warp")},
                },
                "images_per_s": n_total / wall if wall > 0 else None,
                "workers": workers,
                "config": dataclasses.asdict(cfg),
            }
            if rate > cfg.max_failure_rate:
                examples = "; ".join(f"{rel_paths[r]}: {why}" for r, why in failures[:5])
                raise AlignmentError(
                    f"{desc}: {n_failed}/{n_total} images failed ({rate:.1%} > align.max_failure_rate "
                    f"{cfg.max_failure_rate:.1%}); by reason: {json.dumps(dict(by_reason))}; first: {examples}. "
                    f"Nothing was written to {out_dir}."
                )
            writer.close(manifest.iloc[kept], qc)
        except BaseException:
            writer.abort()
            raise
    log.info(
        "%s: kept %d/%d (%.2f%% failed) in %.1fs -> %s",
        desc, len(kept), n_total, 100 * rate, qc["timings_s"]["total"], out_dir,
    )
    return qc
