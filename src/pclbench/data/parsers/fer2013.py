"""FER2013 (Goodfellow et al., ICML 2013 representation-learning challenge, Kaggle) -> stage 1.

Official layout: ``fer2013.csv`` from the Kaggle competition "challenges-in-representation-learning-
facial-expression-recognition-challenge" (needs a Kaggle login), found as ``<source>/fer2013.csv`` or
``<source>/fer2013/fer2013.csv`` (the fer2013.tar.gz layout). Columns ``emotion,pixels,Usage``:

* ``emotion``  0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral (Kaggle data page);
* ``pixels``   2304 space-separated grey values, row-major 48x48;
* ``Usage``    Training (28,709) / PublicTest (3,589) / PrivateTest (3,589).

The Kaggle re-release ``icml_face_data.csv`` (columns ``emotion, Usage, pixels`` with leading spaces)
is accepted too: columns are matched by name, ignoring surrounding spaces.

Splits: Training -> ``train``, PublicTest -> ``val``, PrivateTest -> ``test`` (the usual protocol:
PublicTest for model selection, PrivateTest for the reported accuracy). Labels are mapped to the
stage-1 RAF-DB order (:data:`TO_RAF`): angry 0->5, disgust 1->2, fear 2->1, happy 3->3, sad 4->4,
surprise 5->0, neutral 6->6. Images are written as 48x48 8-bit greyscale PNGs
``images/<split>/<row index, 5 digits>.png`` (row index = 0-based data row of the CSV, so every image
traces back to its line). No identities (``subject`` -1), no landmarks.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from pclbench.core.io import atomic_dir
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (RAF_EXPRESSIONS, SourceFormatError, check_splits, find_first, log, make_row,
                     write_manifest, write_meta, read_text, csv_records)

LAYOUT = """  <source>/fer2013.csv   (or <source>/fer2013/fer2013.csv, or Kaggle's icml_face_data.csv)
     header emotion,pixels,Usage; 2304 space-separated grey values per row; Usage Training/PublicTest/PrivateTest"""

FER_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: FER2013 label -> stage-1 label (RAF-DB order)
TO_RAF = {0: 5, 1: 2, 2: 1, 3: 3, 4: 4, 5: 0, 6: 6}
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS = ("train", "val", "test")
SIDE = 48


def _rows(path: Path):
    with io.StringIO(read_text(path), newline="") as fh:  # non-UTF-8: error with file:line
        reader = csv_records(csv.reader(fh), path)  # csv.Error -> file:line
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SourceFormatError(f"{path}: empty file; expected the header emotion,pixels,Usage") from None
        missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
        if missing:
            raise SourceFormatError(f"{path}:1: header {header} lacks {missing}; expected emotion,pixels,Usage")
        ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("Usage")
        for k, rec in enumerate(reader):
            if not rec:
                continue
            lineno = k + 2
            try:
                label = int(rec[ie])
                usage = rec[iu].strip()
                pixels = np.array(rec[ip].split(), dtype=np.int64)
            except (IndexError, ValueError):
                raise SourceFormatError(f"{path}:{lineno}: cannot parse emotion/pixels/Usage") from None
            if label not in TO_RAF:
                raise SourceFormatError(f"{path}:{lineno}: emotion {label} outside 0-6")
            if usage not in USAGE_TO_SPLIT:
                raise SourceFormatError(f"{path}:{lineno}: Usage {usage!r} is not one of {list(USAGE_TO_SPLIT)}")
            if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
                raise SourceFormatError(f"{path}:{lineno}: expected {SIDE * SIDE} grey values in 0-255, "
                                        f"got {pixels.size}")
            yield k, label, USAGE_TO_SPLIT[usage], pixels.astype(np.uint8).reshape(SIDE, SIDE)


@PARSERS.register("fer2013")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "fer2013", SPLITS)
    source = Path(source)
    path = find_first(source, ["fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv"], "fer2013.csv", LAYOUT)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with atomic_dir(out) as tmp:
        for s in SPLITS:
            (tmp / "images" / s).mkdir(parents=True)
        # the release's row count; only drives the log cadence
        progress = Progress("prepare fer2013", 35887, unit="img", logger=log)
        for k, label, split, img in _rows(path):
            rel = f"images/{split}/{k:05d}.png"
            Image.fromarray(img).save(tmp / rel)  # (48, 48) uint8 -> 8-bit greyscale PNG
            rows[split].append(make_row(rel, expression=TO_RAF[label]))
            progress.update()
        progress.close()
        for s in SPLITS:
            write_manifest(tmp, s, rows[s])
        counts = {s: len(rows[s]) for s in SPLITS}
        meta = write_meta(tmp, "fer2013", source, file=str(path), expressions=list(RAF_EXPRESSIONS),
                          label_mapping={f"{k} {FER_NAMES[k]}": v for k, v in TO_RAF.items()},
                          label_mapping_note="FER2013 emotion -> stage-1 label (RAF-DB order)",
                          usage_to_split=USAGE_TO_SPLIT, image_size=SIDE, splits=counts,
                          per_class={s: {RAF_EXPRESSIONS[c]: sum(1 for r in rows[s] if r["expression"] == c)
                                         for c in range(7)} for s in SPLITS},
                          n_images=sum(counts.values()))
    log.info("prepared fer2013: %s", counts)
    return meta
