"""Crop mode ``as_is``: take released, already aligned face crops as they are (no landmarks, no warp).

The authors' FER probe reads RAF-DB's released aligned images (``basic/Image/aligned/
<name>_aligned.jpg``, 100 x 100) through ``transforms.Resize(100)`` + ``ToTensor`` and nothing else
(docs/method.md §3.5 and 4.1; DreamMr/PCL data_process/lineardb.py: ``Image.open(...).convert('RGB')``,
then ``Resize(100)``, ``ToTensor()``). Re-aligning those crops with a landmark detector and a
template (the ``similarity`` mode of :mod:`pclbench.align.geometry`) changes the pixels the probe sees,
so the paper protocol offers this pass-through instead.

What it does per image (RGB, as the align stage reads it):

* a square image is resized to ``S x S`` with PIL's bilinear filter (what torchvision's ``Resize`` does
  with a PIL image and an int size: the shorter side to S, which for a square image is S x S); an
  image already ``S x S`` is copied unchanged, so RAF-DB aligned at ``datasets.raf_db.size: 100``
  gives exactly the authors' input bytes;
* a non-square image is rejected with a named reason (``FAIL_NOT_SQUARE``): the authors' ``Resize``
  would keep its aspect ratio and give a non-square tensor, which a square shard cannot hold, and a
  non-square file means these are not the released aligned crops (e.g. only ``Image/original`` was
  placed); the split then fails by ``align.max_failure_rate`` with that reason in qc.json.

No landmarks are measured: the shard's ``landmarks.npy`` rows are NaN (the QC score of such a face is
undefined) and no padding exists (0).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

# Name of the crop mode (align.crop / align.crops) and its rejection reason category.
AS_IS = "as_is"
FAIL_NOT_SQUARE = "not a square face crop"
N_POINTS = 68  # rows of a shard's landmarks (iBUG 68), written as NaN here


def as_is_crop(image: Image.Image, size: int) -> np.ndarray:
    """One released face crop -> ``(3, S, S)`` uint8; raises ``ValueError`` (reason
    :data:`FAIL_NOT_SQUARE`) for a non-square image."""
    width, height = image.size
    if width != height:
        raise ValueError(f"{FAIL_NOT_SQUARE}: {width} x {height} px (crop mode as_is takes the released "
                         "square aligned crops, e.g. RAF-DB Image/aligned)")
    rgb = image.convert("RGB")
    if width != size:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # torchvision Resize(int) on PIL
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, S, S)


def as_is_result(rows: Sequence[int], images: Sequence[Image.Image], failures: list[tuple[int, str]],
                 size: int, read_seconds: float) -> dict[str, Any]:
    """The align stage's per-batch result for crop mode ``as_is`` (the fields of
    ``pclbench.align.chunks.ChunkResult``): ``rows[j]`` is the raw-manifest row of ``images[j]``;
    ``failures`` (the batch's read failures so far) is extended with the rejected images."""
    failures = list(failures)
    kept: list[int] = []
    crops = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for row, image in zip(rows, images):
        try:
            crops[len(kept)] = as_is_crop(image, size)
        except ValueError as e:
            failures.append((row, str(e)))
            continue
        kept.append(row)
    k = len(kept)
    return {"kept": kept, "crops": crops[:k],
            "landmarks": np.full((k, N_POINTS, 2), np.nan, dtype=np.float32),
            "failures": sorted(failures),
            "seconds": {"read": read_seconds, "landmarks": 0.0, "warp": 0.0},
            "padding": np.zeros(k, dtype=np.float32),
            "rejected": [], "rejected_crops": np.zeros((0, 3, size, size), dtype=np.uint8)}
