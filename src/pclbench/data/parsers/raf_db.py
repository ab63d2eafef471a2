"""RAF-DB (Real-world Affective Faces, Li & Deng), basic-emotion subset -> stage 1.

Official layout (the ``basic/`` folder of the release, obtained from the authors; the parser accepts
``<source>/basic/...`` or the contents of ``basic/`` placed directly in ``<source>``)::

    basic/EmoLabel/list_patition_label.txt    "train_00001.jpg 5" per line (file name as in Image/original)
    basic/Image/aligned/train_00001_aligned.jpg   100x100 aligned faces (preferred; the paper's input)
    basic/Image/original/train_00001.jpg          the original images (used when aligned/ is absent)

Labels (RAF-DB README; PCL method doc 3.5 "label 5 -> 4"): 1 surprise, 2 fear, 3 disgust, 4 happiness,
5 sadness, 6 anger, 7 neutral. RAF-DB order IS the stage-1 order, so ``expression = label - 1``.
The split is the file-name prefix (``train_`` / ``test_``): 12,271 train and 3,068 test images in
the release (method doc 4.1). RAF-DB names no identities (``subject`` -1) and its landmark files
(5 manual / 37 automatic points) are not iBUG-68, so no ``.pts`` is written; alignment uses a
landmark backend. The file name "list_patition_label.txt" (sic) is the release's spelling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ...io import atomic_dir
from . import PARSERS
from .stage1 import (RAF_EXPRESSIONS, Progress, SourceFormatError, SourceLayoutError, check_splits, find_first,
                     log, make_row, place_image, write_manifest, write_meta)

LAYOUT = """  <source>/basic/EmoLabel/list_patition_label.txt   lines "train_00001.jpg 5" (labels 1-7)
  <source>/basic/Image/aligned/<name>_aligned.jpg     (or basic/Image/original/<name>.jpg)"""

SPLITS = ("train", "test")


def read_labels(path: Path) -> list[tuple[str, str, int]]:
    """``list_patition_label.txt`` -> [(file name, split, 0-based RAF label)]."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
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
        split = name.split("_", 1)[0]
        if split not in SPLITS:
            raise SourceFormatError(f"{path}:{i}: file name {name!r} starts with neither 'train_' nor 'test_'")
        out.append((name, split, label - 1))
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
    with atomic_dir(out) as tmp:
        progress = Progress(len(items), "prepare raf_db")
        for name, split, label in items:
            stem = Path(name).stem
            fname = f"{stem}_aligned.jpg" if variant == "aligned" else name
            src = folder / fname
            progress.update()
            if not src.is_file():
                missing.append(fname)
                continue
            rel = f"images/{variant}/{fname}"
            place_image(src, tmp / rel)
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
                          dropped={"image_missing": len(missing), "examples": missing[:10]})
    if missing:
        log.warning("raf_db: %d labelled images missing from %s (first: %s)", len(missing), folder, missing[0])
    log.info("prepared raf_db (%s images): %s", variant, counts)
    return meta
