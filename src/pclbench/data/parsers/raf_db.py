"""RAF-DB (Real-world Affective Faces, Li & Deng), basic-emotion subset -> stage 1.

Official layout (the ``basic/`` folder of the release, obtained from the authors; the parser accepts
``<source>/basic/...`` or the contents of ``basic/`` placed directly in ``<source>``)::

    basic/EmoLabel/list_patition_label.txt    "train_00001.jpg 5" per line (file name as in Image/original)
    basic/Image/aligned/train_00001_aligned.jpg   100x100 aligned faces (preferred; the paper's input)
    basic/Image/original/train_00001.jpg          the original images (used when aligned/ is absent)

Labels (RAF-DB README; PCL docs/method.md §3.5 "label 5 -> 4"): 1 surprise, 2 fear, 3 disgust, 4 happiness,
5 sadness, 6 anger, 7 neutral. RAF-DB order IS the stage-1 order, so ``expression = label - 1``.
The split is the file-name prefix (``train_`` / ``test_``): 12,271 train and 3,068 test images in
the release (docs/method.md §4.1). RAF-DB names no identities (``subject`` -1) and its landmark files
(5 manual / 37 automatic points) are not iBUG-68, so no ``.pts`` is written; alignment uses a
landmark backend. The file name "list_patition_label.txt" (sic) is the release's spelling.

Untrusted input: every file name of the label list must name a file inside the image folder (no
absolute path, no ``..``, no symlink out of the release); otherwise the run stops with an error
naming ``list_patition_label.txt:<line>`` before anything is written, and the previous output stays.
An image listed twice is an error naming the line (nothing is ever overwritten). Entries that are
not regular files (FIFOs, devices) are skipped and counted (``dropped.not_regular_file``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from pclbench.core.io import atomic_dir
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (RAF_EXPRESSIONS, SourceFormatError, SourceLayoutError, check_splits, find_first,
                     inside, is_regular_file, log, make_row, place_image, read_text, safe_relpath, write_manifest,
                     write_meta)

LAYOUT = """  <source>/basic/EmoLabel/list_patition_label.txt   lines "train_00001.jpg 5" (labels 1-7)
  <source>/basic/Image/aligned/<name>_aligned.jpg     (or basic/Image/original/<name>.jpg)"""

SPLITS = ("train", "test")


def read_labels(path: Path) -> list[tuple[str, str, int, int]]:
    """``list_patition_label.txt`` -> [(file name, split, 0-based RAF label, line number)]. File names
    are checked to be relative names that stay in their folder (:func:`safe_relpath`)."""
    out = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SourceFormatError(f"{path}:{i}: expected '<file name> <label 1-7>', got {line!r}")
        name, lab = parts
        try:
            label = int(lab)
        except ValueError:
            raise SourceFormatError(f"{path}:{i}: label {lab!r} is not an integer") from None
        if not 1 <= label <= 7:
            raise SourceFormatError(f"{path}:{i}: label {label} outside 1-7 (RAF-DB basic has 7 classes)")
        name = safe_relpath(name, where=f"{path}:{i}")  # refuses absolute names and '..' (read from data)
        split = name.rsplit("/", 1)[-1].split("_", 1)[0]
        if split not in SPLITS:
            raise SourceFormatError(f"{path}:{i}: file name {name!r} starts with neither 'train_' nor 'test_'")
        out.append((name, split, label - 1, i))
    if not out:
        raise SourceFormatError(f"{path}: no labels")
    return out


@PARSERS.register("raf_db")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "raf_db", SPLITS)
    source = Path(source)
    labels_path = find_first(source, ["basic/EmoLabel/list_patition_label.txt", "EmoLabel/list_patition_label.txt"],
                             "RAF-DB label list", LAYOUT)
    root = labels_path.parent.parent  # the basic/ folder
    aligned, original = root / "Image" / "aligned", root / "Image" / "original"
    if aligned.is_dir():
        variant, folder = "aligned", aligned
    elif original.is_dir():
        variant, folder = "original", original
    else:
        raise SourceLayoutError(f"neither {aligned} nor {original} exists; expected the official layout:\n{LAYOUT}")
    items = read_labels(labels_path)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    missing: list[str] = []
    not_regular: list[str] = []
    # Every name is resolved (lexically and through symlinks) before anything is written.
    sources = []
    for name, split, label, line in items:
        where = f"{labels_path}:{line}"
        fname = name
        if variant == "aligned":  # Image/aligned/<stem>_aligned.jpg for the label list's <stem>.jpg
            head, _, base = name.rpartition("/")
            fname = (f"{head}/" if head else "") + f"{Path(base).stem}_aligned.jpg"
        sources.append((inside(folder, fname, where=where), fname, split, label, where))
    with atomic_dir(out) as tmp:
        progress = Progress("prepare raf_db", len(items), unit="img", logger=log)
        for src, fname, split, label, where in sources:
            progress.update()
            if not os.path.lexists(src):
                missing.append(fname)
                continue
            if not is_regular_file(src):  # a FIFO would block forever: never opened
                not_regular.append(fname)
                log.warning("raf_db: %s: %s is not a regular file (FIFO, device or dangling link); skipped", where, src)
                continue
            rel = f"images/{variant}/{fname}"
            place_image(src, tmp / rel, where=where)
            rows[split].append(make_row(rel, expression=label))
        progress.close()
        if missing and len(missing) == len(items):
            raise SourceLayoutError(f"none of the {len(items)} labelled images is in {folder} (first: "
                                    f"{missing[0]}); expected the official layout:\n{LAYOUT}")
        for s in SPLITS:
            write_manifest(tmp, s, rows[s])
        counts = {s: len(rows[s]) for s in SPLITS}
        per_class = {s: {RAF_EXPRESSIONS[k]: sum(1 for r in rows[s] if r["expression"] == k)
                         for k in range(len(RAF_EXPRESSIONS))} for s in SPLITS}
        meta = write_meta(tmp, "raf_db", source, images=variant, expressions=list(RAF_EXPRESSIONS),
                          label_mapping="RAF-DB label k (1-7) -> expression k-1", splits=counts,
                          per_class=per_class, n_images=sum(counts.values()),
                          dropped={"image_missing": len(missing), "examples": missing[:10],
                                   "not_regular_file": len(not_regular)})
    if missing:
        log.warning("raf_db: %d labelled images missing from %s (first: %s)", len(missing), folder, missing[0])
    log.info("prepared raf_db (%s images): %s", variant, counts)
    return meta
