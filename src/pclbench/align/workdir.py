"""Resumable work folders of the align stage: ``<out>.parts/chunk-000000.npz`` ... then one merge into the shard.

A split is cut into chunks of ``align.chunk_size`` manifest rows. Each finished chunk is written
atomically (tmp + os.replace) to the work folder ``<out_dir>.parts/`` next to the shard, so a crash
loses at most the chunks in flight, and a rerun only computes the missing ones. ``align.parts`` > 1
splits the chunks into that many contiguous ranges, one cluster job each (``--part i``); the merge
concatenates every chunk in order, so the shard is byte-identical however the work was cut,
interrupted or resumed (qc.json differs only in its timings). ``work.json`` fingerprints what the
chunks depend on (manifest content, crop size, alignment settings, detector); a mismatch discards
the stale chunks instead of mixing them into a new shard.

Scatter: :func:`part_chunks` (the chunks of one job), :func:`save_chunk`; gather: :func:`gather_chunks`
streams every chunk, in order, into the shard writer (pclbench.align.shards).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pclbench.align.chunks import ChunkResult, Item
from pclbench.align.geometry import qc_scores
from pclbench.align.shards import ShardWriter
from pclbench.core.io import atomic_file, atomic_write_text

log = logging.getLogger(__name__)

WORK_FILE = "work.json"


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    """The resumable work folder of a shard: ``<out_dir>.parts`` (a sibling, never inside the shard)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.parts"


def chunk_path(work: Path, c: int) -> Path:
    """The file of chunk ``c`` in the work folder."""
    return work / f"chunk-{c:06d}.npz"


@dataclass
class Plan:
    """The work of one split: its raw manifest cut into chunks, and the fingerprint of what they depend on."""

    raw_dir: Path
    split: str
    dataset: str
    manifest: pd.DataFrame  # the raw manifest, every cell as text
    rel_paths: list[str]  # its `path` column
    chunks: list[list[Item]]  # chunk c = rows c * chunk_size ... (raw row, image path)
    fingerprint: dict[str, Any]  # written to work.json (prepare_work)


def read_manifest(raw_dir: Path, split: str) -> tuple[Path, pd.DataFrame]:
    """``<raw_dir>/<split>.csv`` -> ``(its path, the manifest with every cell as text)``, checked."""
    manifest_path = raw_dir / f"{split}.csv"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest of split {split!r} not found")
    # Read every cell as text so the shard's manifest.csv repeats the raw rows verbatim (no float
    # re-formatting, no "NA" -> NaN); readers parse both files the same way.
    try:
        manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        from pclbench.data.parsers.stage1 import SourceFormatError

        raise SourceFormatError(f"{manifest_path}: not a readable UTF-8 manifest CSV ({e})") from None
    if "path" not in manifest.columns:
        raise ValueError(f"{manifest_path}: no 'path' column (columns: {', '.join(map(str, manifest.columns))})")
    if len(manifest) == 0:
        raise ValueError(f"{manifest_path}: the manifest has no rows")
    if "row" in manifest.columns:
        raise ValueError(f"{manifest_path}: column 'row' is reserved for the aligned shard")
    return manifest_path, manifest


def manifest_chunks(raw_dir: Path, manifest_path: Path, rel_paths: list[str], chunk_size: int) -> list[list[Item]]:
    """The manifest's rows ``(row, raw_dir / path)`` cut into chunks of ``chunk_size``."""
    # The manifest is data: a row naming an absolute path or '..' is refused with its file:line (header =
    # line 1) before anything is read or written. The check is lexical only: the parsers never write links
    # into the raw folder (stage1.inside refuses links out of a release), while a DVC cache checked out as
    # symlinks (cache.type symlink) would legitimately point every image outside it. A link to a device is
    # still never opened (read_image: "not a regular file").
    from pclbench.data.parsers.stage1 import safe_relpath  # here: the parsers package imports every parser

    items = [(i, raw_dir / safe_relpath(p, where=f"{manifest_path}:{i + 2}")) for i, p in enumerate(rel_paths)]
    return [items[s : s + chunk_size] for s in range(0, len(items), chunk_size)]


def prepare_work(work: Path, fingerprint: dict[str, Any]) -> None:
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
    atomic_write_text(wf, text)


def input_key(items: Sequence[tuple[int, Path]]) -> str:
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


