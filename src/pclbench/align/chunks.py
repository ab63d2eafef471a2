"""Aligning batches of images in parallel: read, landmark, QC and warp (docs/architecture.md, "Stage 2").

For every image of a batch (:class:`ChunkAligner`):

1. read it (RGB, pclbench.align.images.read_image) and get its 68 iBUG landmarks from a backend
   (pclbench.align.landmarks), ``align.batch_size`` images per backend call (one stacked FAN forward
   for the face_alignment backend), with the face detector chosen per dataset (``align.detectors``);
2. compute the crop transform by the dataset's crop mode (pclbench.align.geometry);
3. reject, with a named reason, crops whose landmarks lie far outside the image, whose scale is
   implausible, or that are mostly padding (``align.qc``, pclbench.align.rejection.crop_qc);
4. warp bilinearly into an ``S x S`` crop and move all 68 landmarks with the same transform.

Failures (unreadable file or not a regular file, no face, missing/malformed landmarks, backend
error, degenerate landmarks, and the QC rejections of step 3) are counted and skipped.
:func:`compute_chunks` runs the batches of the chunks to compute, optionally in ``workers`` spawned
processes, and hands each chunk to the caller as soon as all its batches are back.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from pclbench.align.geometry import BoxCrop, apply_affine, crop_transforms
from pclbench.align.images import FAIL_NOT_REGULAR, NotRegularFileError, read_image
from pclbench.align.landmarks import FAIL_BACKEND, FAIL_DEGENERATE, FAIL_UNREADABLE, LANDMARKERS, N_POINTS, BackendSettings
from pclbench.align.rejection import RejectThresholds, crop_qc
from pclbench.align.warp import warp_to_crop
from pclbench.core.progress import Progress
from pclbench.data.passthrough import AS_IS, as_is_result  # crop mode as_is: released aligned crops taken as they are

log = logging.getLogger(__name__)

Item = tuple[int, Path]  # (raw-manifest row, image path)


@dataclass
class CropJob:
    """One dataset's crop work, resolved from the ``align`` section by the stage (pclbench.align.aligner)."""

    size: int  # crop size S
    mode: str  # crop mode of the dataset: similarity | box | as_is (geometry.CROP_MODES)
    template: np.ndarray  # (5, 2) template points, crop pixel centres (geometry.canonical_template)
    points: str  # landmark points fitted to the template (only "five")
    box: BoxCrop  # the `box` crop (align.box)
    qc: RejectThresholds  # QC rejection thresholds (align.qc)
    qc_samples: int  # rejected crops kept per chunk for qc_worst.png
    batch_size: int  # images per landmark call
    backend: str  # the dataset's landmark backend (a name in LANDMARKERS)
    detector: str  # the dataset's face_alignment detector (read by that backend only)
    backend_settings: BackendSettings  # what the backend builder reads (the align section)


@dataclass
class ChunkResult:
    """The aligned faces and failures of a batch or chunk of manifest rows (saved per chunk by workdir)."""

    kept: list[int]  # raw-manifest row indices, in order
    crops: np.ndarray  # (k, 3, S, S) uint8
    landmarks: np.ndarray  # (k, 68, 2) float32, crop coordinates
    failures: list[tuple[int, str]]  # (raw row, reason)
    seconds: dict[str, float]
    padding: np.ndarray  # (k,) float32, fraction of each kept crop outside its image
    rejected: list[int]  # raw rows of QC-rejected crops kept for the QC sheet (at most qc_samples)
    rejected_crops: np.ndarray  # (r, 3, S, S) uint8, those crops as they would have been


