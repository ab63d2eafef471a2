"""AffectNet (Mollahosseini et al., 2017), manually annotated part -> stage 1.

Two releases are in circulation; the parser finds out which one is in ``<source>/`` (config
``datasets.affectnet.release: auto``; ``csv`` / ``npy`` pick one, needed only when both are there)
and says which in ``meta.json`` (``release``).

**csv release** (the original one; licence from the authors; accepted at ``<source>/`` or under the
release's folders)::

    Manually_Annotated_file_lists/training.csv     (or <source>/training.csv)
    Manually_Annotated_file_lists/validation.csv   (or <source>/validation.csv)
    Manually_Annotated_Images/<subDirectory_filePath>   (or Manually_Annotated/Manually_Annotated_Images/)

CSV columns (AffectNet README): ``subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal``; ``facial_landmarks`` is ``x1;y1;x2;y2;...`` for the
68 iBUG points (automatically detected). Some copies of validation.csv lack the header row: a first
line whose first field is not ``subDirectory_filePath`` is read as data in the column order above.

**npy release** (the newer "AffectNet8" distribution of cropped faces)::

    train_set/images/<n>.jpg   train_set/annotations/<n>_exp.npy, <n>_val.npy, <n>_aro.npy, <n>_lnd.npy
    val_set/images/<n>.jpg     val_set/annotations/<n>_{exp,val,aro,lnd}.npy

Facts used, from public code that reads this release:

* layout, counts and dtypes: armand-07/emotion_recognition, notebooks/data_exploration_raw_AffectNet.ipynb
  (287,651 train / 3,999 val images, four annotation files per image id; ``exp``, ``val``, ``aro``
  hold one value stored as a numpy unicode string (dtype ``<U..``), ``exp`` in 0-7; ``lnd`` holds 136
  floats, "68 points with successive x and y coordinates"; it quotes the release README: "0: Neutral,
  1: Happy, 2: Sad, 3: Surprise, 4: Fear, 5: Disgust, 6: Anger, 7: Contempt");
* x, y interleaved and in the pixel frame of the released image: pablotanner/emotion-recognition,
  src/util/visualize_landmarks.py plots ``np.load(<n>_lnd.npy).reshape(-1, 2)`` (rows = points,
  columns = x, y) directly over ``images/<n>.jpg``. (Other public loaders found by content search,
  whose repositories the search did not name, agree: they read ``int(np.load(<n>_exp.npy))`` with the
  same 0-7 order and name the ``lnd`` values ``lnd_<k>_x, lnd_<k>_y`` in alternation.)

So ``.pts`` files are written from ``lnd`` (reshaped to (68, 2), 0-based pixel coordinates: no
release states a pixel-centre convention, the same assumption as for the csv release). ``exp`` is
accepted as a unicode string or a number; ``.npy`` files are loaded with ``allow_pickle=False``
(they come from outside). Image ids come from the ``images/`` folder listing; an image without an
``_exp.npy`` is dropped (``annotation_missing``), an ``_exp.npy`` without an image likewise
(``image_missing``).

Labels (both releases): 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger,
7 Contempt, 8 None, 9 Uncertain, 10 No-Face (8-10 only in the csv release). 8-10 are dropped (counted
in meta.json). The eight emotions are mapped to the stage-1 RAF-DB order with contempt appended as
index 7 (:data:`TO_RAF`)::

    AffectNet  0 neutral 1 happy 2 sad 3 surprise 4 fear 5 disgust 6 anger 7 contempt
    stage 1    6         3       4     0          1      2         5       7

so a 7-class benchmark uses labels 0-6 (drop expression 7) and the 8-class one labels 0-7.
AffectNet's test set is not public: the official validation set (validation.csv / val_set) is the
``test`` split, as in the literature. ``subject`` is -1 (no identities).

Untrusted input. A ``subDirectory_filePath`` is a file name read from data: it must stay inside the
image folder (no absolute path, no ``..``, no symlink out of the release) or the run stops with an
error naming ``file:line``; nothing is written outside the output folder and nothing is ever
overwritten. An image listed twice (in one CSV, or in both) is de-duplicated when the rows agree on
the expression: the first row wins (training.csv before validation.csv, so an image in both stays in
``train`` only) and every further row is counted in ``meta.json`` (``dropped.duplicate_rows``,
``duplicate_examples``). Rows that disagree on the expression are an error naming both lines.
Entries that are not regular files (FIFOs, devices) are skipped with a reason
(``dropped.not_regular_file``) instead of being opened.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import numpy as np

from pclbench.core.io import atomic_dir
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (EXPRESSIONS_8, SourceFormatError, SourceLayoutError, check_splits, find_first,
                     inside, is_regular_file, log, make_row, place_image, safe_relpath, save_pts, write_manifest,
                     write_meta, read_text, csv_records)

LAYOUT = """  csv release:
  <source>/Manually_Annotated_file_lists/training.csv, validation.csv   (or <source>/training.csv, ...)
     columns subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal
  <source>/Manually_Annotated_Images/<subDirectory_filePath>
  npy release:
  <source>/train_set/images/<n>.jpg + <source>/train_set/annotations/<n>_exp.npy (+ _lnd.npy, _val.npy, _aro.npy)
  <source>/val_set/images/<n>.jpg   + <source>/val_set/annotations/<n>_exp.npy ..."""

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
AFFECTNET_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "none",
                   "uncertain", "no-face")
#: AffectNet label -> stage-1 label (RAF-DB order, contempt = 7)
TO_RAF = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5, 7: 7}
SPLITS = {"train": "training.csv", "test": "validation.csv"}
#: npy release: stage-1 split -> release folder
NPY_SPLITS = {"train": "train_set", "test": "val_set"}
RELEASES = ("auto", "csv", "npy")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
N_LANDMARKS = 68

_CSV_CANDIDATES = {f: [f"Manually_Annotated_file_lists/{f}", f, f"Manually_Annotated/{f}"] for f in SPLITS.values()}
_IMG_CANDIDATES = ["Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"]


class Item(NamedTuple):
    """One labelled image of either release."""

    where: str               # "file:line" (csv) or the _exp.npy path (npy), for error messages
    key: str                 # de-duplication key: the image's path relative to its image folder
    src: Path                # the release's image (already checked to stay inside the release)
    dst_rel: str             # output path relative to the output folder
    label: int               # AffectNet label 0-10
    landmarks: np.ndarray | None  # (68, 2) x, y or None


def read_csv(path: Path) -> list[tuple[int, str, int, np.ndarray | None]]:
    """-> [(line number, subDirectory_filePath, AffectNet label, landmarks (68, 2) or None)]."""
    out = []
    with io.StringIO(read_text(path), newline="") as fh:  # non-UTF-8: error with file:line
        reader = csv_records(csv.reader(fh), path)  # csv.Error -> file:line
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
            except (IndexError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
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
                if vals.size == 2 * N_LANDMARKS and np.all(np.isfinite(vals)):
                    lm = vals.reshape(N_LANDMARKS, 2)  # (68, 2) from x1;y1;x2;y2;...
            out.append((lineno, rel, label, lm))
    return out


def _load_npy(path: Path) -> np.ndarray:
    """np.load of an annotation file from the release: plain arrays only (no pickles)."""
    if not is_regular_file(path):
        raise SourceFormatError(f"{path}: not a regular file (a FIFO or a device?)")
    try:
        # Memory-mapped first: a header promising more data than the file holds fails here instead of
        # allocating the promised size (np.load would try, e.g. 8 TB for shape (10**12,)).
        return np.array(np.load(path, allow_pickle=False, mmap_mode="r"))
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise SourceFormatError(f"{path}: not a readable .npy array ({e})") from None


def read_npy_label(path: Path) -> int:
    """``<n>_exp.npy`` -> AffectNet label. The release stores one value as a unicode string (``'3'``);
    a numeric array holding an integral value is accepted too."""
    arr = _load_npy(path)
    if arr.size != 1:
        raise SourceFormatError(f"{path}: expected one expression code, got an array of shape {arr.shape}")
    v = arr.reshape(-1)[0]
    if arr.dtype.kind in "US":
        text = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
        if not re.fullmatch(r"\s*\d+\s*", text):
            raise SourceFormatError(f"{path}: expression {text!r} is not an integer")
        label = int(text)
    elif arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and float(v).is_integer()):
        label = int(v)
    else:
        raise SourceFormatError(f"{path}: expression {v!r} (dtype {arr.dtype}) is not an integer code")
    if not 0 <= label <= 10:
        raise SourceFormatError(f"{path}: expression {label} outside AffectNet's 0-10")
    return label


def read_npy_landmarks(path: Path) -> np.ndarray | None:
    """``<n>_lnd.npy`` (136 values, x and y interleaved) -> (68, 2), or None when absent / malformed."""
    if not os.path.lexists(path):
        return None
    try:
        vals = np.asarray(_load_npy(path), dtype=np.float64).reshape(-1)
    except (SourceFormatError, ValueError):
        return None
    if vals.size != 2 * N_LANDMARKS or not np.all(np.isfinite(vals)):
        return None
    return vals.reshape(N_LANDMARKS, 2)  # (68, 2)


def detect_release(source: Path, choice: str = "auto") -> str:
    """Which release is in ``source``: ``csv`` or ``npy`` (``choice`` forces one)."""
    if choice not in RELEASES:
        raise ValueError(f"datasets.affectnet.release is {choice!r}; expected one of {list(RELEASES)}")
    source = Path(source)
    has_csv = any((source / c).is_file() for c in _CSV_CANDIDATES["training.csv"])
    has_npy = all((source / d / "annotations").is_dir() and (source / d / "images").is_dir()
                  for d in NPY_SPLITS.values())
    if choice != "auto":
        return choice
    if has_csv and has_npy:
        raise SourceLayoutError(f"{source} holds both AffectNet releases (Manually_Annotated_file_lists csv and "
                                "train_set/val_set npy); set datasets.affectnet.release: csv or npy")
    if has_npy:
        return "npy"
    return "csv"  # also when nothing is there: find_first then names the csv files it looked for


def _csv_items(source: Path, dropped: dict) -> tuple[dict[str, list[Item]], dict]:
    csvs = {s: find_first(source, _CSV_CANDIDATES[f], f"AffectNet {f}", LAYOUT) for s, f in SPLITS.items()}
    img_root = find_first(source, _IMG_CANDIDATES, "AffectNet image folder", LAYOUT, kind="dir")
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for split, path in csvs.items():
        for lineno, rel, label, lm in read_csv(path):
            where = f"{path}:{lineno}"
            src = inside(img_root, rel, where=where)  # refuses absolute / '..' / symlinks out of the release
            key = safe_relpath(rel, where=where)
            items[split].append(Item(where, key, src, f"images/{key}", label, lm))
    return items, {"image_folder": str(img_root), "split_sources": {s: str(p) for s, p in csvs.items()}}


def _npy_image_files(images: Path) -> Iterator[Path]:
    def order(p: Path):
        return (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name)

    return iter(sorted((p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=order))


def _npy_items(source: Path, dropped: dict) -> tuple[dict[str, list[Item]], dict]:
    items: dict[str, list[Item]] = {s: [] for s in NPY_SPLITS}
    for split, folder in NPY_SPLITS.items():
        images = find_first(source, [f"{folder}/images"], f"AffectNet {folder}/images", LAYOUT, kind="dir")
        ann = find_first(source, [f"{folder}/annotations"], f"AffectNet {folder}/annotations", LAYOUT, kind="dir")
        seen: dict[str, Path] = {}
        for img in _npy_image_files(images):
            src = inside(images, img.name, where=str(img))  # a symlink out of the release is refused
            if img.stem in seen:
                raise SourceFormatError(f"{img}: image id {img.stem!r} appears twice ({seen[img.stem].name} and "
                                        f"{img.name}); one id, one image")
            seen[img.stem] = img
            exp = inside(ann, f"{img.stem}_exp.npy", where=str(img))
            if not os.path.lexists(exp):
                dropped["annotation_missing"] += 1
                continue
            if not is_regular_file(exp):
                dropped["not_regular_file"] += 1  # never opened: a FIFO would block forever
                log.warning("affectnet: %s is not a regular file (FIFO, device or dangling link); skipped", exp)
                continue
            label = read_npy_label(exp)
            lm = read_npy_landmarks(inside(ann, f"{img.stem}_lnd.npy", where=str(img)))
            key = f"{folder}/{img.name}"
            items[split].append(Item(str(exp), key, src, f"images/{key}", label, lm))
        # annotations whose image is not there
        dropped["image_missing"] += sum(1 for p in ann.glob("*_exp.npy") if p.name[: -len("_exp.npy")] not in seen)
    return items, {"image_folders": {s: f"{f}/images" for s, f in NPY_SPLITS.items()}}


@PARSERS.register("affectnet")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "affectnet", tuple(SPLITS))
    source = Path(source)
    release = detect_release(source, str(entry.get("release", "auto")))
    dropped = {"label_none": 0, "label_uncertain": 0, "label_no_face": 0, "image_missing": 0,
               "annotation_missing": 0, "not_regular_file": 0, "duplicate_rows": 0, "no_landmarks": 0}
    if release == "csv":
        items, where_from = _csv_items(source, dropped)
    else:
        items, where_from = _npy_items(source, dropped)
    first: dict[str, Item] = {}  # de-duplication key -> first row naming that image
    duplicates: list[str] = []
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            progress = Progress(f"prepare affectnet/{split}", len(items[split]), unit="img", logger=log)
            for it in items[split]:
                progress.update()
                prev = first.get(it.key)
                if prev is not None:
                    if prev.label != it.label:
                        raise SourceFormatError(
                            f"{it.where}: {it.key!r} is listed again with expression {it.label} "
                            f"({AFFECTNET_NAMES[it.label]}), but {prev.where} gives {prev.label} "
                            f"({AFFECTNET_NAMES[prev.label]}); one image cannot have two labels: fix one of the rows")
                    dropped["duplicate_rows"] += 1  # same image, same label: keep the first row only
                    duplicates.append(f"{it.where} (first listed at {prev.where})")
                    continue
                first[it.key] = it
                if it.label >= 8:
                    dropped[("label_none", "label_uncertain", "label_no_face")[it.label - 8]] += 1
                    continue
                if not os.path.lexists(it.src):
                    dropped["image_missing"] += 1
                    continue
                if not is_regular_file(it.src):
                    dropped["not_regular_file"] += 1  # a FIFO would block forever; never opened
                    log.warning("affectnet: %s: %s is not a regular file (FIFO, device or dangling link); skipped",
                                it.where, it.src)
                    continue
                place_image(it.src, tmp / it.dst_rel, where=it.where)
                if it.landmarks is not None:
                    save_pts((tmp / it.dst_rel).with_suffix(".pts"), it.landmarks, where=it.where)
                else:
                    dropped["no_landmarks"] += 1  # kept; alignment falls back to its landmark backend
                rows[split].append(make_row(it.dst_rel, expression=TO_RAF[it.label]))
            progress.close()
            write_manifest(tmp, split, rows[split])
        counts = {s: len(r) for s, r in rows.items()}
        per_class = {s: {EXPRESSIONS_8[k]: sum(1 for r in rows[s] if r["expression"] == k) for k in range(8)}
                     for s in SPLITS}
        release_note = ("csv: Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images"
                        if release == "csv" else
                        "npy: {train_set,val_set}/images/<n>.jpg + annotations/<n>_{exp,lnd}.npy")
        meta = write_meta(tmp, "affectnet", source, release=release, release_note=release_note,
                          expressions=list(EXPRESSIONS_8),
                          label_mapping={f"{k} {AFFECTNET_NAMES[k]}": v for k, v in TO_RAF.items()},
                          label_mapping_note="AffectNet label -> stage-1 label (RAF-DB order, contempt = 7); "
                                             "labels 8-10 (none, uncertain, no-face) dropped",
                          **where_from,
                          test_split_note="the official validation set (the test set is not public)",
                          landmarks="AffectNet's automatic 68 points as .pts (assumed 0-based pixel coordinates)",
                          duplicates_policy="an image listed twice with the same expression is kept once (first "
                                            "row, training before validation); different expressions are an error",
                          duplicate_examples=duplicates[:10],
                          splits=counts, per_class=per_class, n_images=sum(counts.values()), dropped=dropped)
    if dropped["image_missing"]:
        log.warning("affectnet: %d listed images missing", dropped["image_missing"])
    if dropped["duplicate_rows"]:
        log.warning("affectnet: %d rows list an image a second time (kept once; first: %s)",
                    dropped["duplicate_rows"], duplicates[0])
    log.info("prepared affectnet (%s release): %s (dropped %s)", release, counts, dropped)
    return meta
