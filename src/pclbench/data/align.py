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

At scale (issue "Alignment at scale"): a split is processed in resumable chunks of
``align.chunk_size`` images saved under ``<out>.parts/`` (:func:`align_chunks`; a crash loses only the
chunks in flight), optionally as ``align.parts`` parallel jobs, then merged into the shard
(:func:`merge_chunks`). The landmark backend sees ``align.batch_size`` images per call (one stacked
FAN forward for the face_alignment backend), with the face detector chosen per dataset
(``align.detectors``). QC written next to qc.json: ``failures.csv`` (every failed file and why),
``qc_samples.png`` and ``qc_worst.png`` (contact sheets of evenly spaced and of the worst-scoring
faces; score = RMS distance of the five aligned points from the template, :func:`qc_scores`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
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


# face-alignment's detector modules, plus `box`: a fixed face box for datasets of face crops.
FAN_DETECTORS = ("sfd", "blazeface", "dlib", "retinaface", "scrfd", "yunet", "box")


class AlignmentError(RuntimeError):
    """The split cannot be aligned (e.g. too many failures); nothing was written."""


@dataclass
class AlignConfig:
    """Config section ``align`` (see config/config.yaml for the meaning of each key)."""

    backend: str  # a name in landmarks.LANDMARKERS: groundtruth | dlib | face_alignment
    backends: dict[str, str]  # dataset -> landmark backend (else `backend`)
    points: Literal["five"]  # landmark points fitted to the template (only the ArcFace five)
    crop_scale: float  # face size relative to the tight ArcFace crop (< 1: more context)
    shift_y: float  # template shift down, in crop heights (> 0: face lower in the crop)
    max_failure_rate: float  # the split fails above this fraction of failed images
    batch_size: int  # images per landmark call (and per FAN forward)
    chunk_size: int  # images per resumable chunk (one file in the work folder)
    parts: int  # cluster jobs per split in the workflow (scatter/gather); 1 = one job
    qc_samples: int  # faces in each QC contact sheet (samples, worst scores)
    device: str  # torch device for face_alignment: auto | cpu | cuda | cuda:0 ...
    detectors: dict[str, str]  # dataset -> face_alignment detector (else face_alignment.detector)
    groundtruth: GroundTruthOptions
    dlib: DlibOptions
    face_alignment: FaceAlignmentOptions

    def __post_init__(self) -> None:
        for where, name in [("align.backend", self.backend),
                            *((f"align.backends.{d}", b) for d, b in self.backends.items())]:
            if name not in LANDMARKERS:
                raise ConfigError(f"{where}: {name!r} is not one of {LANDMARKERS.names()}")
        if not (np.isfinite(self.crop_scale) and self.crop_scale > 0):
            raise ConfigError(f"align.crop_scale: must be > 0, got {self.crop_scale!r}")
        if not (-0.5 < self.shift_y < 0.5):
            raise ConfigError(f"align.shift_y: must be in (-0.5, 0.5), got {self.shift_y!r}")
        if not (0.0 <= self.max_failure_rate <= 1.0):
            raise ConfigError(f"align.max_failure_rate: must be in [0, 1], got {self.max_failure_rate!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", self.device):
            raise ConfigError(f"align.device: expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for key in ("batch_size", "chunk_size", "parts", "qc_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"align.{key}: must be >= 1, got {getattr(self, key)!r}")
        for name in [self.face_alignment.detector, *self.detectors.values()]:
            if name not in FAN_DETECTORS:
                raise ConfigError(
                    f"align detector {name!r} (align.face_alignment.detector / align.detectors): "
                    f"expected one of {list(FAN_DETECTORS)}"
                )

    def backend_for(self, dataset: str | None) -> str:
        """The landmark backend of ``dataset``: ``align.backends[dataset]``, else ``align.backend``."""
        return self.backends.get(dataset or "", self.backend)

    def detector_for(self, dataset: str | None) -> str:
        """The face_alignment detector of ``dataset``: ``align.detectors[dataset]``, else the default."""
        return self.detectors.get(dataset or "", self.face_alignment.detector)


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
# One batch of images
# --------------------------------------------------------------------------------------------------


@dataclass
class _ChunkResult:
    kept: list[int]  # raw-manifest row indices, in order
    crops: np.ndarray  # (k, 3, S, S) uint8
    landmarks: np.ndarray  # (k, 68, 2) float32, crop coordinates
    failures: list[tuple[int, str]]  # (raw row, reason)
    seconds: dict[str, float]


def _concat_results(results: Sequence[_ChunkResult], size: int) -> _ChunkResult:
    seconds: Counter = Counter()
    for r in results:
        seconds.update(r.seconds)
    return _ChunkResult(
        kept=[k for r in results for k in r.kept],
        crops=np.concatenate([r.crops for r in results]) if results else np.zeros((0, 3, size, size), np.uint8),
        landmarks=np.concatenate([r.landmarks for r in results]) if results else np.zeros((0, N_POINTS, 2), np.float32),
        failures=sorted(f for r in results for f in r.failures),
        seconds={k: seconds[k] for k in ("read", "landmarks", "warp")},
    )


class _ChunkAligner:
    """Reads, landmarks and warps batches of images; one per process."""

    def __init__(self, cfg: AlignConfig, size: int, dataset: str | None = None):
        self.cfg = cfg
        self.size = size
        self.template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
        backend = cfg.backend_for(dataset)
        builder = LANDMARKERS.get(backend)
        if backend == "face_alignment":
            self.backend = builder(cfg, detector=cfg.detector_for(dataset))
        else:
            self.backend = builder(cfg)

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
        """One batch (at most ``batch_size`` images: one backend call)."""
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

    def chunk(self, items: list[tuple[int, Path]]) -> _ChunkResult:
        """One resumable chunk (``chunk_size`` images) in batches of ``batch_size``."""
        bs = self.cfg.batch_size
        return _concat_results([self(items[s : s + bs]) for s in range(0, len(items), bs)], self.size)


_WORKER: _ChunkAligner | None = None
_WORKER_ERROR: BaseException | None = None


def _worker_init(cfg: AlignConfig, size: int, dataset: str | None) -> None:
    # Each worker is one core: keep torch/BLAS from oversubscribing (torch is imported after this).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = _ChunkAligner(cfg, size, dataset)
    except Exception as e:  # raising here would make the Pool respawn workers forever
        _WORKER_ERROR = e


def _worker_run(job: tuple[int, list[tuple[int, Path]]]) -> tuple[int, _ChunkResult]:
    """One batch ``(chunk index, items)`` -> ``(chunk index, result)``."""
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER is not None
    return job[0], _WORKER(job[1])


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


# --------------------------------------------------------------------------------------------------
# Resumable chunks: <out>.parts/chunk-000000.npz ... then one merge into the shard
# --------------------------------------------------------------------------------------------------
# A split is cut into chunks of ``align.chunk_size`` manifest rows. Each finished chunk is written
# atomically (tmp + os.replace) to the work folder ``<out_dir>.parts/`` next to the shard, so a crash
# loses at most the chunks in flight, and a rerun only computes the missing ones. ``align.parts`` > 1
# splits the chunks into that many contiguous ranges, one cluster job each (``--part i``); the merge
# concatenates every chunk in order, so the shard is byte-identical however the work was cut,
# interrupted or resumed (qc.json differs only in its timings). ``work.json`` fingerprints what the
# chunks depend on (manifest content, crop size, alignment settings, detector); a mismatch discards
# the stale chunks instead of mixing them into a new shard.

WORK_FILE = "work.json"
QC_FILES = ("failures.csv", "qc_samples.png", "qc_worst.png")


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    """The resumable work folder of a shard: ``<out_dir>.parts`` (a sibling, never inside the shard)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.parts"


def _chunk_path(work: Path, c: int) -> Path:
    return work / f"chunk-{c:06d}.npz"


@dataclass
class _Plan:
    raw_dir: Path
    split: str
    dataset: str
    manifest: pd.DataFrame
    rel_paths: list[str]
    chunks: list[list[tuple[int, Path]]]
    fingerprint: dict[str, Any]


def _plan(raw_dir: Path, split: str, cfg: AlignConfig, size: int, dataset: str | None) -> _Plan:
    if size < 8:
        raise ValueError(f"crop size must be >= 8 px, got {size}")
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
    dataset = dataset or raw_dir.name
    rel_paths = manifest["path"].tolist()
    items = [(i, raw_dir / p) for i, p in enumerate(rel_paths)]
    chunks = [items[s : s + cfg.chunk_size] for s in range(0, len(items), cfg.chunk_size)]
    settings = dataclasses.asdict(cfg)
    # do not change chunks (the dataset's own backend / detector are in the fingerprint below)
    for k in ("parts", "max_failure_rate", "qc_samples", "batch_size", "detectors", "backend", "backends"):
        settings.pop(k)
    fingerprint = {
        "raw_dir": str(raw_dir.resolve()),
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "split": split,
        "size": size,
        "backend": cfg.backend_for(dataset),
        "detector": cfg.detector_for(dataset) if cfg.backend_for(dataset) == "face_alignment" else None,
        "settings": settings,
    }
    return _Plan(raw_dir, split, dataset, manifest, rel_paths, chunks, fingerprint)


def _prepare_work(work: Path, fingerprint: dict[str, Any]) -> None:
    """Create the work folder; discard chunks made under a different fingerprint."""
    work.mkdir(parents=True, exist_ok=True)
    wf = work / WORK_FILE
    text = json.dumps(fingerprint, sort_keys=True, indent=1) + "\n"
    if wf.is_file() and wf.read_text() == text:
        return
    stale = sorted(work.glob("chunk-*.npz"))
    if stale:
        log.warning("%s: %d chunk(s) were made with other inputs or settings; recomputing them", work, len(stale))
        for p in stale:
            p.unlink()
    tmp = work / f".{WORK_FILE}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, wf)


def _input_key(items: Sequence[tuple[int, Path]]) -> str:
    """Hash of a chunk's input files (path, size, modification time): a chunk whose images changed
    after it was made is recomputed, not reused."""
    h = hashlib.sha256()
    for row, path in items:
        try:
            st = os.stat(path)
            h.update(f"{row}\t{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{row}\t{path}\tmissing\n".encode())
    return h.hexdigest()


def _chunk_is_current(path: Path, items: Sequence[tuple[int, Path]]) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:  # reads only the small `key` member
            return str(z["key"]) == _input_key(items)
    except Exception:  # unreadable or older layout: recompute
        return False


def _save_chunk(path: Path, res: _ChunkResult, key: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.asarray(key),
            kept=np.asarray(res.kept, dtype=np.int64),
            crops=res.crops,
            landmarks=res.landmarks.astype(np.float32),
            fail_rows=np.asarray([r for r, _ in res.failures], dtype=np.int64),
            fail_reasons=np.asarray([w for _, w in res.failures], dtype=str),
            seconds=np.asarray([res.seconds[k] for k in ("read", "landmarks", "warp")], dtype=np.float64),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_chunk(path: Path, size: int) -> _ChunkResult:
    with np.load(path, allow_pickle=False) as z:
        crops = z["crops"]
        if crops.shape[1:] != (3, size, size):
            raise ValueError(f"{path}: crops of shape {crops.shape}, expected (k, 3, {size}, {size}); delete it")
        return _ChunkResult(
            kept=z["kept"].tolist(),
            crops=crops,
            landmarks=z["landmarks"],
            failures=list(zip(z["fail_rows"].tolist(), z["fail_reasons"].tolist())),
            seconds=dict(zip(("read", "landmarks", "warp"), z["seconds"].tolist())),
        )


def part_chunks(n_chunks: int, part: int, parts: int) -> range:
    """The contiguous chunk indices of job ``part`` (0-based) out of ``parts``."""
    if not (parts >= 1 and 0 <= part < parts):
        raise ValueError(f"part must be in 0..{parts - 1}, got {part} (of {parts} parts)")
    return range(part * n_chunks // parts, (part + 1) * n_chunks // parts)


def align_chunks(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    workers: int = 1,
    dataset: str | None = None,
    part: int = 0,
    parts: int = 1,
) -> dict:
    """Compute the missing chunks of job ``part`` of ``parts`` into ``work_dir_for(out_dir)``.

    Finished chunks (from an interrupted run or another job) are kept, not recomputed. Returns
    ``{"chunks": [...this job's indices], "computed": [...], "reused": [...], "n_chunks": total}``.
    """
    raw_dir = Path(raw_dir)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = _plan(raw_dir, split, cfg, size, dataset)
    work = work_dir_for(out_dir)
    _prepare_work(work, plan.fingerprint)
    mine = list(part_chunks(len(plan.chunks), part, parts))
    todo = [c for c in mine if not _chunk_is_current(_chunk_path(work, c), plan.chunks[c])]
    reused = [c for c in mine if c not in todo]
    if reused:
        log.info("%s/%s: %d of %d chunk(s) already done in %s", plan.dataset, split, len(reused), len(mine), work)
    desc = f"align {plan.dataset}/{split}" + (f" part {part + 1}/{parts}" if parts > 1 else "")
    n_todo = sum(len(plan.chunks[c]) for c in todo)
    if todo:
        bs = cfg.batch_size
        # Worker processes take batches (not chunks), so a split of a single chunk still uses every
        # worker; a chunk is saved as soon as all its batches are back (imap keeps their order).
        batches = [(c, plan.chunks[c][s : s + bs]) for c in todo for s in range(0, len(plan.chunks[c]), bs)]
        n_batches = Counter(c for c, _ in batches)
        pool = None
        if workers > 1 and len(batches) > 1:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(batches)), _worker_init,
                                                             (cfg, size, plan.dataset))
            results: Iterator[tuple[int, _ChunkResult]] = pool.imap(_worker_run, batches)
        else:
            aligner = _ChunkAligner(cfg, size, plan.dataset)
            results = ((c, aligner.chunk(plan.chunks[c])) for c in todo)
            n_batches = Counter({c: 1 for c in todo})
        pending: dict[int, list[_ChunkResult]] = {}
        bar = _progress(n_todo, desc)
        try:
            for c, res in results:
                pending.setdefault(c, []).append(res)
                bar.update(len(res.kept) + len(res.failures))
                if len(pending[c]) == n_batches[c]:
                    # a chunk file exists only once complete (tmp + os.replace)
                    _save_chunk(_chunk_path(work, c), _concat_results(pending.pop(c), size),
                                _input_key(plan.chunks[c]))
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    return {"n_chunks": len(plan.chunks), "chunks": mine, "computed": todo, "reused": reused}


def qc_scores(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Alignment QC score per face ``(N,)``: RMS distance of the five alignment points from the
    template after alignment, in pixels of the crop (0 = a perfect similarity fit; larger = the landmarks
    are not a similarity of the template: wrong landmarks, extreme pose or expression)."""
    d = five_points(landmarks) - template  # (N, 5, 2)
    return np.sqrt((d**2).sum(axis=-1).mean(axis=-1))


def contact_sheet(
    images: np.ndarray, indices: Sequence[int], path: Path, captions: Sequence[str] | None = None, cols: int = 8
) -> None:
    """A PNG grid of shard crops ``images[indices]`` (uint8 ``(N, 3, S, S)``), optional caption each."""
    from PIL import ImageDraw

    indices = list(indices)
    s = int(images.shape[-1])
    cell = max(s, 48)
    cap_h = 12 if captions else 0
    cols = max(1, min(cols, len(indices)))
    rows = max(1, -(-len(indices) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * (cell + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(indices):
        x, y = (k % cols) * cell, (k // cols) * (cell + cap_h)
        tile = Image.fromarray(np.asarray(images[i]).transpose(1, 2, 0))
        if s != cell:
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        if captions:
            draw.text((x + 1, y + cell), captions[k], fill=(0, 0, 0))
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)


def merge_chunks(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    dataset: str | None = None,
    keep_work: bool = False,
    extra_qc: dict | None = None,
) -> dict:
    """Gather every chunk of the work folder into the shard ``out_dir`` (atomically); returns qc.

    Raises ``FileNotFoundError`` naming the missing chunks if a job has not finished, and
    :class:`AlignmentError` (writing nothing; the QC goes to ``<work>/qc_failed.json``) when the
    failure rate exceeds ``cfg.max_failure_rate``. The work folder is deleted after success unless
    ``keep_work``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    t_start = time.perf_counter()
    plan = _plan(raw_dir, split, cfg, size, dataset)
    work = work_dir_for(out_dir)
    wf = work / WORK_FILE
    if not wf.is_file() or json.loads(wf.read_text()) != json.loads(json.dumps(plan.fingerprint)):
        raise FileNotFoundError(
            f"{work}: no chunks made for these inputs and settings; run `pclbench align` (all parts) first"
        )
    missing = [c for c, items in enumerate(plan.chunks) if not _chunk_is_current(_chunk_path(work, c), items)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{work}: {len(missing)} of {len(plan.chunks)} chunk(s) not done (or their images changed since): "
            f"{shown}; run the `pclbench align --part` jobs again (finished chunks are kept)"
        )
    n_total = len(plan.rel_paths)
    template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
    seconds: Counter = Counter({"read": 0.0, "landmarks": 0.0, "warp": 0.0})
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    scores: list[np.ndarray] = []
    desc = f"align {plan.dataset}/{split}"
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, capacity=n_total, size=size)
        try:
            for c in range(len(plan.chunks)):
                res = _load_chunk(_chunk_path(work, c), size)
                writer.append(res.crops, res.landmarks)
                kept.extend(res.kept)
                failures.extend(res.failures)
                seconds.update(res.seconds)
                scores.append(qc_scores(res.landmarks, template))
            score = np.concatenate(scores) if scores else np.zeros(0)
            n_failed = len(failures)
            rate = n_failed / n_total
            by_reason = Counter(reason.split(":")[0] for _, reason in failures)
            n_show = min(cfg.qc_samples, len(kept))
            worst = np.argsort(-score, kind="stable")[:n_show].tolist()
            qc: dict[str, Any] = {
                "dataset": plan.dataset,
                "split": split,
                "backend": plan.fingerprint["backend"],
                "detector": plan.fingerprint["detector"],
                "points": cfg.points,
                "size": size,
                "template": template.round(4).tolist(),
                "n_total": n_total,
                "n_kept": len(kept),
                "n_failed": n_failed,
                "failure_rate": rate,
                "max_failure_rate": cfg.max_failure_rate,
                "failures_by_reason": dict(sorted(by_reason.items())),
                "failures": [{"row": r, "path": plan.rel_paths[r], "reason": why} for r, why in failures],
                "score": {
                    "definition": "RMS distance of the five aligned points from the template, in px of the crop",
                    "median": float(np.median(score)) if len(score) else None,
                    "p95": float(np.percentile(score, 95)) if len(score) else None,
                    "max": float(score.max()) if len(score) else None,
                    "worst": [{"row": int(i), "path": plan.rel_paths[kept[i]], "score": float(score[i])}
                              for i in worst],
                },
                "n_chunks": len(plan.chunks),
                "chunk_size": cfg.chunk_size,
                "timings_s": {
                    # stage times summed over chunks, workers and jobs (CPU time, not wall time);
                    # merge = this gathering step's wall time
                    **{k: seconds[k] for k in ("read", "landmarks", "warp")},
                },
                "config": dataclasses.asdict(cfg),
                **(extra_qc or {}),
            }
            if rate > cfg.max_failure_rate:
                examples = "; ".join(f"{plan.rel_paths[r]}: {why}" for r, why in failures[:5])
                failed_qc = work / "qc_failed.json"
                failed_qc.write_text(json.dumps(qc, indent=2) + "\n")
                raise AlignmentError(
                    f"{desc}: {n_failed}/{n_total} images failed ({rate:.1%} > align.max_failure_rate "
                    f"{cfg.max_failure_rate:.1%}); by reason: {json.dumps(dict(by_reason))}; first: {examples}. "
                    f"Nothing was written to {out_dir}; the full QC is in {failed_qc}."
                )
            qc["timings_s"]["merge"] = time.perf_counter() - t_start
            writer.close(plan.manifest.iloc[kept], qc)
        except BaseException:
            writer.abort()
            raise
        # QC files next to qc.json: every failed file, a sheet of samples, a sheet of the worst scores.
        pd.DataFrame(
            {"row": [r for r, _ in failures], "path": [plan.rel_paths[r] for r, _ in failures],
             "reason": [w for _, w in failures]}
        ).to_csv(tmp / "failures.csv", index=False)
        if kept:
            images = np.load(tmp / "images.npy", mmap_mode="r")
            sample = np.unique(np.linspace(0, len(kept) - 1, n_show).round().astype(int)).tolist()
            contact_sheet(images, sample, tmp / "qc_samples.png")
            contact_sheet(images, worst, tmp / "qc_worst.png", captions=[f"{score[i]:.2f}" for i in worst])
            del images
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: kept %d/%d (%.2f%% failed) -> %s", desc, len(kept), n_total, 100 * rate, out_dir)
    return qc


def align_split(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    workers: int = 1,
    dataset: str | None = None,
    keep_work: bool = False,
) -> dict:
    """Align ``<raw_dir>/<split>.csv`` into the shard folder ``out_dir``; returns the qc dict.

    ``size`` is the crop size S (64 for pretraining, per task for evaluation). ``workers`` > 1 runs
    chunks in that many spawned processes (each builds its own backend; keep 1 for a GPU backend).
    ``dataset`` (default: the raw folder's name) selects ``align.detectors[dataset]``. Resumable:
    chunks finished by an interrupted run are reused (see :func:`align_chunks`). Raises
    :class:`AlignmentError` (and writes nothing) when the failure rate exceeds
    ``cfg.max_failure_rate``; an existing shard at ``out_dir`` is only replaced on success.
    """
    t = time.perf_counter()
    info = align_chunks(raw_dir, split, out_dir, cfg, size, workers=workers, dataset=dataset)
    wall = time.perf_counter() - t
    extra = {"workers": workers, "chunks_reused": len(info["reused"])}
    qc = merge_chunks(raw_dir, split, out_dir, cfg, size, dataset=dataset, keep_work=keep_work, extra_qc=extra)
    total = time.perf_counter() - t
    qc["timings_s"]["total"] = total
    qc["images_per_s"] = qc["n_total"] / total if total > 0 else None
    qc["timings_s"]["chunks_wall"] = wall
    qc_path = Path(out_dir) / "qc.json"
    tmp = qc_path.with_name(".qc.json.tmp")
    tmp.write_text(json.dumps(qc, indent=2) + "\n")
    os.replace(tmp, qc_path)
    return qc
