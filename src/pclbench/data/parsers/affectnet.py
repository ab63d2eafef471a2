"""AffectNet (Mollahosseini et al., 2017), manually annotated part -> stage 1.

Official layout (licence from the authors; accepted at ``<source>/`` or under the release's folders)::

    Manually_Annotated_file_lists/training.csv     (or <source>/training.csv)
    Manually_Annotated_file_lists/validation.csv   (or <source>/validation.csv)
    Manually_Annotated_Images/<subDirectory_filePath>   (or Manually_Annotated/Manually_Annotated_Images/)

CSV columns (AffectNet README): ``subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal``; ``facial_landmarks`` is ``x1;y1;x2;y2;...`` for the
68 iBUG points (automatically detected). Some copies of validation.csv lack the header row: a first
line whose first field is not ``subDirectory_filePath`` is read as data in the column order above.

Labels (AffectNet README): 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger,
7 Contempt, 8 None, 9 Uncertain, 10 No-Face. 8-10 are dropped (counted in meta.json). The eight
emotions are mapped to the stage-1 RAF-DB order with contempt appended as index 7 (:data:`TO_RAF`)::

    AffectNet  0 neutral 1 happy 2 sad 3 surprise 4 fear 5 disgust 6 anger 7 contempt
    stage 1    6         3       4     0          1      2         5       7

so a 7-class benchmark uses labels 0-6 (drop expression 7) and the 8-class one labels 0-7.
AffectNet's test set is not public: the official validation set (500 images per class) is the
``test`` split, as in the literature. Landmarks are written as ``.pts`` (treated as 0-based pixel
coordinates; the README gives no pixel convention). ``subject`` is -1 (no identities).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

import numpy as np

from ...io import atomic_dir
from . import PARSERS
from .stage1 import (EXPRESSIONS_8, Progress, SourceFormatError, check_splits, find_first, log, make_row,
                     place_image, save_pts, write_manifest, write_meta)

LAYOUT = """  <source>/Manually_Annotated_file_lists/training.csv, validation.csv   (or <source>/training.csv, ...)
     columns subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal
  <source>/Manually_Annotated_Images/<subDirectory_filePath>"""

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
AFFECTNET_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "none",
                   "uncertain", "no-face")
#: AffectNet label -> stage-1 label (RAF-DB order, contempt = 7)
TO_RAF = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5, 7: 7}
SPLITS = {"train": "training.csv", "test": "validation.csv"}


def read_csv(path: Path) -> list[tuple[int, str, int, np.ndarray | None]]:
    """-> [(line number, subDirectory_filePath, AffectNet label, landmarks (68, 2) or None)]."""
    out = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        first = True
        idx = {c: i for i, c in enumerate(COLUMNS)}
        for lineno, rec in enumerate(reader, 1):
            if not rec or not any(x.strip() for x in rec):
                continue
            if first:
                first = False
                if rec[0].strip() == "subDirectory_filePath":
                    missing = [c for c in ("subDirectory_filePath", "facial_landmarks", "expression")
                               if c not in [x.strip() for x in rec]]
                    if missing:
                        raise SourceFormatError(f"{path}:1: header lacks column(s) {missing}; "
                                                f"expected {','.join(COLUMNS)}")
                    idx = {c.strip(): i for i, c in enumerate(rec)}
                    continue
            try:
                rel = rec[idx["subDirectory_filePath"]].strip()
                label = int(float(rec[idx["expression"]]))
                lm_text = rec[idx["facial_landmarks"]].strip()
            except (IndexError, ValueError):
                raise SourceFormatError(f"{path}:{lineno}: cannot read path/expression/landmarks from {rec[:7]}; "
                                        f"expected columns {','.join(COLUMNS)}") from None
            if not 0 <= label <= 10:
                raise SourceFormatError(f"{path}:{lineno}: expression {label} outside AffectNet's 0-10")
            lm = None
            if lm_text:
                try:
                    vals = np.array([float(v) for v in lm_text.split(";") if v.strip()], dtype=np.float64)
                except ValueError:
                    vals = np.zeros(0)
                if vals.size == 136 and np.all(np.isfinite(vals)):
                    lm = vals.reshape(68, 2)
            out.append((lineno, rel, label, lm))
    return out


@PARSERS.register("affectnet")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "affectnet", tuple(SPLITS))
    source = Path(source)
    csvs = {s: find_first(source, [f"Manually_Annotated_file_lists/{f}", f, f"Manually_Annotated/{f}"],
                          f"AffectNet {f}", LAYOUT) for s, f in SPLITS.items()}
    img_root = find_first(source, ["Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"],
                          "AffectNet image folder", LAYOUT, kind="dir")
    dropped = {"label_none": 0, "label_uncertain": 0, "label_no_face": 0, "image_missing": 0,
               "no_landmarks": 0}
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with atomic_dir(out) as tmp:
        for split, path in csvs.items():
            items = read_csv(path)
            progress = Progress(len(items), f"prepare affectnet/{split}")
            for _, rel, label, lm in items:
                progress.update()
                if label >= 8:
                    dropped[("label_none", "label_uncertain", "label_no_face")[label - 8]] += 1
                    continue
                src = img_root / rel
                if not src.is_file():
                    dropped["image_missing"] += 1
                    continue
                dst_rel = f"images/{rel}"
                place_image(src, tmp / dst_rel)
                if lm is not None:
                    save_pts((tmp / dst_rel).with_suffix(".pts"), lm)
                else:
                    dropped["no_landmarks"] += 1  # kept; alignment falls back to its landmark backend
                rows[split].append(make_row(dst_rel, expression=TO_RAF[label]))
            progress.close()
            write_manifest(tmp, split, rows[split])
        counts = {s: len(r) for s, r in rows.items()}
        per_class = {s: {EXPRESSIONS_8[k]: sum(1 for r in rows[s] if r["expression"] == k) for k in range(8)}
                     for s in SPLITS}
        meta = write_meta(tmp, "affectnet", source, expressions=list(EXPRESSIONS_8),
                          label_mapping={f"{k} {AFFECTNET_NAMES[k]}": v for k, v in TO_RAF.items()},
                          label_mapping_note="AffectNet label -> stage-1 label (RAF-DB order, contempt = 7); "
                                             "labels 8-10 (none, uncertain, no-face) dropped",
                          split_sources={s: str(p) for s, p in csvs.items()},
                          test_split_note="the official validation set (the test set is not public)",
                          landmarks="AffectNet's automatic 68 points as .pts (assumed 0-based pixel coordinates)",
                          splits=counts, per_class=per_class, n_images=sum(counts.values()), dropped=dropped)
    if dropped["image_missing"]:
        log.warning("affectnet: %d listed images missing under %s", dropped["image_missing"], img_root)
    log.info("prepared affectnet: %s (dropped %s)", counts, dropped)
    return meta
