"""Warping an image into its ``S x S`` crop with a crop transform (pclbench.align.geometry).

Bilinear, outside the image black. Anti-aliasing: bilinear sampling is only faithful down to a scale
of 1/2, so when the crop shrinks the face more than 2x, the image is first box-averaged by an integer
factor f = floor(1/scale) (``PIL.Image.reduce``), then warped with scale * f in (1/2, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from pclbench.align.geometry import BoxCrop, apply_affine, crop_transforms
from pclbench.align.images import to_rgb


def warp_to_crop(image: Image.Image, m: np.ndarray, size: int) -> np.ndarray:
    """Warp an RGB image with ``m`` (source pixel centres -> crop pixel centres) -> ``(3, S, S)`` uint8.

    Bilinear; outside the image is black. PIL's affine maps output to input *edge* coordinates
    (pixel i spans [i, i+1)), hence the +-0.5 around the inverse. Anti-aliasing (module docstring):
    a similarity is reduced by one factor from its scale; an axis-aligned matrix (``box`` crops,
    whose ``stretch`` shape scales x and y differently) by one factor per axis.
    """
    a, t = m[:, :2], m[:, 2]
    if a[0, 1] == 0 and a[1, 0] == 0:  # axis-aligned: each axis has its own scale
        sx, sy = abs(float(a[0, 0])), abs(float(a[1, 1]))
    else:
        sx = sy = float(np.sqrt(abs(np.linalg.det(a))))
    fx = int(np.floor(1.0 / sx)) if sx < 0.5 else 1
    fy = int(np.floor(1.0 / sy)) if sy < 0.5 else 1
    if fx > 1 or fy > 1:
        image = image.reduce((fx, fy))  # box filter; reduced edge coordinate = original edge coordinate / f
    a_inv = np.linalg.inv(a)
    # input_edge = (a_inv @ (out_edge - 0.5 - t) + 0.5) / f, per axis
    f = np.array([fx, fy], dtype=np.float64)
    lin = a_inv / f[:, None]
    off = (a_inv @ (-0.5 - t) + 0.5) / f
    coeffs = (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])
    out = image.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)


def align_images(
    images: Sequence[Image.Image | np.ndarray],
    landmarks: np.ndarray,
    size: int,
    template: np.ndarray,
    points: str,
    mode: str = "similarity",
    box: BoxCrop | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop images with known landmarks ``(B, 68, 2)`` -> crops ``(B, 3, S, S)`` uint8, landmarks ``(B, 68, 2)``.

    ``mode``: ``similarity`` (template alignment) or ``box`` (axis-aligned, :func:`box_transform`).
    No QC rejection here (see :func:`crop_qc`).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    pils = [to_rgb(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8)))
            for im in images]
    m = crop_transforms(landmarks, [im.size for im in pils], size, mode, template, points, box)
    if not np.all(np.isfinite(m)):
        raise ValueError("degenerate landmarks: no crop transform")
    crops = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, pil in enumerate(pils):
        crops[i] = warp_to_crop(pil, m[i], size)
    return crops, apply_affine(m, landmarks).astype(np.float32)
