"""BP4D-Spontaneous (Zhang et al. 2014), AU occurrence (FERA 2015 training partition layout) -> stage 1.

Official layout (licence from Binghamton University)::

    AUCoding/AU_OCC/<subject>_<task>.csv      (or AUCoding/<subject>_<task>.csv), e.g. F001_T1.csv
    BP4D-training/<subject>/<task>/<frame>.jpg   (or Sequences/<subject>/<task>/..., images/<subject>/<task>/...)

Occurrence CSV (as read by the FERA 2015 baseline and by ME-GraphAU, which index the columns by AU
number): the first row is a header whose cells are AU numbers (``1, 2, 4, ...``; "AU01" is accepted
too); the first column is the frame number, matching the frame image's numeric file name (zero
padding ignored). Codes: 0 absent, 1 present, 9 not coded.

The benchmark's 12 AUs (:data:`AUS` = 1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24) become manifest
columns. BP4D codes occurrence only, no intensity; stage-1 AU columns hold FACS intensities with
occurrence = intensity >= 2, so a present AU is written as 5 and an absent one as 0: every occurrence
threshold in (0, 5] gives back BP4D's labels exactly (meta.json says so). Frames with code 9 in any
of the 12 AUs, and coded frames without an image, are dropped and counted.

Folds: the 3 subject-exclusive folds of the AU-detection literature (JAA-Net / ME-GraphAU partition,
:data:`FOLDS`). ``clip`` = task number (T1 -> 1), ``frame`` = the CSV's frame number.

Frame numbering (the DISFA 0-vs-1 question, checked for BP4D): there is no base to choose. The CSV's
first column is the frame number of the release's own image file, not a position: F001_T1.csv starts
at frame 2440 (amogh112/deepFAU datasets.ipynb shows its frame column 2440..2992), and ME-GraphAU
builds the image path ``<subject>/<task>/<frame>.jpg`` straight from that column
(CVI-SZU/ME-GraphAU tool/BP4D_image_label_process.py; tool/README.md example
``data/BP4D/img/F001/T1/2440.jpg``). The parser therefore matches the CSV frame number to the image's
number (zero padding ignored) and never shifts it. Frames re-extracted from video by another tool
would not carry these numbers and are not a supported layout.

Untrusted input: CSVs and frame images come from folder listings; each must stay inside the release
(no symlink out of it, else an error), entries that are not regular files (FIFOs, devices) are
skipped and counted (``dropped.not_regular_file``), a frame coded twice with different codes, or two
images with the same frame number in one folder, are errors naming the files.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Mapping

from pclbench.core.io import atomic_dir
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (SourceFormatError, SourceLayoutError, au_column, check_splits, find_first, inside,
                     is_regular_file, log, make_row, place_image, write_manifest, write_meta, read_text, csv_records)

LAYOUT = """  <source>/AUCoding/AU_OCC/F001_T1.csv   (or <source>/AUCoding/F001_T1.csv): header row of AU numbers,
     first column = frame number, codes 0/1/9
  <source>/BP4D-training/F001/T1/<frame>.jpg   (or Sequences/F001/T1/..., images/F001/T1/...)"""

AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
FOLDS: tuple[tuple[str, ...], ...] = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
FOLD_OF = {s: k for k, subjects in enumerate(FOLDS) for s in subjects}
PRESENT = 5.0  # the intensity written for "present" (see the module docstring)
SPLITS = ("all",)
_NAME = re.compile(r"([FM]\d{3})_T(\d+)")


def _au_number(cell: str) -> int | None:
    m = re.fullmatch(r"\s*(?:AU)?0*(\d+)\s*", cell, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def read_occurrence(path: Path) -> tuple[dict[int, dict[str, float]], int]:
    """One AU_OCC CSV -> ({frame: {AUk: 0 or 5}} for frames coded for all 12 AUs, frames dropped for a 9)."""
    with io.StringIO(read_text(path), newline="") as fh:  # non-UTF-8: error with file:line
        reader = csv_records(csv.reader(fh), path)  # csv.Error -> file:line
        try:
            header = next(reader)
        except StopIteration:
            raise SourceFormatError(f"{path}: empty file; expected a header row of AU numbers") from None
        col = {}
        for j, cell in enumerate(header[1:], 1):
            n = _au_number(cell)
            if n is not None:
                col.setdefault(n, j)
        missing = [a for a in AUS if a not in col]
        if missing:
            raise SourceFormatError(f"{path}:1: header lacks AU column(s) {missing}; expected a header row of "
                                    f"AU numbers after the frame column, got {header[:8]}...")
        out, unknown, line_of = {}, 0, {}
        for i, rec in enumerate(reader, 2):
            if not rec or not any(x.strip() for x in rec):
                continue
            try:
                frame = int(float(rec[0]))
                codes = {a: int(float(rec[col[a]])) for a in AUS}
            except (ValueError, IndexError, OverflowError):  # OverflowError: int(float("inf"))
                raise SourceFormatError(f"{path}:{i}: cannot read frame and AU codes from {rec[:6]}...") from None
            bad = {a: c for a, c in codes.items() if c not in (0, 1, 9)}
            if bad:
                raise SourceFormatError(f"{path}:{i}: AU codes {bad} are not 0 (absent) / 1 (present) / 9 (unknown)")
            if frame in line_of:
                if codes != line_of[frame][1]:
                    raise SourceFormatError(f"{path}:{i}: frame {frame} is coded again with different codes "
                                            f"(first at line {line_of[frame][0]})")
                continue  # the same row twice: kept once
            line_of[frame] = (i, codes)
            if any(c == 9 for c in codes.values()):
                unknown += 1
                continue
            out[frame] = {au_column(a): PRESENT * c for a, c in codes.items()}
    return out, unknown


def _frame_index(folder: Path, root: Path, dropped: dict) -> dict[int, Path]:
    """{frame number: image} of one sequence folder; every file must stay inside ``root`` (the
    release); non-regular files are skipped and counted; a frame number used twice is an error."""
    out: dict[int, Path] = {}
    if folder.is_dir():
        inside(root, str(folder.relative_to(root)), where=str(folder))
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png") and (m := re.fullmatch(r"\D*(\d+)", p.stem)):
                inside(root, str(p.relative_to(root)), where=str(p))
                if not is_regular_file(p):
                    dropped["not_regular_file"] += 1  # a FIFO would block forever: never opened
                    log.warning("bp4d: %s is not a regular file (FIFO, device or dangling link); skipped", p)
                    continue
                n = int(m.group(1))
                if n in out:
                    raise SourceFormatError(f"{folder}: {out[n].name} and {p.name} are both frame {n}; keep one")
                out[n] = p
    return out


@PARSERS.register("bp4d")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "bp4d", SPLITS)
    source = Path(source)
    label_dir = find_first(source, ["AUCoding/AU_OCC", "AUCoding"], "BP4D AUCoding folder", LAYOUT, kind="dir")
    csvs = sorted(p for p in label_dir.glob("*.csv") if _NAME.fullmatch(p.stem))
    if not csvs:
        raise SourceLayoutError(f"no <subject>_<task>.csv files (e.g. F001_T1.csv) in {label_dir}; "
                                f"expected the official layout:\n{LAYOUT}")
    img_root = find_first(source, ["BP4D-training", "Sequences", "images"], "BP4D frame folder", LAYOUT, kind="dir")
    unknown_subjects = sorted({_NAME.fullmatch(p.stem).group(1) for p in csvs} - set(FOLD_OF))
    if unknown_subjects:
        raise SourceFormatError(f"BP4D subjects {unknown_subjects} are not in the 3-fold partition; "
                                "is this BP4D-Spontaneous (41 subjects F001-F023, M001-M018)?")
    rows: list[dict] = []
    dropped = {"au_not_coded_9": 0, "frame_without_image": 0, "not_regular_file": 0}
    with atomic_dir(out) as tmp:
        progress = Progress("prepare bp4d", len(csvs), unit="sequence", logger=log)
        for path in csvs:
            subject, task = _NAME.fullmatch(path.stem).groups()
            inside(label_dir, path.name, where=str(path))  # no symlink out of the release
            if not is_regular_file(path):  # a FIFO would block forever: never opened
                dropped["not_regular_file"] += 1
                log.warning("bp4d: %s is not a regular file (FIFO, device or dangling link); skipped", path)
                progress.update()
                continue
            labels, unknown = read_occurrence(path)
            dropped["au_not_coded_9"] += unknown
            frames = _frame_index(img_root / subject / f"T{task}", img_root, dropped)
            for f in sorted(labels):
                if f not in frames:
                    dropped["frame_without_image"] += 1
                    continue
                rel = f"images/{subject}/T{task}/{frames[f].name}"
                place_image(frames[f], tmp / rel, where=f"{path} frame {f}")
                rows.append(make_row(rel, subject=subject, clip=int(task), frame=f, fold=FOLD_OF[subject],
                                     aus=labels[f]))
            progress.update()
        progress.close()
        au_names = [au_column(a) for a in AUS]
        write_manifest(tmp, "all", rows, au_names)
        subjects = sorted({r["subject"] for r in rows})
        meta = write_meta(
            tmp, "bp4d", source, aus=au_names,
            au_scale="occurrence only (BP4D AU_OCC): 0 = absent, 5 = present; 5 is a code, not a measured "
                     "intensity: every occurrence threshold in (0, 5] gives back BP4D's labels",
            folds={k: list(s) for k, s in enumerate(FOLDS)},
            fold_source="3-fold subject partition of JAA-Net / ME-GraphAU (BP4D AU-detection literature)",
            label_folder=str(label_dir), image_folder=img_root.name, splits={"all": len(rows)}, n_images=len(rows),
            counts={"subjects": len(subjects), "sequences": len(csvs),
                    "per_fold": {k: sum(1 for r in rows if r["fold"] == k) for k in range(len(FOLDS))}},
            dropped=dropped)
    log.info("prepared bp4d: %d frames of %d subjects (dropped %s)", len(rows), len(subjects), dropped)
    return meta
