"""DISFA (Denver Intensity of Spontaneous Facial Action, Mavadati et al. 2013) -> stage 1.

Official layout (licence from http://mohammadmahoor.com/disfa/)::

    ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt   lines "<frame>,<intensity 0-5>", frame 1-based
    Videos_LeftCamera/LeftVideoSN001_comp.avi                  1024x768, 20 fps; frame k = the k-th decoded frame

Twelve AUs are coded: 1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26 (:data:`AUS`). All twelve intensities
are kept as manifest columns ``AU1 ... AU26`` (FACS 0-5); the benchmark's 8 AUs (1, 2, 4, 6, 9, 12,
25, 26) and occurrence = intensity >= 2 are the AU task's choice, not the parser's.

Frames: decoded from the left-camera videos with PyAV (every labelled frame, written as JPEG
quality 95: ``images/SN001/00001.jpg``; PNG would need ~1.5 MB per frame, ~200 GB for the set).
Alternatively the parser accepts frames you extracted yourself, which skips decoding:
``Frames_LeftCamera/SN001/<frame>.jpg`` (or ``.png``), where ``<frame>`` is the label files' 1-based
frame number, zero-padded or not. Frames without an image, or without a code in all twelve label
files, are dropped and counted in meta.json.

Folds: the 3 subject-exclusive folds used across the AU-detection literature (the partition
distributed with JAA-Net / ME-GraphAU, :data:`FOLDS`): fold 0 = SN002 SN010 SN001 SN026 SN027 SN032
SN030 SN009 SN016, fold 1 = SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024, fold 2 = SN003
SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004. ``clip`` is 0 (one video per subject), ``frame``
the 1-based label frame number.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from ...io import atomic_dir
from . import PARSERS
from .stage1 import (Progress, SourceFormatError, SourceLayoutError, au_column, check_splits, find_first, log,
                     make_row, place_image, write_manifest, write_meta)

LAYOUT = """  <source>/ActionUnit_Labels/SN001/SN001_au1.txt ... _au26.txt   lines "<frame>,<intensity>"
  <source>/Videos_LeftCamera/LeftVideoSN001_comp.avi
     (or pre-extracted frames <source>/Frames_LeftCamera/SN001/<frame>.jpg, frame = 1-based label number)"""

AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
BENCHMARK_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
FOLDS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
FOLD_OF = {s: k for k, subjects in enumerate(FOLDS) for s in subjects}
SPLITS = ("all",)
JPEG_QUALITY = 95


def read_au_file(path: Path) -> dict[int, int]:
    """``SNxxx_auK.txt`` -> {frame (1-based): intensity 0-5}."""
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            frame, value = int(parts[0]), int(float(parts[1]))
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise SourceFormatError(f"{path}:{i}: expected '<frame>,<intensity>', got {line!r}") from None
        if not 0 <= value <= 5:
            raise SourceFormatError(f"{path}:{i}: intensity {value} outside the FACS 0-5 scale")
        out[frame] = value
    if not out:
        raise SourceFormatError(f"{path}: no labels")
    return out


def read_subject_labels(label_dir: Path, subject: str) -> tuple[dict[int, dict[str, float]], int]:
    """All twelve AU files of one subject -> ({frame: {AUk: intensity}} for the frames coded in every
    file, number of frames coded in only some files)."""
    per_au = {}
    for au in AUS:
        path = label_dir / subject / f"{subject}_au{au}.txt"
        if not path.is_file():
            raise SourceLayoutError(f"DISFA label file {path} is missing; expected the official layout:\n{LAYOUT}")
        per_au[au] = read_au_file(path)
    frames = sorted(set.intersection(*(set(d) for d in per_au.values())))
    labels = {f: {au_column(au): float(per_au[au][f]) for au in AUS} for f in frames}
    return labels, len(set.union(*(set(d) for d in per_au.values()))) - len(frames)


def _frame_number(p: Path) -> int | None:
    m = re.fullmatch(r"\D*(\d+)", p.stem)
    return int(m.group(1)) if m else None


def _video_frames(video: Path, wanted: set[int]):
    """Yield (1-based frame number, RGB array) for the wanted frames, decoding sequentially."""
    import av

    with av.open(str(video)) as container:
        for k, frame in enumerate(container.decode(video=0), 1):
            if k in wanted:
                yield k, frame.to_ndarray(format="rgb24")
            if k >= max(wanted):
                break


@PARSERS.register("disfa")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "disfa", SPLITS)
    source = Path(source)
    label_dir = find_first(source, ["ActionUnit_Labels"], "DISFA ActionUnit_Labels folder", LAYOUT, kind="dir")
    subjects = sorted(p.name for p in label_dir.iterdir() if p.is_dir() and re.fullmatch(r"SN\d{3}", p.name))
    if not subjects:
        raise SourceLayoutError(f"no SNxxx subject folders in {label_dir}; expected the official layout:\n{LAYOUT}")
    unknown = [s for s in subjects if s not in FOLD_OF]
    if unknown:
        raise SourceFormatError(f"DISFA subjects {unknown} are not in the 3-fold partition {FOLDS}; "
                                "is this the DISFA release (27 subjects SN001-SN032)?")
    frames_root = source / "Frames_LeftCamera"
    video_root = source / "Videos_LeftCamera"
    if not frames_root.is_dir() and not video_root.is_dir():
        raise SourceLayoutError(f"neither {video_root} nor {frames_root} exists; "
                                f"expected the official layout:\n{LAYOUT}")
    rows: list[dict] = []
    dropped = {"frame_not_in_all_label_files": 0, "frame_without_image": 0}
    with atomic_dir(out) as tmp:
        for subject in subjects:
            labels, partial = read_subject_labels(label_dir, subject)
            dropped["frame_not_in_all_label_files"] += partial
            fold = FOLD_OF[subject]
            (tmp / "images" / subject).mkdir(parents=True)
            progress = Progress(len(labels), f"prepare disfa/{subject}")
            written = set()
            sub_frames = frames_root / subject
            if sub_frames.is_dir():
                files = {n: p for p in sub_frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                         and (n := _frame_number(p)) is not None}
                for f in labels:
                    if f in files:
                        rel = f"images/{subject}/{f:05d}{files[f].suffix.lower()}"
                        place_image(files[f], tmp / rel)
                        written.add((f, rel))
                    progress.update()
            else:
                videos = sorted(video_root.glob(f"*{subject}*.avi")) if video_root.is_dir() else []
                if not videos:
                    raise SourceLayoutError(f"no left-camera video for {subject} (looked for "
                                            f"{video_root}/*{subject}*.avi "
                                            f"and {sub_frames}/); expected the official layout:\n{LAYOUT}")
                for f, rgb in _video_frames(videos[0], set(labels)):
                    rel = f"images/{subject}/{f:05d}.jpg"
                    Image.fromarray(np.ascontiguousarray(rgb)).save(tmp / rel, quality=JPEG_QUALITY)
                    written.add((f, rel))
                    progress.update()
            progress.close()
            dropped["frame_without_image"] += len(labels) - len(written)
            for f, rel in sorted(written):
                rows.append(make_row(rel, subject=subject, clip=0, frame=f, fold=fold, aus=labels[f]))
        au_names = [au_column(a) for a in AUS]
        write_manifest(tmp, "all", rows, au_names)
        meta = write_meta(
            tmp, "disfa", source, aus=au_names, benchmark_aus=[au_column(a) for a in BENCHMARK_AUS],
            au_scale="FACS intensity 0-5 as coded by DISFA; occurrence = intensity >= 2",
            folds={k: list(s) for k, s in enumerate(FOLDS)},
            fold_source="3-fold subject partition of JAA-Net / ME-GraphAU (DISFA AU-detection literature)",
            frames="Frames_LeftCamera (pre-extracted)" if frames_root.is_dir() else "decoded from Videos_LeftCamera",
            splits={"all": len(rows)}, n_images=len(rows),
            counts={"subjects": len(subjects),
                    "per_fold": {k: sum(1 for r in rows if r["fold"] == k) for k in range(len(FOLDS))}},
            dropped=dropped)
    log.info("prepared disfa: %d frames of %d subjects (dropped %s)", len(rows), len(subjects), dropped)
    return meta
