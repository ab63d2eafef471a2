"""Aligned uint8 shards: the Stage 2 file format of docs/architecture.md.

One shard = one folder ``data/aligned/<dataset>/<split>/`` holding

- ``images.npy``    uint8 ``(N, 3, S, S)``, a standard ``.npy`` so ``np.load(p, mmap_mode="r")``
  memory-maps it (training reads random rows without loading the split);
- ``manifest.csv``  the kept raw-manifest rows in shard order plus ``row`` = 0..N-1;
- ``landmarks.npy`` float32 ``(N, 68, 2)``, (x, y) in the crop's pixel coordinates
  (0-based, (0, 0) = centre of the top-left pixel);
- ``qc.json``       what the producer (``data/align.py``) reports: counts, failures, timings.

The images are streamed to disk: :class:`ShardWriter` writes the ``.npy`` header for the largest
possible N first, appends batches, and at the end rewrites the header with the real N (same header
length, padded with spaces as the ``.npy`` format allows) and truncates. So a split never has to fit
in memory, and a skipped image costs nothing.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from pclbench.core.io import atomic_dir

IMAGES = "images.npy"
LANDMARKS = "landmarks.npy"
MANIFEST = "manifest.csv"
QC = "qc.json"

N_LANDMARKS = 68
_NPY_MAGIC = b"\x93NUMPY\x01\x00"  # .npy format version 1.0
_NPY_ALIGN = 64  # numpy pads headers so the data starts 64-byte aligned (good for mmap)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, total_len: int | None = None) -> bytes:
    """A version-1.0 ``.npy`` header; padded to ``total_len`` bytes if given, else to 64 bytes."""
    d = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    prefix = len(_NPY_MAGIC) + 2  # magic+version, then uint16 header length
    min_len = prefix + len(d) + 1  # + the terminating newline
    if total_len is None:
        total_len = -(-min_len // _NPY_ALIGN) * _NPY_ALIGN
    if total_len < min_len or total_len - prefix > 0xFFFF:
        raise ValueError(f"cannot fit npy header {d!r} into {total_len} bytes")
    body = d + " " * (total_len - min_len) + "\n"
    return _NPY_MAGIC + struct.pack("<H", len(body)) + body.encode("latin1")


class _NpyAppender:
    """Append rows of a fixed item shape to a ``.npy`` file whose final length is found at the end."""

    def __init__(self, path: Path, dtype: np.dtype, item_shape: tuple[int, ...], capacity: int):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.item_shape = tuple(item_shape)
        self.capacity = int(capacity)
        self.n = 0
        # The capacity's shape string is the longest this header will ever need (n <= capacity).
        self._header = _npy_header((self.capacity, *self.item_shape), self.dtype)
        self._f = open(self.path, "wb")
        self._f.write(self._header)

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != self.item_shape:
            raise ValueError(f"{self.path.name}: expected rows of shape {self.item_shape}, got {rows.shape[1:]}")
        if rows.dtype != self.dtype:
            raise ValueError(f"{self.path.name}: expected dtype {self.dtype}, got {rows.dtype}")
        if self.n + len(rows) > self.capacity:
            raise ValueError(f"{self.path.name}: more than the announced {self.capacity} rows")
        self._f.write(np.ascontiguousarray(rows).tobytes())
        self.n += len(rows)

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(_npy_header((self.n, *self.item_shape), self.dtype, total_len=len(self._header)))
        self._f.truncate(len(self._header) + self.n * self.dtype.itemsize * int(np.prod(self.item_shape)))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


class ShardWriter:
    """Stream one shard into an existing folder (use :func:`pclbench.core.io.atomic_dir` around it).

    ``capacity`` is an upper bound on N (e.g. the raw split's size); ``append`` takes batches of
    crops ``(k, 3, S, S)`` uint8 and their landmarks ``(k, 68, 2)``; ``close(manifest)`` checks that
    the manifest has one row per crop, adds ``row`` and writes ``manifest.csv`` (and ``qc.json``).
    """

    def __init__(self, out_dir: str | os.PathLike, capacity: int, size: int):
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        self.out_dir = Path(out_dir)
        self.size = int(size)
        self._images = _NpyAppender(self.out_dir / IMAGES, np.uint8, (3, size, size), capacity)
        self._landmarks = _NpyAppender(self.out_dir / LANDMARKS, np.float32, (N_LANDMARKS, 2), capacity)

    @property
    def n(self) -> int:
        return self._images.n

    def append(self, images: np.ndarray, landmarks: np.ndarray) -> None:
        images = np.asarray(images)
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"images: expected (k, 3, {self.size}, {self.size}), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images: expected uint8, got {images.dtype}")
        if landmarks.shape != (len(images), N_LANDMARKS, 2):
            raise ValueError(f"landmarks: expected ({len(images)}, {N_LANDMARKS}, 2), got {landmarks.shape}")
        self._images.append(images)
        self._landmarks.append(landmarks)

    def close(self, manifest: pd.DataFrame, qc: Mapping[str, Any] | None = None) -> None:
        if len(manifest) != self.n:
            self.abort()
            raise ValueError(f"manifest has {len(manifest)} rows but {self.n} images were written")
        self._images.close()
        self._landmarks.close()
        manifest = manifest.reset_index(drop=True).copy()
        rows = np.arange(len(manifest), dtype=np.int64)
        if "row" in manifest.columns and not np.array_equal(manifest["row"].to_numpy(), rows):
            raise ValueError("manifest column 'row' exists but is not 0..N-1; drop it before writing")
        manifest["row"] = rows
        manifest.to_csv(self.out_dir / MANIFEST, index=False)
        if qc is not None:
            (self.out_dir / QC).write_text(json.dumps(qc, indent=2, sort_keys=False) + "\n")

    def abort(self) -> None:
        self._images.abort()
        self._landmarks.abort()


def write_shard(
    out_dir: str | os.PathLike,
    images: np.ndarray | Iterable[np.ndarray],
    manifest: pd.DataFrame,
    landmarks: np.ndarray,
    qc: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete shard atomically (an existing shard at ``out_dir`` is replaced on success).

    ``images``: ``(N, 3, S, S)`` uint8, or an iterable of such batches (streamed, never stacked);
    ``manifest``: N rows (``row`` is added); ``landmarks``: ``(N, 68, 2)`` crop coordinates.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    n = len(manifest)
    if landmarks.shape != (n, N_LANDMARKS, 2):
        raise ValueError(f"landmarks: expected ({n}, {N_LANDMARKS}, 2) for {n} manifest rows, got {landmarks.shape}")
    if isinstance(images, np.ndarray) and len(images) != n:
        raise ValueError(f"images has {len(images)} rows but the manifest has {n}")
    batches = [images] if isinstance(images, np.ndarray) else images
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        writer = None
        try:
            for batch in batches:
                batch = np.asarray(batch)
                if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
                    raise ValueError(f"images: expected batches of shape (k, 3, S, S), got {batch.shape}")
                if writer is None:
                    writer = ShardWriter(tmp, capacity=n, size=batch.shape[2])
                k0 = writer.n
                if k0 + len(batch) > n:
                    raise ValueError(f"images: more than the manifest's {n} rows")
                writer.append(batch, landmarks[k0 : k0 + len(batch)])
            if writer is None:
                raise ValueError("images: no image batch given; cannot infer the crop size")
            writer.close(manifest, qc)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return out_dir


@dataclass
class Shard:
    """An opened shard: ``images`` and ``landmarks`` are read-only memory maps (a reader that needs only
    one, e.g. the trainer's stream, loads nothing of the other), the rest is in memory."""

    path: Path
    images: np.ndarray  # (N, 3, S, S) uint8, memory-mapped
    manifest: pd.DataFrame  # N rows, column `row` = 0..N-1
    landmarks: np.ndarray  # (N, 68, 2) float32, crop pixel coordinates, memory-mapped
    qc: dict | None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The manifest of the shard ``path`` alone (no images or landmarks loaded: readers of cached
    features need only its rows), in shard order; its ``row`` column must exist and be unique."""
    man_path = Path(path) / MANIFEST
    if not man_path.is_file():
        raise FileNotFoundError(f"aligned manifest not found: {man_path} (run the align stage)")
    manifest = pd.read_csv(man_path)
    if "row" not in manifest.columns:
        raise KeyError(f"{man_path}: no column 'row'")
    if manifest["row"].duplicated().any():
        raise ValueError(f"{man_path}: column row has duplicates")
    return manifest


def open_shard(path: str | os.PathLike) -> Shard:
    """Open ``data/aligned/<dataset>/<split>/``; checks that the three files agree on N."""
    path = Path(path)
    for name in (IMAGES, LANDMARKS, MANIFEST):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a shard, missing {name}")
    images = np.load(path / IMAGES, mmap_mode="r")
    landmarks = np.load(path / LANDMARKS, mmap_mode="r")
    manifest = pd.read_csv(path / MANIFEST)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"{path / IMAGES}: expected uint8 (N, 3, S, S), got {images.dtype} {images.shape}")
    n = len(images)
    if landmarks.shape != (n, N_LANDMARKS, 2):
        raise ValueError(f"{path / LANDMARKS}: expected ({n}, {N_LANDMARKS}, 2), got {landmarks.shape}")
    if len(manifest) != n or "row" not in manifest.columns:
        raise ValueError(f"{path / MANIFEST}: expected {n} rows with a 'row' column, got {len(manifest)} rows")
    qc = json.loads((path / QC).read_text()) if (path / QC).is_file() else None
    return Shard(path=path, images=images, manifest=manifest, landmarks=landmarks, qc=qc)