def concat_results(results: Sequence[ChunkResult], size: int, max_rejected: int) -> ChunkResult:
    """Batches of one chunk, in order -> one result (at most ``max_rejected`` rejected crops)."""
    seconds: Counter = Counter()
    for r in results:
        seconds.update(r.seconds)
    rejected = [k for r in results for k in r.rejected][:max_rejected]
    return ChunkResult(
        kept=[k for r in results for k in r.kept],
        crops=np.concatenate([r.crops for r in results]) if results else np.zeros((0, 3, size, size), np.uint8),
        landmarks=np.concatenate([r.landmarks for r in results]) if results else np.zeros((0, N_POINTS, 2), np.float32),
        failures=sorted(f for r in results for f in r.failures),
        seconds={k: seconds[k] for k in ("read", "landmarks", "warp")},
        padding=np.concatenate([r.padding for r in results]) if results else np.zeros(0, np.float32),
        rejected=rejected,
        rejected_crops=(np.concatenate([r.rejected_crops for r in results])[: len(rejected)] if results
                        else np.zeros((0, 3, size, size), np.uint8)),
    )


def _display_crop(image: Image.Image, m: np.ndarray, size: int) -> np.ndarray:
    """A rejected crop for the QC sheet; mid-grey when even warping it fails (absurd transform)."""
    try:
        return warp_to_crop(image, m, size)
    except Exception:
        return np.full((3, size, size), 128, np.uint8)


class ChunkAligner:
    """Reads, landmarks and warps batches of images; one per process."""

    def __init__(self, job: CropJob):
        self.job = job
        builder = LANDMARKERS.get(job.backend)
        if job.mode == AS_IS:  # reads no landmarks (data/passthrough.py): no detector to load
            self.backend = None
        elif job.backend == "face_alignment":
            self.backend = builder(job.backend_settings, detector=job.detector)
        else:
            self.backend = builder(job.backend_settings)

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

    def __call__(self, chunk: list[Item]) -> ChunkResult:
        """One batch (at most ``batch_size`` images: one backend call)."""
        failures: list[tuple[int, str]] = []
        t0 = time.perf_counter()
        rows, paths, images = self._read(chunk, failures)
        arrays = [np.asarray(im) for im in images]  # (H, W, 3) uint8 RGB
        t1 = time.perf_counter()
        if self.job.mode == AS_IS:  # released aligned crops, resized only (data/passthrough.py)
            return ChunkResult(**as_is_result(rows, images, failures, self.job.size, t1 - t0))
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
        result = self._crops(good, rows, images, failures)
        result.seconds.update(read=t1 - t0, landmarks=t2 - t1, warp=time.perf_counter() - t2)
        result.failures.sort()
        return result

    @staticmethod
    def _read(chunk: list[Item], failures: list[tuple[int, str]]) -> tuple[list[int], list[Path], list[Image.Image]]:
        """Read the batch's images -> ``(rows, paths, images)`` of the readable ones; the others go to ``failures``."""
        rows, paths, images = [], [], []
        for row, path in chunk:
            try:
                images.append(read_image(path))
            except NotRegularFileError as e:
                failures.append((row, f"{FAIL_NOT_REGULAR}: {e}"))
                continue
            except Exception as e:
                failures.append((row, f"{FAIL_UNREADABLE}: {type(e).__name__}: {e}"))
                continue
            rows.append(row)
            paths.append(path)
        return rows, paths, images

    def _crops(self, good: list[tuple[int, np.ndarray]], rows: list[int], images: list[Image.Image],
               failures: list[tuple[int, str]]) -> ChunkResult:
        """Transform, QC and warp the faces ``good`` = ``[(j, landmarks (68, 2) of images[j])]``; the
        degenerate and QC-rejected ones go to ``failures``. ``seconds`` are left to the caller."""
        size = self.job.size
        crops = np.empty((len(good), 3, size, size), dtype=np.uint8)
        lms = np.empty((len(good), N_POINTS, 2), dtype=np.float32)
        pads = np.empty(len(good), dtype=np.float32)
        kept: list[int] = []
        rejected: list[int] = []
        rejected_crops: list[np.ndarray] = []
        if good:
            lm_src = np.stack([g[1] for g in good])  # (k, 68, 2)
            sizes = [images[j].size for j, _ in good]  # (width, height)
            m = crop_transforms(lm_src, sizes, size, self.job.mode, self.job.template, self.job.points,
                                self.job.box)  # (k, 2, 3)
            ok = np.all(np.isfinite(m), axis=(1, 2))
            ok[ok] = np.abs(np.linalg.det(m[ok, :, :2])) > 1e-12
            lm_crop = apply_affine(m, lm_src)
            degenerate = ("the five alignment points coincide" if self.job.mode == "similarity"
                          else "the landmarks' bounding box has no area")
            n = 0
            for (j, src_i), wh, m_i, ok_i, lm_i in zip(good, sizes, m, ok, lm_crop):
                if not ok_i:
                    failures.append((rows[j], f"{FAIL_DEGENERATE}: {degenerate}"))
                    continue
                reason, pad, _ = crop_qc(src_i, m_i, wh, size, self.job.qc)
                if reason is not None:
                    failures.append((rows[j], reason))
                    if len(rejected) < self.job.qc_samples:  # shown on qc_worst.png with the reason
                        rejected.append(rows[j])
                        rejected_crops.append(_display_crop(images[j], m_i, size))
                    continue
                crops[n] = warp_to_crop(images[j], m_i, size)
                lms[n] = lm_i
                pads[n] = pad
                kept.append(rows[j])
                n += 1
            crops, lms, pads = crops[:n], lms[:n], pads[:n]
        rej = np.stack(rejected_crops) if rejected_crops else np.zeros((0, 3, size, size), np.uint8)
        return ChunkResult(kept, crops, lms, failures, {"read": 0.0, "landmarks": 0.0, "warp": 0.0}, pads, rejected, rej)

    def chunk(self, items: list[tuple[int, Path]]) -> ChunkResult:
        """One resumable chunk (``chunk_size`` images) in batches of ``batch_size``."""
        bs = self.job.batch_size
        return concat_results([self(items[s : s + bs]) for s in range(0, len(items), bs)], self.job.size,
                               self.job.qc_samples)


