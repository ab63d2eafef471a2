"""The align stage: raw dataset split (Stage 1) -> aligned uint8 shard (Stage 2), and its config section.

docs/architecture.md, "Stage 2". For every image of ``<raw_dir>/<split>.csv``: read it
(pclbench.align.images), get its 68 iBUG landmarks from a backend (pclbench.align.landmarks),
compute the crop transform by the dataset's crop mode (``align.crop`` / ``align.crops``;
pclbench.align.geometry: ``similarity`` to the ArcFace template, or the unrotated head-pose ``box``),
reject implausible crops with a named reason (``align.qc``, pclbench.align.rejection) and warp into an
``S x S`` crop (pclbench.align.warp); pclbench.align.chunks details the steps.

Failures (unreadable file or not a regular file, no face, missing/malformed landmarks, backend
error, degenerate landmarks, and the QC rejections) are counted and skipped; the split fails only
when the failure rate exceeds ``align.max_failure_rate``, and then nothing is written at the
destination.

At scale (issue "Alignment at scale"): a split is processed in resumable chunks of
``align.chunk_size`` images saved under ``<out>.parts/`` (:func:`align_chunks`, pclbench.align.workdir;
a crash loses only the chunks in flight), optionally as ``align.parts`` parallel jobs, then merged
into the shard (:func:`merge_chunks`) with its QC files (pclbench.align.qc). The landmark backend
sees ``align.batch_size`` images per call, with the face detector chosen per dataset
(``align.detectors``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pclbench.align.chunks import ChunkResult, CropJob, compute_chunks
from pclbench.align.geometry import BOX_SHAPES, CROP_MODES, canonical_template
from pclbench.align.landmarks import (
    FAN_DETECTORS,
    LANDMARKERS,
    DlibOptions,
    FaceAlignmentOptions,
    GroundTruthOptions,
)
from pclbench.align.qc import qc_report, write_qc_files
from pclbench.align.shards import ShardWriter
from pclbench.align.workdir import (
    Gathered,
    Plan,
    check_chunks_done,
    chunk_is_current,
    chunk_path,
    gather_chunks,
    input_key,
    manifest_chunks,
    part_chunks,
    prepare_work,
    read_manifest,
    save_chunk,
    work_dir_for,
)
from pclbench.core.config import ConfigError, setting
from pclbench.core.io import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)


class AlignmentError(RuntimeError):
    """The split cannot be aligned (e.g. too many failures); nothing was written."""


@dataclass
class BoxCropOptions:
    """The unrotated head-pose crop: crop mode ``box`` (pclbench.align.geometry.box_transform)."""

    # 0.6 on every side = FSA-Net's type-1 crops (`--ad 0.6`), the crops PCL's released head-pose loader reads.
    margin: list[float] = setting(
        "[left, top, right, bottom] enlargement of the landmark box, fractions of its width/height",
        items={"type": "number", "minimum": 0, "maximum": 5}, minItems=4, maxItems=4)
    shape: str = setting("square (longer side, padded) | center_crop (shorter side) | stretch (clipped, aspect not "
                         "kept; FSA-Net): how the enlarged box becomes an S x S crop", choices=BOX_SHAPES)


@dataclass
class AlignQCOptions:
    """QC rejection thresholds of alignment (pclbench.align.rejection.crop_qc; a rejected image counts as a failure)."""

    max_outside: float = setting("reject landmarks beyond the image edge by more than this many face sizes",
                                 minimum=0)
    min_scale: float = setting("reject crops below this many crop px per image px", exclusiveMinimum=0)
    max_scale: float = setting("reject crops above this many crop px per image px (a face of a few px blown up)",
                               exclusiveMinimum=0)
    max_padding: float = setting("reject crops with more than this fraction of their pixels outside the image",
                                 minimum=0, maximum=1)

    def __post_init__(self) -> None:
        """Cross-field constraint (no JSON-schema keyword compares two keys): min_scale < max_scale."""
        if not self.min_scale < self.max_scale:
            raise ConfigError(f"align.qc: need 0 < min_scale < max_scale, got {self.min_scale!r}, {self.max_scale!r}")


@dataclass
class AlignConfig:
    """Landmark-based face alignment into uint8 shards (pclbench.align.aligner)."""

    backend: str = setting("source of the 68 iBUG landmarks", choices=LANDMARKERS)
    backends: dict[str, str] = setting("dataset name -> landmark backend for that dataset (else `backend`)",
                                       choices=LANDMARKERS)
    points: Literal["five"] = setting("landmark points fitted to the canonical template (ArcFace five points)")
    crop_scale: float = setting("face size relative to the tight 112 px ArcFace crop (< 1 keeps more context)",
                                exclusiveMinimum=0, maximum=4)
    shift_y: float = setting("downward shift of the template, in crop heights (> 0: face lower in the crop)",
                             exclusiveMinimum=-0.5, exclusiveMaximum=0.5)
    max_failure_rate: float = setting("the split fails (nothing written) above this fraction of failed images",
                                      minimum=0, maximum=1)
    batch_size: int = setting("images per landmark call and FAN forward pass", minimum=1)
    chunk_size: int = setting("images per resumable chunk file (and per worker task)", minimum=1)
    parts: int = setting("parallel cluster jobs per split (Snakemake scatter/gather); 1 = one job", minimum=1)
    qc_samples: int = setting("faces per QC contact sheet (samples and worst-scoring)", minimum=1)
    device: str = setting("torch device of the face_alignment backend", pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")
    detectors: dict[str, str] = setting("dataset name -> face_alignment detector for that dataset "
                                        "(else face_alignment.detector)", choices=FAN_DETECTORS)
    groundtruth: GroundTruthOptions = setting("landmarks from the .pts file next to each image")
    dlib: DlibOptions = setting("HOG frontal face detector + 68-point shape predictor")
    face_alignment: FaceAlignmentOptions = setting("FAN 2D landmarks from the face-alignment package")
    crop: str = setting("default crop mode (similarity = five-point template fit, levels roll; box = unrotated "
                        "landmark box; as_is = released square aligned crops, resized only)", choices=CROP_MODES)
    crops: dict[str, str] = setting("dataset name -> crop mode for that dataset (else `crop`); head-pose datasets "
                                    "use box", choices=CROP_MODES)
    box: BoxCropOptions = setting("the unrotated head-pose crop (pclbench.align.geometry.box_transform)")
    qc: AlignQCOptions = setting("QC rejection thresholds of alignment (a rejected image counts as a failure)")

    def backend_for(self, dataset: str | None) -> str:
        """The landmark backend of ``dataset``: ``align.backends[dataset]``, else ``align.backend``."""
        return self.backends.get(dataset or "", self.backend)

    def detector_for(self, dataset: str | None) -> str:
        """The face_alignment detector of ``dataset``: ``align.detectors[dataset]``, else the default."""
        return self.detectors.get(dataset or "", self.face_alignment.detector)

    def crop_for(self, dataset: str | None) -> str:
        """The crop mode of ``dataset``: ``align.crops[dataset]``, else ``align.crop``."""
        return self.crops.get(dataset or "", self.crop)


# --------------------------------------------------------------------------------------------------
# The stage: scatter jobs (align_chunks), the gather job (merge_chunks), or both (align_split)
# --------------------------------------------------------------------------------------------------


def _plan(raw_dir: Path, split: str, cfg: AlignConfig, size: int, dataset: str | None) -> Plan:
    """The chunks of ``<raw_dir>/<split>.csv`` and the fingerprint of what they depend on (work.json)."""
    if size < 8:
        raise ValueError(f"crop size must be >= 8 px, got {size}")
    manifest_path, manifest = read_manifest(raw_dir, split)
    dataset = dataset or raw_dir.name
    rel_paths = manifest["path"].tolist()
    chunks = manifest_chunks(raw_dir, manifest_path, rel_paths, cfg.chunk_size)
    settings = dataclasses.asdict(cfg)
    # do not change chunks (the dataset's own backend / detector / crop mode are in the fingerprint below)
    for k in ("parts", "max_failure_rate", "qc_samples", "batch_size", "detectors", "backend", "backends",
              "crop", "crops", "box"):
        settings.pop(k)
    mode = cfg.crop_for(dataset)
    fingerprint = {
        "raw_dir": str(raw_dir.resolve()),
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "split": split,
        "size": size,
        "backend": cfg.backend_for(dataset),
        "detector": cfg.detector_for(dataset) if cfg.backend_for(dataset) == "face_alignment" else None,
        "crop": mode,
        "box": dataclasses.asdict(cfg.box) if mode == "box" else None,
        "settings": settings,
    }
    return Plan(raw_dir, split, dataset, manifest, rel_paths, chunks, fingerprint)


def _crop_job(cfg: AlignConfig, size: int, dataset: str) -> CropJob:
    """What the chunk workers need of ``cfg`` for ``dataset``: its crop mode, backend and detector."""
    return CropJob(size=size, mode=cfg.crop_for(dataset), template=canonical_template(size, cfg.crop_scale, cfg.shift_y),
                   points=cfg.points, box=cfg.box, qc=cfg.qc, qc_samples=cfg.qc_samples, batch_size=cfg.batch_size,
                   backend=cfg.backend_for(dataset), detector=cfg.detector_for(dataset), backend_settings=cfg)


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
    prepare_work(work, plan.fingerprint)
    mine = list(part_chunks(len(plan.chunks), part, parts))
    todo = [c for c in mine if not chunk_is_current(chunk_path(work, c), plan.chunks[c])]
    reused = [c for c in mine if c not in todo]
    if reused:
        log.info("%s/%s: %d of %d chunk(s) already done in %s", plan.dataset, split, len(reused), len(mine), work)
    desc = f"align {plan.dataset}/{split}" + (f" part {part + 1}/{parts}" if parts > 1 else "")
    if todo:
        def save(c: int, res: ChunkResult) -> None:  # a chunk file exists only once complete (tmp + os.replace)
            save_chunk(chunk_path(work, c), res, input_key(plan.chunks[c]))

        compute_chunks(_crop_job(cfg, size, plan.dataset), {c: plan.chunks[c] for c in todo}, workers, desc, save)
    return {"n_chunks": len(plan.chunks), "chunks": mine, "computed": todo, "reused": reused}


def _too_many_failures(desc: str, plan: Plan, g: Gathered, qc: dict, work: Path, out_dir: Path) -> AlignmentError:
    """Write the QC to ``<work>/qc_failed.json``; the error saying why the split failed."""
    examples = "; ".join(f"{plan.rel_paths[r]}: {why}" for r, why in g.failures[:5])
    failed_qc = work / "qc_failed.json"
    atomic_write_text(failed_qc, json.dumps(qc, indent=2) + "\n")
    return AlignmentError(
        f"{desc}: {qc['n_failed']}/{qc['n_total']} images failed ({qc['failure_rate']:.1%} > align.max_failure_rate "
        f"{qc['max_failure_rate']:.1%}); by reason: {json.dumps(dict(g.by_reason))}; first: {examples}. "
        f"Nothing was written to {out_dir}; the full QC is in {failed_qc}."
    )


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
    check_chunks_done(work, plan)
    template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
    desc = f"align {plan.dataset}/{split}"
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, capacity=len(plan.rel_paths), size=size)
        try:
            g = gather_chunks(work, len(plan.chunks), size, writer, template, cfg.qc_samples)
            qc = qc_report(plan, g, size, template, points=cfg.points, qc_samples=cfg.qc_samples,
                           max_failure_rate=cfg.max_failure_rate, chunk_size=cfg.chunk_size,
                           config=dataclasses.asdict(cfg), extra=extra_qc)
            if qc["failure_rate"] > cfg.max_failure_rate:
                raise _too_many_failures(desc, plan, g, qc, work, out_dir)
            qc["timings_s"]["merge"] = time.perf_counter() - t_start
            writer.close(plan.manifest.iloc[g.kept], qc)
        except BaseException:
            writer.abort()
            raise
        write_qc_files(tmp, plan.rel_paths, g, cfg.qc_samples)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: kept %d/%d (%.2f%% failed) -> %s", desc, qc["n_kept"], qc["n_total"], 100 * qc["failure_rate"],
             out_dir)
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
    atomic_write_text(qc_path, json.dumps(qc, indent=2) + "\n")
    return qc