def chunk_is_current(path: Path, items: Sequence[tuple[int, Path]]) -> bool:
    """Whether the chunk file ``path`` exists and was made from ``items`` as they are now (:func:`input_key`)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:  # reads only the small `key` member
            return str(z["key"]) == input_key(items)
    except Exception:  # unreadable or older layout: recompute
        return False


def save_chunk(path: Path, res: ChunkResult, key: str) -> None:
    """Write one finished chunk (``key``: :func:`input_key` of its items); the file exists only once complete."""
    # temp removed on error (a full disk), a killed writer's by the next one (pclbench.core.io.atomic_file)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.asarray(key),
            kept=np.asarray(res.kept, dtype=np.int64),
            crops=res.crops,
            landmarks=res.landmarks.astype(np.float32),
            fail_rows=np.asarray([r for r, _ in res.failures], dtype=np.int64),
            fail_reasons=np.asarray([w for _, w in res.failures], dtype=str),
            seconds=np.asarray([res.seconds[k] for k in ("read", "landmarks", "warp")], dtype=np.float64),
            padding=res.padding.astype(np.float32),
            rejected=np.asarray(res.rejected, dtype=np.int64),
            rejected_crops=res.rejected_crops,
        )
        f.flush()
        os.fsync(f.fileno())


def load_chunk(path: Path, size: int) -> ChunkResult:
    """Read a chunk written by :func:`save_chunk` (crops of size ``size``)."""
    with np.load(path, allow_pickle=False) as z:
        crops = z["crops"]
        if crops.shape[1:] != (3, size, size):
            raise ValueError(f"{path}: crops of shape {crops.shape}, expected (k, 3, {size}, {size}); delete it")
        return ChunkResult(
            kept=z["kept"].tolist(),
            crops=crops,
            landmarks=z["landmarks"],
            failures=list(zip(z["fail_rows"].tolist(), z["fail_reasons"].tolist())),
            seconds=dict(zip(("read", "landmarks", "warp"), z["seconds"].tolist())),
            padding=z["padding"],
            rejected=z["rejected"].tolist(),
            rejected_crops=z["rejected_crops"],
        )


def part_chunks(n_chunks: int, part: int, parts: int) -> range:
    """The contiguous chunk indices of job ``part`` (0-based) out of ``parts``."""
    if not (parts >= 1 and 0 <= part < parts):
        raise ValueError(f"part must be in 0..{parts - 1}, got {part} (of {parts} parts)")
    return range(part * n_chunks // parts, (part + 1) * n_chunks // parts)


def check_chunks_done(work: Path, plan: Plan) -> None:
    """Raise ``FileNotFoundError`` unless every chunk of ``plan`` is in ``work``, made from its inputs."""
    wf = work / WORK_FILE
    if not wf.is_file() or json.loads(wf.read_text()) != json.loads(json.dumps(plan.fingerprint)):
        raise FileNotFoundError(
            f"{work}: no chunks made for these inputs and settings; run `pclbench align` (all parts) first"
        )
    missing = [c for c, items in enumerate(plan.chunks) if not chunk_is_current(chunk_path(work, c), items)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{work}: {len(missing)} of {len(plan.chunks)} chunk(s) not done (or their images changed since): "
            f"{shown}; run the `pclbench align --part` jobs again (finished chunks are kept)"
        )


@dataclass
class Gathered:
    """Every chunk's results in chunk order; the shard's faces are the rows ``kept``."""

    kept: list[int]  # raw-manifest rows of the shard's faces, in shard order
    failures: list[tuple[int, str]]  # (raw row, reason)
    seconds: Counter  # read / landmarks / warp seconds summed over chunks
    score: np.ndarray  # (n_kept,) QC score of each kept face (geometry.qc_scores); NaN without landmarks
    padding: np.ndarray  # (n_kept,) fraction of each kept crop outside its image
    rejected: list[int]  # raw rows of the QC-rejected crops shown on qc_worst.png (at most qc_samples)
    rejected_crops: list[np.ndarray]  # their crops, each (3, S, S) uint8

    @property
    def by_reason(self) -> Counter:
        """Failures per category (the part of a reason before the first colon), in order of appearance."""
        return Counter(reason.split(":")[0] for _, reason in self.failures)


def gather_chunks(work: Path, n_chunks: int, size: int, writer: ShardWriter, template: np.ndarray,
                  qc_samples: int) -> Gathered:
    """Append every chunk's crops and landmarks, in order, to ``writer``; collect the rest for the QC."""
    seconds: Counter = Counter({"read": 0.0, "landmarks": 0.0, "warp": 0.0})
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    scores: list[np.ndarray] = []
    paddings: list[np.ndarray] = []
    rejected: list[int] = []
    rejected_crops: list[np.ndarray] = []
    for c in range(n_chunks):
        res = load_chunk(chunk_path(work, c), size)
        writer.append(res.crops, res.landmarks)
        kept.extend(res.kept)
        failures.extend(res.failures)
        seconds.update(res.seconds)
        scores.append(qc_scores(res.landmarks, template))
        paddings.append(res.padding)
        room = qc_samples - len(rejected)
        rejected.extend(res.rejected[:room])
        rejected_crops.extend(res.rejected_crops[:room])
    score = np.concatenate(scores) if scores else np.zeros(0)
    padding = np.concatenate(paddings) if paddings else np.zeros(0)
    return Gathered(kept, failures, seconds, score, padding, rejected, rejected_crops)