_WORKER: ChunkAligner | None = None  # the ChunkAligner of this worker process
_WORKER_ERROR: BaseException | None = None  # why it could not be built (re-raised by every batch)


def _worker_init(job: CropJob) -> None:
    # Each worker is one core: keep torch/BLAS from oversubscribing (torch is imported after this).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = ChunkAligner(job)
    except Exception as e:  # raising here would make the Pool respawn workers forever
        _WORKER_ERROR = e


def _worker_run(batch: tuple[int, list[Item]]) -> tuple[int, ChunkResult]:
    """One batch ``(chunk index, items)`` -> ``(chunk index, result)``."""
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER is not None
    return batch[0], _WORKER(batch[1])


def compute_chunks(
    job: CropJob,
    chunks: Mapping[int, Sequence[Item]],
    workers: int,
    desc: str,
    save: Callable[[int, ChunkResult], None],
) -> None:
    """Align the chunks ``{index: items}`` (in that order); ``save(index, result)`` each finished one.

    ``workers`` > 1 runs the batches in that many spawned processes (each builds its own backend).
    """
    todo = list(chunks)
    n_todo = sum(len(chunks[c]) for c in todo)
    bs = job.batch_size
    # Worker processes take batches (not chunks), so a split of a single chunk still uses every
    # worker; a chunk is saved as soon as all its batches are back (imap keeps their order).
    batches = [(c, chunks[c][s : s + bs]) for c in todo for s in range(0, len(chunks[c]), bs)]
    n_batches = Counter(c for c, _ in batches)
    pool = None
    if workers > 1 and len(batches) > 1:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(batches)), _worker_init, (job,))
        results: Iterator[tuple[int, ChunkResult]] = pool.imap(_worker_run, batches)
    else:
        aligner = ChunkAligner(job)
        results = ((c, aligner.chunk(chunks[c])) for c in todo)
        n_batches = Counter({c: 1 for c in todo})
    pending: dict[int, list[ChunkResult]] = {}
    bar = Progress(desc, n_todo, unit="img", logger=log)
    try:
        for c, res in results:
            pending.setdefault(c, []).append(res)
            bar.update(len(res.kept) + len(res.failures))
            if len(pending[c]) == n_batches[c]:
                save(c, concat_results(pending.pop(c), job.size, job.qc_samples))
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
