"""Landmark-based face alignment: raw dataset split (Stage 1) -> aligned uint8 shard (Stage 2).

docs/architecture.md, "Stage 2". For every image of ``<raw_dir>/<split>.csv``:

1. read it (RGB, :func:`read_image`) and get its 68 iBUG landmarks from a backend (``data/landmarks.py``);
2. compute the crop transform, by the dataset's crop mode (``align.crop`` / ``align.crops``):

   * ``similarity``: the least-squares similarity (rotation + uniform scale + translation, no
     reflection; Umeyama 1991) from the five ArcFace points of those landmarks (eye centres, nose
     tip, mouth corners) to a canonical template. It levels the eyes, so it removes head roll: the
     protocol of face recognition / expression / AU crops, wrong for head pose.
   * ``box``: an axis-aligned box around the landmarks, enlarged by margins, NO rotation
     (:func:`box_transform`): the head-pose protocols crop this way (Hopenet, FSA-Net, 6DRepNet; see
     :func:`box_transform` for the cited code), so roll stays in the image;

3. reject, with a named reason, crops whose landmarks lie far outside the image, whose scale is
   implausible, or that are mostly padding (``align.qc``, :func:`crop_qc`);
4. warp bilinearly into an ``S x S`` crop and move all 68 landmarks with the same transform.

Template: the standard 5-point ArcFace template of a 112 x 112 crop (InsightFace), normalised to the
unit square, then scaled about the crop centre by ``crop_scale`` (the face's size relative to that
tight crop; < 1 zooms out and keeps more context) and shifted down by ``shift_y`` crop heights.

Coordinates are (x, y), 0-based, (0, 0) = the centre of the top-left pixel (see landmarks.py). In
the unit square the crop spans [0, 1] edge to edge, so pixel-centre p of an S-pixel crop sits at
(p + 0.5) / S; the ArcFace numbers are pixel-centre coordinates (they are used with OpenCV's
warpAffine), hence ``(ARCFACE_112 + 0.5) / 112``.

Anti-aliasing: bilinear sampling is only faithful down to a scale of 1/2, so when the crop shrinks
the face more than 2x, the image is first box-averaged by an integer factor f = floor(1/scale)
(``PIL.Image.reduce``), then warped with scale * f in (1/2, 1].

Failures (unreadable file or not a regular file, no face, missing/malformed landmarks, backend
error, degenerate landmarks, and the QC rejections of step 3) are counted and skipped; the split
fails only when the failure rate exceeds ``align.max_failure_rate``, and then nothing is written at
the destination. A path that is a FIFO or a device (image or ``.pts``) is skipped without being
opened (opening a FIFO blocks forever).

At scale (issue "Alignment at scale"): a split is processed in resumable chunks of
``align.chunk_size`` images saved under ``<out>.parts/`` (:func:`align_chunks`; a crash loses only the
chunks in flight), optionally as ``align.parts`` parallel jobs, then merged into the shard
(:func:`merge_chunks`). The landmark backend sees ``align.batch_size`` images per call (one stacked
FAN forward for the face_alignment backend), with the face detector chosen per dataset
(``align.detectors``). QC written next to qc.json: ``failures.csv`` (every failed file and why),
``qc_samples.png`` and ``qc_worst.png`` (contact sheets of evenly spaced faces, and of the crops
rejected by step 3 with their reason followed by the worst-scoring kept faces; score = RMS residual
of the five crop points after their best similarity fit to the template, :func:`qc_scores`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import stat
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from pclbench.core.config import ConfigError
from pclbench.core.io import atomic_dir, atomic_file, atomic_write_text
from pclbench.align.landmarks import (
    FAIL_BACKEND,
    FAIL_DEGENERATE,
    FAIL_UNREADABLE,
    LANDMARKERS,
    N_POINTS,
    DlibOptions,
    FaceAlignmentOptions,
    GroundTruthOptions,
    five_points,
)
from pclbench.align.shards import ShardWriter
from pclbench.data.passthrough import AS_IS, as_is_result  # crop mode as_is: released aligned crops taken as they are

log = logging.getLogger(__name__)

# ArcFace / InsightFace 5-point template for a 112 x 112 crop, (x, y) pixel centres. "Left" = image left.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye centre
        [73.5318, 51.5014],  # right eye centre
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ]
)
ARCFACE_UNIT = (ARCFACE_112 + 0.5) / 112.0  # the same points in the unit square (edge to edge)


# face-alignment's detector modules, plus `box`: a fixed face box for datasets of face crops.
FAN_DETECTORS = ("sfd", "blazeface", "dlib", "retinaface", "scrfd", "yunet", "box")


# Crop modes (align.crop / align.crops) and the shapes of a `box` crop (align.box.shape).
CROP_MODES = ("similarity", "box", AS_IS)
BOX_SHAPES = ("square", "center_crop", "stretch")

# QC rejection categories (the part of a failure reason before the first colon).
FAIL_OUTSIDE = "landmarks outside the image"
FAIL_SCALE = "implausible scale"
FAIL_PADDING = "mostly padding"
FAIL_NOT_REGULAR = "not a regular file"
# Short captions of rejected crops on qc_worst.png (a 48 px cell holds ~8 characters).
_REJECT_TAGS = {FAIL_OUTSIDE: "REJ out", FAIL_SCALE: "REJ scale", FAIL_PADDING: "REJ pad"}


class AlignmentError(RuntimeError):
    """The split cannot be aligned (e.g. too many failures); nothing was written."""


@dataclass
class BoxCropOptions:
    """``align.box``: the axis-aligned head-pose crop (crop mode ``box``, :func:`box_transform`)."""

    # [left, top, right, bottom] enlargement of the landmarks' bounding box, as fractions of its
    # width (left/right) and height (top/bottom). 0.6 on every side = FSA-Net's type-1 crops
    # (`--ad 0.6`), the crops PCL's released head-pose loader reads.
    margin: list[float]
    shape: str  # square | center_crop | stretch: how the enlarged box becomes an S x S crop (box_transform)

    def __post_init__(self) -> None:
        m = self.margin
        if len(m) != 4 or not all(np.isfinite(v) and 0.0 <= v <= 5.0 for v in m):
            raise ConfigError(f"align.box.margin: expected [left, top, right, bottom] in 0..5, got {m!r}")
        if self.shape not in BOX_SHAPES:
            raise ConfigError(f"align.box.shape: expected one of {list(BOX_SHAPES)}, got {self.shape!r}")


@dataclass
class AlignQCOptions:
    """``align.qc``: thresholds of the QC rejections (:func:`crop_qc`); a rejected image is a failure."""

    max_outside: float  # landmarks beyond the image edge by more than this many face sizes: reject
    min_scale: float  # crop px per source px below this: reject
    max_scale: float  # crop px per source px above this: reject (a face of a few px blown up)
    max_padding: float  # fraction of the crop's pixels outside the image above this: reject

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_outside) and self.max_outside >= 0):
            raise ConfigError(f"align.qc.max_outside: must be >= 0, got {self.max_outside!r}")
        if not (0 < self.min_scale < self.max_scale and np.isfinite(self.max_scale)):
            raise ConfigError(f"align.qc: need 0 < min_scale < max_scale, got {self.min_scale!r}, {self.max_scale!r}")
        if not (0.0 <= self.max_padding <= 1.0):
            raise ConfigError(f"align.qc.max_padding: must be in [0, 1], got {self.max_padding!r}")


@dataclass
class AlignConfig:
    """Config section ``align`` (see config/config.yaml for the meaning of each key)."""

    backend: str  # a name in landmarks.LANDMARKERS: groundtruth | dlib | face_alignment
    backends: dict[str, str]  # dataset -> landmark backend (else `backend`)
    points: Literal["five"]  # landmark points fitted to the template (only the ArcFace five)
    crop_scale: float  # face size relative to the tight ArcFace crop (< 1: more context)
    shift_y: float  # template shift down, in crop heights (> 0: face lower in the crop)
    max_failure_rate: float  # the split fails above this fraction of failed images
    batch_size: int  # images per landmark call (and per FAN forward)
    chunk_size: int  # images per resumable chunk (one file in the work folder)
    parts: int  # cluster jobs per split in the workflow (scatter/gather); 1 = one job
    qc_samples: int  # faces in each QC contact sheet (samples, worst scores)
    device: str  # torch device for face_alignment: auto | cpu | cuda | cuda:0 ...
    detectors: dict[str, str]  # dataset -> face_alignment detector (else face_alignment.detector)
    groundtruth: GroundTruthOptions
    dlib: DlibOptions
    face_alignment: FaceAlignmentOptions
    crop: str  # crop mode of datasets not in `crops`: similarity | box
    crops: dict[str, str]  # dataset -> crop mode (config: the head-pose datasets -> box)
    box: BoxCropOptions  # the `box` crop
    qc: AlignQCOptions  # QC rejection thresholds

    def __post_init__(self) -> None:
        for where, mode in [("align.crop", self.crop), *((f"align.crops.{d}", c) for d, c in self.crops.items())]:
            if mode not in CROP_MODES:
                raise ConfigError(f"{where}: expected one of {list(CROP_MODES)}, got {mode!r}")
        for where, name in [("align.backend", self.backend),
                            *((f"align.backends.{d}", b) for d, b in self.backends.items())]:
            if name not in LANDMARKERS:
                raise ConfigError(f"{where}: {name!r} is not one of {LANDMARKERS.names()}")
        if not (np.isfinite(self.crop_scale) and self.crop_scale > 0):
            raise ConfigError(f"align.crop_scale: must be > 0, got {self.crop_scale!r}")
        if not (-0.5 < self.shift_y < 0.5):
            raise ConfigError(f"align.shift_y: must be in (-0.5, 0.5), got {self.shift_y!r}")
        if not (0.0 <= self.max_failure_rate <= 1.0):
            raise ConfigError(f"align.max_failure_rate: must be in [0, 1], got {self.max_failure_rate!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", self.device):
            raise ConfigError(f"align.device: expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for key in ("batch_size", "chunk_size", "parts", "qc_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"align.{key}: must be >= 1, got {getattr(self, key)!r}")
        for name in [self.face_alignment.detector, *self.detectors.values()]:
            if name not in FAN_DETECTORS:
                raise ConfigError(
                    f"align detector {name!r} (align.face_alignment.detector / align.detectors): "
                    f"expected one of {list(FAN_DETECTORS)}"
                )

    def backend_for(self, dataset: str | None) -> str:
        """The landmark backend of ``dataset``: ``align.backends[dataset]``, else ``align.backend``."""
        return self.backends.get(dataset or "", self.backend)

    def detector_for(self, dataset: str | None) -> str:
        """The face_alignment detector of ``dataset``: ``align.detectors[dataset]``, else the default."""
        return self.detectors.get(dataset or "", self.face_alignment.detector)

    def crop_for(self, dataset: str | None) -> str:
        """The crop mode of ``dataset``: ``align.crops[dataset]``, else ``align.crop``."""
        return self.crops.get(dataset or "", self.crop)


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def canonical_template(size: int, crop_scale: float, shift_y: float) -> np.ndarray:
    """The five template points ``(5, 2)`` in pixel-centre coordinates of a ``size x size`` crop."""
    unit = 0.5 + crop_scale * (ARCFACE_UNIT - 0.5) + np.array([0.0, shift_y])
    return unit * size - 0.5


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` without reflection (Umeyama 1991, Eqs. 40-42).

    ``src``: ``(B, n, 2)`` or ``(n, 2)``; ``dst``: the same or ``(n, 2)`` shared by the batch.
    Returns ``(B, 2, 3)`` (or ``(2, 3)``) matrices ``[s R | t]``. Degenerate sources (all points equal)
    give non-finite matrices; callers check ``np.isfinite``.
    """
    src = np.asarray(src, dtype=np.float64)
    single = src.ndim == 2
    if single:
        src = src[None]
    dst = np.broadcast_to(np.asarray(dst, dtype=np.float64), src.shape)
    n = src.shape[1]
    mu_s, mu_d = src.mean(axis=1), dst.mean(axis=1)  # (B, 2)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]  # (B, n, 2)
    var_s = (xs**2).sum(axis=(1, 2)) / n  # (B,)
    cov = np.einsum("bni,bnj->bij", xd, xs) / n  # (B, 2, 2) = Sigma_xy of the paper (dst x src^T)
    u, d, vt = np.linalg.svd(cov)
    # S = diag(1, sign(det U det V)) forbids reflections.
    sgn = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sgn[sgn == 0] = 1.0
    s_mat = np.zeros((len(src), 2, 2))
    s_mat[:, 0, 0], s_mat[:, 1, 1] = 1.0, sgn
    rot = u @ s_mat @ vt  # (B, 2, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (d[:, 0] + sgn * d[:, 1]) / var_s  # trace(D S) / sigma_x^2
    a = scale[:, None, None] * rot
    t = mu_d - np.einsum("bij,bj->bi", a, mu_s)
    m = np.concatenate([a, t[:, :, None]], axis=2)  # (B, 2, 3)
    return m[0] if single else m


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``m (..., 2, 3)`` applied to ``points (..., n, 2)``."""
    return np.einsum("...ij,...nj->...ni", m[..., :, :2], points) + m[..., None, :, 2]


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


def alignment_transforms(landmarks: np.ndarray, template: np.ndarray, points: str) -> np.ndarray:
    """Similarities ``(B, 2, 3)`` taking landmarks ``(B, 68, 2)`` onto the template."""
    if points != "five":
        raise ValueError(f"points: only 'five' is implemented, got {points!r}")
    return umeyama(five_points(landmarks), template)


def box_transform(landmarks: np.ndarray, image_size: tuple[int, int], size: int, opts: BoxCropOptions) -> np.ndarray:
    """The ``box`` crop of one face: an axis-aligned affine ``(2, 3)`` (source -> crop pixel centres).

    No rotation, so the head's roll stays in the crop. Evidence (public code of the head-pose protocols;
    none of them rotates the face):

    * Hopenet, natanielruiz/deep-head-pose ``code/datasets.py`` (``Pose_300W_LP``, ``AFLW2000``): the
      box is the min/max of the 2-D landmarks (``pt2d``), enlarged by a factor k (training on 300W-LP:
      k ~ U(0.2, 0.4), left/right 0.6k of the width, top 2k and bottom 0.6k of the height; AFLW2000
      test: k = 0.2, left/right/top 2k, bottom 0.6k; the right/bottom terms use the already enlarged
      left/top edge), cut with PIL ``Image.crop`` (outside the image = black), then
      ``Scale(224) + CenterCrop(224)`` (``code/test_hopenet.py``): the shorter side is kept.
    * 6DRepNet, thohemp/6DRepNet ``sixdrepnet/datasets.py``: the same boxes (same k rules);
      ``sixdrepnet/test.py``: ``Resize(256) + CenterCrop(224)``.
    * FSA-Net, shamangary/FSA-Net ``data/type1/TYY_create_db_type1.py`` with
      ``data/type1/run_created_db_type1.sh`` (``--ad 0.6 --img_size 64``): the landmarks' box (points
      with positive coordinates) enlarged by ``ad`` times its width/height on every side, clipped to
      the image, then ``cv2.resize`` to 64 x 64 (aspect ratio not kept). PCL's released head-pose
      loader reads exactly these 64 px type-1 files (../shared/docs/pcl-method.md, 3.6).

    Here: the box spans the landmarks' extremes ``[x0, x1] x [y0, y1]`` (``w = x1 - x0``,
    ``h = y1 - y0``) enlarged to ``[x0 - L w, x1 + R w] x [y0 - T h, y1 + B h]`` with
    ``opts.margin = [L, T, R, B]`` (edges in pclbench's pixel-centre coordinates, no integer
    truncation: the reference codes' ``int()`` moves the box by under one pixel). ``opts.shape``:

    * ``square``: the square of side max(box width, height) about the box centre (nothing cut off, no
      distortion; what lies outside the image is black padding, counted by :func:`padding_fraction`);
    * ``center_crop``: the square of side min(width, height) about the box centre (Hopenet / 6DRepNet's
      resize-shorter-side + centre crop of equal sizes);
    * ``stretch``: the box clipped to the image, each axis scaled to ``size`` (FSA-Net type 1).

    Crop pixel centre ``p`` samples source ``x = bx0 + (p + 0.5) * bw / size`` (box edge ``bx0``, width
    ``bw``), i.e. ``p = (x - bx0) * size / bw - 0.5``. A box of zero size gives a non-finite matrix.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    w, h = x1 - x0, y1 - y0
    left, top, right, bottom = (float(v) for v in opts.margin)
    bx0, bx1 = x0 - left * w, x1 + right * w
    by0, by1 = y0 - top * h, y1 + bottom * h
    if opts.shape == "stretch":
        width, height = image_size
        bx0, bx1 = max(bx0, -0.5), min(bx1, width - 0.5)
        by0, by1 = max(by0, -0.5), min(by1, height - 0.5)
    else:
        cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
        side = (max if opts.shape == "square" else min)(bx1 - bx0, by1 - by0)
        bx0, bx1, by0, by1 = cx - side / 2.0, cx + side / 2.0, cy - side / 2.0, cy + side / 2.0
    bw, bh = bx1 - bx0, by1 - by0
    with np.errstate(divide="ignore", invalid="ignore"):
        sx = size / bw if bw > 0 else np.inf
        sy = size / bh if bh > 0 else np.inf
        return np.array([[sx, 0.0, -bx0 * sx - 0.5], [0.0, sy, -by0 * sy - 0.5]])


def crop_transforms(
    landmarks: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    size: int,
    mode: str,
    template: np.ndarray,
    points: str,
    box: BoxCropOptions | None = None,
) -> np.ndarray:
    """The crop transforms ``(B, 2, 3)`` of landmarks ``(B, 68, 2)`` in images of ``(width, height)``
    ``image_sizes``: the template similarity (``mode`` similarity) or :func:`box_transform` (box)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if mode == "similarity":
        return alignment_transforms(landmarks, template, points)
    if mode == "box":
        if box is None:
            raise ValueError("crop mode 'box' needs its BoxCropOptions (align.box)")
        if len(landmarks) == 0:
            return np.zeros((0, 2, 3))
        return np.stack([box_transform(lm, wh, size, box) for lm, wh in zip(landmarks, image_sizes)])
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")


def padding_fraction(m: np.ndarray, image_size: tuple[int, int], size: int) -> float:
    """Fraction of the ``size x size`` crop's pixel centres that map outside the image (black padding)."""
    width, height = image_size
    a_inv = np.linalg.inv(m[:, :2])
    p = np.arange(size, dtype=np.float64)
    gx, gy = np.meshgrid(p, p)  # (S, S) crop pixel centres
    src = np.einsum("ij,jn->in", a_inv, np.stack([gx.ravel() - m[0, 2], gy.ravel() - m[1, 2]]))  # (2, S*S)
    outside = (src[0] < -0.5) | (src[0] > width - 0.5) | (src[1] < -0.5) | (src[1] > height - 0.5)
    return float(outside.mean())


def outside_extent(landmarks: np.ndarray, image_size: tuple[int, int]) -> float:
    """How far the landmarks ``(68, 2)`` reach beyond the image, in face sizes (0 = all inside).

    Face size = the larger side of the landmarks' bounding box; the image spans the pixel edges
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Zero-size faces: 0 if inside, infinite if outside.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    width, height = image_size
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    beyond = max(0.0, -0.5 - lo[0], hi[0] - (width - 0.5), -0.5 - lo[1], hi[1] - (height - 0.5))
    face = float(max(hi - lo))
    if beyond == 0.0:
        return 0.0
    return beyond / face if face > 0 else float("inf")


def crop_qc(
    landmarks: np.ndarray, m: np.ndarray, image_size: tuple[int, int], size: int, qc: AlignQCOptions
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


# --------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class NotRegularFileError(OSError):
    """An input path is a FIFO, device, socket or directory: it is skipped without being opened."""


def _file_kind(path: Path) -> str:
    """What a non-regular path is, from ``os.stat`` (which never blocks, unlike ``open`` on a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"not statable ({type(e).__name__})"
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One-band 16-bit / 32-bit integer / float pixels ``(H, W)`` -> uint8 (see :func:`to_rgb`)."""
    if mode in _SIXTEEN_BIT_MODES:
        return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)  # v * 255 / 65535
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        out = a * 255.0  # a [0, 1] intensity image
    elif lo >= 0.0 and hi <= 255.0:
        out = a  # 8-bit data in a wider container
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        out = a / 257.0  # 16-bit data (older Pillow opened 16-bit PNGs as "I")
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)  # no nominal range: stretch
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling high-bit-depth pixels instead of clipping them.

    Pillow's modes (Pillow handbook, "Concepts", Modes:
    https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes): ``I;16``/``I;16L``/
    ``I;16B``/``I;16N`` = 16-bit unsigned, ``I`` = 32-bit signed integer, ``F`` = 32-bit float.
    ``Image.convert`` clamps such values to 0..255 instead of scaling them (python-pillow/Pillow
    issues #2574 and #1108: a 16-bit greyscale image converts to near-white), which gave all-white
    crops. So these one-band modes are scaled here:

    * 16-bit: ``round(v * 255 / 65535) = round(v / 257)``, the linear sample-depth rescaling of the
      PNG specification (RFC 2083 2.2: samples range over 0 .. 2^depth - 1; "sample depth
      rescaling": output = round(input * MAXOUTSAMPLE / MAXINSAMPLE)). The nominal range, not the
      image's own maximum, so a dark 16-bit image stays as dark as its 8-bit version.
    * ``I``: values within 0..255 are taken as 8-bit, within 0..65535 as 16-bit (/257); otherwise,
      and for ``F`` outside [0, 1] / [0, 255], there is no nominal range and min..max is stretched to
      0..255 (a choice: such files are not expected in face datasets). ``F`` in [0, 1] is scaled by 255.

    Every other mode (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) goes
    through ``Image.convert("RGB")``; for alpha modes that drops the alpha band, as the head-pose
    reference loaders do (Hopenet's ``img.convert('RGB')``, FSA-Net's ``cv2.imread``). A mode Pillow
    cannot convert raises ``ValueError`` (the image then fails as unreadable).
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _grey_to_uint8(np.asarray(image), mode)  # (H, W) uint8
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB (:func:`to_rgb`).

    Raises :class:`NotRegularFileError` without opening the path when it exists but is not a regular
    file (``stage1.is_regular_file``: a FIFO would block ``open`` forever, a device could stream
    without end); other errors (missing, undecodable) propagate from Pillow. Pillow only *warns*
    (``DecompressionBombWarning``) for an image between ``Image.MAX_IMAGE_PIXELS`` and twice that and
    raises ``DecompressionBombError`` above (Pillow docs, reference/Image.html, ``Image.open``:
    "Warns: DecompressionBombWarning"); here both raise ``DecompressionBombError``, so a placed image of
    90-180 megapixels is refused like a bigger one instead of being decoded.
    """
    from pclbench.data.parsers.stage1 import is_regular_file

    path = Path(path)
    if os.path.lexists(path) and not is_regular_file(path):
        raise NotRegularFileError(f"{path.name} is {_file_kind(path)}; skipped without opening it")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from None


def align_images(
    images: Sequence[Image.Image | np.ndarray],
    landmarks: np.ndarray,
    size: int,
    template: np.ndarray,
    points: str,
    mode: str = "similarity",
    box: BoxCropOptions | None = None,
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


# --------------------------------------------------------------------------------------------------
# One batch of images
# --------------------------------------------------------------------------------------------------


@dataclass
class _ChunkResult:
    kept: list[int]  # raw-manifest row indices, in order
    crops: np.ndarray  # (k, 3, S, S) uint8
    landmarks: np.ndarray  # (k, 68, 2) float32, crop coordinates
    failures: list[tuple[int, str]]  # (raw row, reason)
    seconds: dict[str, float]
    padding: np.ndarray  # (k,) float32, fraction of each kept crop outside its image
    rejected: list[int]  # raw rows of QC-rejected crops kept for the QC sheet (at most qc_samples)
    rejected_crops: np.ndarray  # (r, 3, S, S) uint8, those crops as they would have been


def _concat_results(results: Sequence[_ChunkResult], size: int, max_rejected: int) -> _ChunkResult:
    seconds: Counter = Counter()
    for r in results:
        seconds.update(r.seconds)
    rejected = [k for r in results for k in r.rejected][:max_rejected]
    return _ChunkResult(
        kept=[k for r in results for k in r.kept],
        crops=np.concatenate([r.crops for r in results]) if results else np.zeros((0, 3, size, size), np.uint8),
        landmarks=np.concatenate([r.landmarks for r in results]) if results else np.zeros((0, N_POINTS, 2), np.float32),
        failures=sorted(f for r in results for f in r.failures),
        seconds={k: seconds[k] for k in ("read", "landmarks", "warp")},
        padding=np.concatenate([r.padding for r in results]) if results else np.zeros(0, np.float32),
        rejected=rejected,
        rejected_crops=(np.concatenate([r.rejected_crops for r in results])[: len(rejected)] if results
                        else np.zeros((0, 3, size, size), np.uint8)),
    )


def _display_crop(image: Image.Image, m: np.ndarray, size: int) -> np.ndarray:
    """A rejected crop for the QC sheet; mid-grey when even warping it fails (absurd transform)."""
    try:
        return warp_to_crop(image, m, size)
    except Exception:
        return np.full((3, size, size), 128, np.uint8)


class _ChunkAligner:
    """Reads, landmarks and warps batches of images; one per process."""

    def __init__(self, cfg: AlignConfig, size: int, dataset: str | None = None):
        self.cfg = cfg
        self.size = size
        self.mode = cfg.crop_for(dataset)
        self.template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
        backend = cfg.backend_for(dataset)
        builder = LANDMARKERS.get(backend)
        if self.mode == AS_IS:  # reads no landmarks (data/passthrough.py): no detector to load
            self.backend = None
        elif backend == "face_alignment":
            self.backend = builder(cfg, detector=cfg.detector_for(dataset))
        else:
            self.backend = builder(cfg)

    def _landmarks(self, arrays: list[np.ndarray], paths: list[Path]) -> list[np.ndarray | str]:
        try:
            res = self.backend.detect(arrays, paths)
            if len(res) != len(arrays):
                raise RuntimeError(f"backend returned {len(res)} results for {len(arrays)} images")
            return res
        except Exception:
            if len(arrays) == 1:
                raise
        # A batch failed: retry image by image so one bad image costs only itself.
        out: list[np.ndarray | str] = []
        for a, p in zip(arrays, paths):
            try:
                out.append(self._landmarks([a], [p])[0])
            except Exception as e:
                out.append(f"{FAIL_BACKEND}: {type(e).__name__}: {e}")
        return out

    def __call__(self, chunk: list[tuple[int, Path]]) -> _ChunkResult:
        """One batch (at most ``batch_size`` images: one backend call)."""
        seconds = {"read": 0.0, "landmarks": 0.0, "warp": 0.0}
        failures: list[tuple[int, str]] = []
        t0 = time.perf_counter()
        rows, paths, images = [], [], []
        for row, path in chunk:
            try:
                images.append(read_image(path))
            except NotRegularFileError as e:
                failures.append((row, f"{FAIL_NOT_REGULAR}: {e}"))
                continue
            except Exception as e:
                failures.append((row, f"{FAIL_UNREADABLE}: {type(e).__name__}: {e}"))
                continue
            rows.append(row)
            paths.append(path)
        arrays = [np.asarray(im) for im in images]  # (H, W, 3) uint8 RGB
        t1 = time.perf_counter()
        if self.mode == AS_IS:  # released aligned crops, resized only (data/passthrough.py)
            return _ChunkResult(**as_is_result(rows, images, failures, self.size, t1 - t0))
        try:
            results = self._landmarks(arrays, paths) if arrays else []
        except Exception as e:  # a single image's backend call raised
            results = [f"{FAIL_BACKEND}: {type(e).__name__}: {e}"] * len(arrays)
        t2 = time.perf_counter()
        good = []
        for j, res in enumerate(results):
            if isinstance(res, str):
                failures.append((rows[j], res))
                continue
            res = np.asarray(res, dtype=np.float64)
            if res.shape != (N_POINTS, 2) or not np.all(np.isfinite(res)):
                failures.append((rows[j], f"{FAIL_BACKEND}: landmarks of shape {res.shape} or non-finite"))
                continue
            good.append((j, res))
        size = self.size
        crops = np.empty((len(good), 3, size, size), dtype=np.uint8)
        lms = np.empty((len(good), N_POINTS, 2), dtype=np.float32)
        pads = np.empty(len(good), dtype=np.float32)
        kept: list[int] = []
        rejected: list[int] = []
        rejected_crops: list[np.ndarray] = []
        if good:
            lm_src = np.stack([g[1] for g in good])  # (k, 68, 2)
            sizes = [images[j].size for j, _ in good]  # (width, height)
            m = crop_transforms(lm_src, sizes, size, self.mode, self.template, self.cfg.points,
                                self.cfg.box)  # (k, 2, 3)
            ok = np.all(np.isfinite(m), axis=(1, 2))
            ok[ok] = np.abs(np.linalg.det(m[ok, :, :2])) > 1e-12
            lm_crop = apply_affine(m, lm_src)
            degenerate = ("the five alignment points coincide" if self.mode == "similarity"
                          else "the landmarks' bounding box has no area")
            n = 0
            for (j, src_i), wh, m_i, ok_i, lm_i in zip(good, sizes, m, ok, lm_crop):
                if not ok_i:
                    failures.append((rows[j], f"{FAIL_DEGENERATE}: {degenerate}"))
                    continue
                reason, pad, _ = crop_qc(src_i, m_i, wh, size, self.cfg.qc)
                if reason is not None:
                    failures.append((rows[j], reason))
                    if len(rejected) < self.cfg.qc_samples:  # shown on qc_worst.png with the reason
                        rejected.append(rows[j])
                        rejected_crops.append(_display_crop(images[j], m_i, size))
                    continue
                crops[n] = warp_to_crop(images[j], m_i, size)
                lms[n] = lm_i
                pads[n] = pad
                kept.append(rows[j])
                n += 1
            crops, lms, pads = crops[:n], lms[:n], pads[:n]
        seconds["read"] = t1 - t0
        seconds["landmarks"] = t2 - t1
        seconds["warp"] = time.perf_counter() - t2
        failures.sort()
        rej = np.stack(rejected_crops) if rejected_crops else np.zeros((0, 3, size, size), np.uint8)
        return _ChunkResult(kept, crops, lms, failures, seconds, pads, rejected, rej)

    def chunk(self, items: list[tuple[int, Path]]) -> _ChunkResult:
        """One resumable chunk (``chunk_size`` images) in batches of ``batch_size``."""
        bs = self.cfg.batch_size
        return _concat_results([self(items[s : s + bs]) for s in range(0, len(items), bs)], self.size,
                               self.cfg.qc_samples)


_WORKER: _ChunkAligner | None = None
_WORKER_ERROR: BaseException | None = None


def _worker_init(cfg: AlignConfig, size: int, dataset: str | None) -> None:
    # Each worker is one core: keep torch/BLAS from oversubscribing (torch is imported after this).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = _ChunkAligner(cfg, size, dataset)
    except Exception as e:  # raising here would make the Pool respawn workers forever
        _WORKER_ERROR = e


def _worker_run(job: tuple[int, list[tuple[int, Path]]]) -> tuple[int, _ChunkResult]:
    """One batch ``(chunk index, items)`` -> ``(chunk index, result)``."""
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER is not None
    return job[0], _WORKER(job[1])


def _progress(total: int, desc: str):
    """tqdm on a terminal; otherwise periodic log lines (every ~10%)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img")

    class _Log:
        def __init__(self) -> None:
            self.n, self.next = 0, max(1, total // 10)

        def update(self, k: int) -> None:
            self.n += k
            if self.n >= self.next or self.n == total:
                log.info("%s: %d/%d images", desc, self.n, total)
                self.next = self.n + max(1, total // 10)

        def close(self) -> None:
            pass

    return _Log()


def _stat(fn, values: np.ndarray) -> float | None:
    """``fn`` over the finite values, None when there are none (JSON has no NaN)."""
    v = values[np.isfinite(values)]
    return float(fn(v)) if len(v) else None


# --------------------------------------------------------------------------------------------------
# Resumable chunks: <out>.parts/chunk-000000.npz ... then one merge into the shard
# --------------------------------------------------------------------------------------------------
# A split is cut into chunks of ``align.chunk_size`` manifest rows. Each finished chunk is written
# atomically (tmp + os.replace) to the work folder ``<out_dir>.parts/`` next to the shard, so a crash
# loses at most the chunks in flight, and a rerun only computes the missing ones. ``align.parts`` > 1
# splits the chunks into that many contiguous ranges, one cluster job each (``--part i``); the merge
# concatenates every chunk in order, so the shard is byte-identical however the work was cut,
# interrupted or resumed (qc.json differs only in its timings). ``work.json`` fingerprints what the
# chunks depend on (manifest content, crop size, alignment settings, detector); a mismatch discards
# the stale chunks instead of mixing them into a new shard.

WORK_FILE = "work.json"
QC_FILES = ("failures.csv", "qc_samples.png", "qc_worst.png")


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    """The resumable work folder of a shard: ``<out_dir>.parts`` (a sibling, never inside the shard)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.parts"


def _chunk_path(work: Path, c: int) -> Path:
    return work / f"chunk-{c:06d}.npz"


@dataclass
class _Plan:
    raw_dir: Path
    split: str
    dataset: str
    manifest: pd.DataFrame
    rel_paths: list[str]
    chunks: list[list[tuple[int, Path]]]
    fingerprint: dict[str, Any]


def _plan(raw_dir: Path, split: str, cfg: AlignConfig, size: int, dataset: str | None) -> _Plan:
    if size < 8:
        raise ValueError(f"crop size must be >= 8 px, got {size}")
    manifest_path = raw_dir / f"{split}.csv"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest of split {split!r} not found")
    # Read every cell as text so the shard's manifest.csv repeats the raw rows verbatim (no float
    # re-formatting, no "NA" -> NaN); readers parse both files the same way.
    try:
        manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        from pclbench.data.parsers.stage1 import SourceFormatError

        raise SourceFormatError(f"{manifest_path}: not a readable UTF-8 manifest CSV ({e})") from None
    if "path" not in manifest.columns:
        raise ValueError(f"{manifest_path}: no 'path' column (columns: {', '.join(map(str, manifest.columns))})")
    if len(manifest) == 0:
        raise ValueError(f"{manifest_path}: the manifest has no rows")
    if "row" in manifest.columns:
        raise ValueError(f"{manifest_path}: column 'row' is reserved for the aligned shard")
    dataset = dataset or raw_dir.name
    rel_paths = manifest["path"].tolist()
    # The manifest is data: a row naming an absolute path or '..' is refused with its file:line (header =
    # line 1) before anything is read or written. The check is lexical only: the parsers never write links
    # into the raw folder (stage1.inside refuses links out of a release), while a DVC cache checked out as
    # symlinks (cache.type symlink) would legitimately point every image outside it. A link to a device is
    # still never opened (read_image: "not a regular file").
    from pclbench.data.parsers.stage1 import safe_relpath  # here: stage1 imports data.landmarks, imported by this module

    items = [(i, raw_dir / safe_relpath(p, where=f"{manifest_path}:{i + 2}")) for i, p in enumerate(rel_paths)]
    chunks = [items[s : s + cfg.chunk_size] for s in range(0, len(items), cfg.chunk_size)]
    settings = dataclasses.asdict(cfg)
    # do not change chunks (the dataset's own backend / detector / crop mode are in the fingerprint below)
    for k in ("parts", "max_failure_rate", "qc_samples", "batch_size", "detectors", "backend", "backends",
              "crop", "crops", "box"):
        settings.pop(k)
    mode = cfg.crop_for(dataset)
    fingerprint = {
        "raw_dir": str(raw_dir.resolve()),
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "split": split,
        "size": size,
        "backend": cfg.backend_for(dataset),
        "detector": cfg.detector_for(dataset) if cfg.backend_for(dataset) == "face_alignment" else None,
        "crop": mode,
        "box": dataclasses.asdict(cfg.box) if mode == "box" else None,
        "settings": settings,
    }
    return _Plan(raw_dir, split, dataset, manifest, rel_paths, chunks, fingerprint)


def _prepare_work(work: Path, fingerprint: dict[str, Any]) -> None:
    """Create the work folder; discard chunks made under a different fingerprint."""
    work.mkdir(parents=True, exist_ok=True)
    wf = work / WORK_FILE
    text = json.dumps(fingerprint, sort_keys=True, indent=1) + "\n"
    if wf.is_file() and wf.read_text() == text:
        return
    stale = sorted(work.glob("chunk-*.npz"))
    if stale:
        log.warning("%s: %d chunk(s) were made with other inputs or settings; recomputing them", work, len(stale))
        for p in stale:
            p.unlink()
    atomic_write_text(wf, text)


def _input_key(items: Sequence[tuple[int, Path]]) -> str:
    """Hash of a chunk's input files (path, size, modification time): a chunk whose images changed
    after it was made is recomputed, not reused."""
    h = hashlib.sha256()
    for row, path in items:
        try:
            st = os.stat(path)
            h.update(f"{row}\t{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{row}\t{path}\tmissing\n".encode())
    return h.hexdigest()


def _chunk_is_current(path: Path, items: Sequence[tuple[int, Path]]) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:  # reads only the small `key` member
            return str(z["key"]) == _input_key(items)
    except Exception:  # unreadable or older layout: recompute
        return False


def _save_chunk(path: Path, res: _ChunkResult, key: str) -> None:
    # temp removed on error (a full disk), a killed writer's by the next one (pclbench.core.io.atomic_file)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.asarray(key),
            kept=np.asarray(res.kept, dtype=np.int64),
            crops=res.crops,
            landmarks=res.landmarks.astype(np.float32),
            fail_rows=np.asarray([r for r, _ in res.failures], dtype=np.int64),
            fail_reasons=np.asarray([w for _, w in res.failures], dtype=str),
            seconds=np.asarray([res.seconds[k] for k in ("read", "landmarks", "warp")], dtype=np.float64),
            padding=res.padding.astype(np.float32),
            rejected=np.asarray(res.rejected, dtype=np.int64),
            rejected_crops=res.rejected_crops,
        )
        f.flush()
        os.fsync(f.fileno())


def _load_chunk(path: Path, size: int) -> _ChunkResult:
    with np.load(path, allow_pickle=False) as z:
        crops = z["crops"]
        if crops.shape[1:] != (3, size, size):
            raise ValueError(f"{path}: crops of shape {crops.shape}, expected (k, 3, {size}, {size}); delete it")
        return _ChunkResult(
            kept=z["kept"].tolist(),
            crops=crops,
            landmarks=z["landmarks"],
            failures=list(zip(z["fail_rows"].tolist(), z["fail_reasons"].tolist())),
            seconds=dict(zip(("read", "landmarks", "warp"), z["seconds"].tolist())),
            padding=z["padding"],
            rejected=z["rejected"].tolist(),
            rejected_crops=z["rejected_crops"],
        )


def part_chunks(n_chunks: int, part: int, parts: int) -> range:
    """The contiguous chunk indices of job ``part`` (0-based) out of ``parts``."""
    if not (parts >= 1 and 0 <= part < parts):
        raise ValueError(f"part must be in 0..{parts - 1}, got {part} (of {parts} parts)")
    return range(part * n_chunks // parts, (part + 1) * n_chunks // parts)


def align_chunks(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    workers: int = 1,
    dataset: str | None = None,
    part: int = 0,
    parts: int = 1,
) -> dict:
    """Compute the missing chunks of job ``part`` of ``parts`` into ``work_dir_for(out_dir)``.

    Finished chunks (from an interrupted run or another job) are kept, not recomputed. Returns
    ``{"chunks": [...this job's indices], "computed": [...], "reused": [...], "n_chunks": total}``.
    """
    raw_dir = Path(raw_dir)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = _plan(raw_dir, split, cfg, size, dataset)
    work = work_dir_for(out_dir)
    _prepare_work(work, plan.fingerprint)
    mine = list(part_chunks(len(plan.chunks), part, parts))
    todo = [c for c in mine if not _chunk_is_current(_chunk_path(work, c), plan.chunks[c])]
    reused = [c for c in mine if c not in todo]
    if reused:
        log.info("%s/%s: %d of %d chunk(s) already done in %s", plan.dataset, split, len(reused), len(mine), work)
    desc = f"align {plan.dataset}/{split}" + (f" part {part + 1}/{parts}" if parts > 1 else "")
    n_todo = sum(len(plan.chunks[c]) for c in todo)
    if todo:
        bs = cfg.batch_size
        # Worker processes take batches (not chunks), so a split of a single chunk still uses every
        # worker; a chunk is saved as soon as all its batches are back (imap keeps their order).
        batches = [(c, plan.chunks[c][s : s + bs]) for c in todo for s in range(0, len(plan.chunks[c]), bs)]
        n_batches = Counter(c for c, _ in batches)
        pool = None
        if workers > 1 and len(batches) > 1:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(batches)), _worker_init,
                                                             (cfg, size, plan.dataset))
            results: Iterator[tuple[int, _ChunkResult]] = pool.imap(_worker_run, batches)
        else:
            aligner = _ChunkAligner(cfg, size, plan.dataset)
            results = ((c, aligner.chunk(plan.chunks[c])) for c in todo)
            n_batches = Counter({c: 1 for c in todo})
        pending: dict[int, list[_ChunkResult]] = {}
        bar = _progress(n_todo, desc)
        try:
            for c, res in results:
                pending.setdefault(c, []).append(res)
                bar.update(len(res.kept) + len(res.failures))
                if len(pending[c]) == n_batches[c]:
                    # a chunk file exists only once complete (tmp + os.replace)
                    _save_chunk(_chunk_path(work, c), _concat_results(pending.pop(c), size, cfg.qc_samples),
                                _input_key(plan.chunks[c]))
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    return {"n_chunks": len(plan.chunks), "chunks": mine, "computed": todo, "reused": reused}


def qc_scores(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Alignment QC score per face ``(N,)``: RMS residual of the five alignment points of the crop
    landmarks ``(N, 68, 2)`` after their least-squares similarity fit onto the template, in pixels of
    the crop (0 = the five points are an exact similarity of the template; larger = wrong landmarks,
    extreme pose or expression).

    For ``similarity`` crops the fitted similarity is the identity (the crop points are already the
    least-squares fit), so this is their plain RMS distance from the template; ``box`` crops keep the
    roll and their own scale, which the refit removes, so the score means the same in both modes.
    """
    five = five_points(landmarks)  # (N, 5, 2)
    if len(five) == 0:
        return np.zeros(0)
    measured = np.isfinite(five).all(axis=(1, 2))
    if not measured.all():  # crop mode as_is stores no landmarks (NaN): the score is undefined (nan)
        out = np.full(len(five), np.nan)
        out[measured] = qc_scores(np.asarray(landmarks)[measured], template)
        return out
    d = apply_affine(umeyama(five, template), five) - template  # (N, 5, 2)
    return np.sqrt((d**2).sum(axis=-1).mean(axis=-1))


def contact_sheet(
    images: np.ndarray, indices: Sequence[int], path: Path, captions: Sequence[str] | None = None, cols: int = 8
) -> None:
    """A PNG grid of shard crops ``images[indices]`` (uint8 ``(N, 3, S, S)``), optional caption each."""
    from PIL import ImageDraw

    indices = list(indices)
    s = int(images.shape[-1])
    cell = max(s, 48)
    cap_h = 12 if captions else 0
    cols = max(1, min(cols, len(indices)))
    rows = max(1, -(-len(indices) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * (cell + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(indices):
        x, y = (k % cols) * cell, (k // cols) * (cell + cap_h)
        tile = Image.fromarray(np.asarray(images[i]).transpose(1, 2, 0))
        if s != cell:
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        if captions:
            draw.text((x + 1, y + cell), captions[k], fill=(0, 0, 0))
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")


def merge_chunks(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    dataset: str | None = None,
    keep_work: bool = False,
    extra_qc: dict | None = None,
) -> dict:
    """Gather every chunk of the work folder into the shard ``out_dir`` (atomically); returns qc.

    Raises ``FileNotFoundError`` naming the missing chunks if a job has not finished, and
    :class:`AlignmentError` (writing nothing; the QC goes to ``<work>/qc_failed.json``) when the
    failure rate exceeds ``cfg.max_failure_rate``. The work folder is deleted after success unless
    ``keep_work``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    t_start = time.perf_counter()
    plan = _plan(raw_dir, split, cfg, size, dataset)
    work = work_dir_for(out_dir)
    wf = work / WORK_FILE
    if not wf.is_file() or json.loads(wf.read_text()) != json.loads(json.dumps(plan.fingerprint)):
        raise FileNotFoundError(
            f"{work}: no chunks made for these inputs and settings; run `pclbench align` (all parts) first"
        )
    missing = [c for c, items in enumerate(plan.chunks) if not _chunk_is_current(_chunk_path(work, c), items)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{work}: {len(missing)} of {len(plan.chunks)} chunk(s) not done (or their images changed since): "
            f"{shown}; run the `pclbench align --part` jobs again (finished chunks are kept)"
        )
    n_total = len(plan.rel_paths)
    template = canonical_template(size, cfg.crop_scale, cfg.shift_y)
    seconds: Counter = Counter({"read": 0.0, "landmarks": 0.0, "warp": 0.0})
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    scores: list[np.ndarray] = []
    paddings: list[np.ndarray] = []
    rejected: list[int] = []
    rejected_crops: list[np.ndarray] = []
    desc = f"align {plan.dataset}/{split}"
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, capacity=n_total, size=size)
        try:
            for c in range(len(plan.chunks)):
                res = _load_chunk(_chunk_path(work, c), size)
                writer.append(res.crops, res.landmarks)
                kept.extend(res.kept)
                failures.extend(res.failures)
                seconds.update(res.seconds)
                scores.append(qc_scores(res.landmarks, template))
                paddings.append(res.padding)
                room = cfg.qc_samples - len(rejected)
                rejected.extend(res.rejected[:room])
                rejected_crops.extend(res.rejected_crops[:room])
            score = np.concatenate(scores) if scores else np.zeros(0)
            padding = np.concatenate(paddings) if paddings else np.zeros(0)
            why = dict(failures)
            n_failed = len(failures)
            rate = n_failed / n_total
            by_reason = Counter(reason.split(":")[0] for _, reason in failures)
            n_show = min(cfg.qc_samples, len(kept))
            worst = np.argsort(-score, kind="stable")[:n_show].tolist()
            qc: dict[str, Any] = {
                "dataset": plan.dataset,
                "split": split,
                "backend": plan.fingerprint["backend"],
                "detector": plan.fingerprint["detector"],
                "crop": plan.fingerprint["crop"],
                "box": plan.fingerprint["box"],
                "points": cfg.points,
                "size": size,
                "template": template.round(4).tolist(),
                "n_total": n_total,
                "n_kept": len(kept),
                "n_failed": n_failed,
                "failure_rate": rate,
                "max_failure_rate": cfg.max_failure_rate,
                "failures_by_reason": dict(sorted(by_reason.items())),
                "failures": [{"row": r, "path": plan.rel_paths[r], "reason": why} for r, why in failures],
                "score": {
                    "definition": "RMS residual of the five crop points after their least-squares similarity "
                                  "fit onto the template, in px of the crop",
                    # rows without landmarks (align.crop as_is) have no score: NaN, left out here
                    # so qc.json stays standard JSON
                    "n_scored": int(np.isfinite(score).sum()),
                    "median": _stat(np.median, score),
                    "p95": _stat(lambda v: np.percentile(v, 95), score),
                    "max": _stat(np.max, score),
                    "worst": [{"row": int(i), "path": plan.rel_paths[kept[i]], "score": float(score[i])}
                              for i in worst if np.isfinite(score[i])],
                },
                "padding": {
                    "definition": "fraction of a kept crop's pixels outside its image (black)",
                    "median": float(np.median(padding)) if len(padding) else None,
                    "p95": float(np.percentile(padding, 95)) if len(padding) else None,
                    "max": float(padding.max()) if len(padding) else None,
                },
                # QC-rejected crops shown first on qc_worst.png (align.qc), at most qc_samples
                "rejected_shown": [{"path": plan.rel_paths[r], "reason": why[r]} for r in rejected],
                "n_chunks": len(plan.chunks),
                "chunk_size": cfg.chunk_size,
                "timings_s": {
                    # stage times summed over chunks, workers and jobs (CPU time, not wall time);
                    # merge = this gathering step's wall time
                    **{k: seconds[k] for k in ("read", "landmarks", "warp")},
                },
                "config": dataclasses.asdict(cfg),
                **(extra_qc or {}),
            }
            if rate > cfg.max_failure_rate:
                examples = "; ".join(f"{plan.rel_paths[r]}: {why}" for r, why in failures[:5])
                failed_qc = work / "qc_failed.json"
                failed_qc.write_text(json.dumps(qc, indent=2) + "\n")
                raise AlignmentError(
                    f"{desc}: {n_failed}/{n_total} images failed ({rate:.1%} > align.max_failure_rate "
                    f"{cfg.max_failure_rate:.1%}); by reason: {json.dumps(dict(by_reason))}; first: {examples}. "
                    f"Nothing was written to {out_dir}; the full QC is in {failed_qc}."
                )
            qc["timings_s"]["merge"] = time.perf_counter() - t_start
            writer.close(plan.manifest.iloc[kept], qc)
        except BaseException:
            writer.abort()
            raise
        # QC files next to qc.json: every failed file, a sheet of samples, a sheet of the worst scores.
        pd.DataFrame(
            {"row": [r for r, _ in failures], "path": [plan.rel_paths[r] for r, _ in failures],
             "reason": [w for _, w in failures]}
        ).to_csv(tmp / "failures.csv", index=False)
        if kept:
            images = np.load(tmp / "images.npy", mmap_mode="r")
            sample = np.unique(np.linspace(0, len(kept) - 1, n_show).round().astype(int)).tolist()
            contact_sheet(images, sample, tmp / "qc_samples.png")
        if kept or rejected:
            # the worst cases: the QC-rejected crops (caption: why) first, then the worst-scoring kept ones
            tiles = list(rejected_crops) + ([np.asarray(images[i]) for i in worst] if kept else [])
            captions = ([_REJECT_TAGS.get(why[r].split(":")[0], "REJ") for r in rejected]
                        + [f"{score[i]:.2f}" for i in worst])
            contact_sheet(np.stack(tiles), range(len(tiles)), tmp / "qc_worst.png", captions=captions)
        if kept:
            del images
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: kept %d/%d (%.2f%% failed) -> %s", desc, len(kept), n_total, 100 * rate, out_dir)
    return qc


def align_split(
    raw_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    cfg: AlignConfig,
    size: int,
    workers: int = 1,
    dataset: str | None = None,
    keep_work: bool = False,
) -> dict:
    """Align ``<raw_dir>/<split>.csv`` into the shard folder ``out_dir``; returns the qc dict.

    ``size`` is the crop size S (64 for pretraining, per task for evaluation). ``workers`` > 1 runs
    chunks in that many spawned processes (each builds its own backend; keep 1 for a GPU backend).
    ``dataset`` (default: the raw folder's name) selects ``align.detectors[dataset]``. Resumable:
    chunks finished by an interrupted run are reused (see :func:`align_chunks`). Raises
    :class:`AlignmentError` (and writes nothing) when the failure rate exceeds
    ``cfg.max_failure_rate``; an existing shard at ``out_dir`` is only replaced on success.
    """
    t = time.perf_counter()
    info = align_chunks(raw_dir, split, out_dir, cfg, size, workers=workers, dataset=dataset)
    wall = time.perf_counter() - t
    extra = {"workers": workers, "chunks_reused": len(info["reused"])}
    qc = merge_chunks(raw_dir, split, out_dir, cfg, size, dataset=dataset, keep_work=keep_work, extra_qc=extra)
    total = time.perf_counter() - t
    qc["timings_s"]["total"] = total
    qc["images_per_s"] = qc["n_total"] / total if total > 0 else None
    qc["timings_s"]["chunks_wall"] = wall
    qc_path = Path(out_dir) / "qc.json"
    atomic_write_text(qc_path, json.dumps(qc, indent=2) + "\n")
    return qc
