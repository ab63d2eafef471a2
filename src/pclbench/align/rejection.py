"""QC rejection of one crop before it is warped (``align.qc``): landmarks far outside the image, an
implausible scale, or a crop that is mostly padding (docs/architecture.md, "Stage 2", step 3).

A rejected image is a failure with a named reason (:func:`crop_qc`); its crop is still shown, with the
reason, on ``qc_worst.png`` (pclbench.align.qc).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from pclbench.align.geometry import outside_extent, padding_fraction

# QC rejection categories (the part of a failure reason before the first colon).
FAIL_OUTSIDE = "landmarks outside the image"
FAIL_SCALE = "implausible scale"
FAIL_PADDING = "mostly padding"


class RejectThresholds(Protocol):
    """What :func:`crop_qc` reads of ``align.qc`` (:class:`pclbench.align.aligner.AlignQCOptions`)."""

    @property
    def max_outside(self) -> float: ...  # landmarks beyond the image edge by more than this many face sizes

    @property
    def min_scale(self) -> float: ...  # crop px per source px below this

    @property
    def max_scale(self) -> float: ...  # crop px per source px above this

    @property
    def max_padding(self) -> float: ...  # fraction of the crop's pixels outside the image above this


def crop_qc(
    landmarks: np.ndarray, m: np.ndarray, image_size: tuple[int, int], size: int, qc: RejectThresholds
) -> tuple[str | None, float, float]:
    """QC of one crop -> ``(rejection reason or None, padding fraction, scale)``.

    Checked in this order, each with its own reason category (``align.qc`` holds the thresholds):
    landmarks reaching beyond the image by more than ``max_outside`` face sizes (a wrong ``.pts`` or a
    detector's ghost face), a scale (crop px per source px, sqrt|det|) outside
    ``[min_scale, max_scale]``, and more than ``max_padding`` of the crop outside the image.
    ``m`` must be finite and invertible (callers reject degenerate transforms first).
    """
    width, height = image_size
    ext = outside_extent(landmarks, image_size)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if ext > qc.max_outside:
        return (f"{FAIL_OUTSIDE}: the landmarks reach {ext:.3g} face sizes beyond the {width}x{height} image "
                f"(align.qc.max_outside {qc.max_outside:g})", float("nan"), scale)
    if not (qc.min_scale <= scale <= qc.max_scale):
        return (f"{FAIL_SCALE}: {scale:.4g} crop px per image px is outside [{qc.min_scale:g}, {qc.max_scale:g}] "
                "(align.qc.min_scale / max_scale)", float("nan"), scale)
    pad = padding_fraction(m, image_size, size)
    if pad > qc.max_padding:
        return (f"{FAIL_PADDING}: {pad:.0%} of the crop lies outside the image (align.qc.max_padding "
                f"{qc.max_padding:.0%})", pad, scale)
    return None, pad, scale
