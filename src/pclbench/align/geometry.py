"""Crop geometry: landmarks -> the affine transform of a face crop, and the alignment QC score (pure numpy).

docs/architecture.md, "Stage 2". The crop transform of a face, by the dataset's crop mode
(``align.crop`` / ``align.crops``):

* ``similarity``: the least-squares similarity (rotation + uniform scale + translation, no
  reflection; Umeyama 1991) from the five ArcFace points of the 68 landmarks (eye centres, nose
  tip, mouth corners) to a canonical template. It levels the eyes, so it removes head roll: the
  protocol of face recognition / expression / AU crops, wrong for head pose.
* ``box``: an axis-aligned box around the landmarks, enlarged by margins, NO rotation
  (:func:`box_transform`): the head-pose protocols crop this way (Hopenet, FSA-Net, 6DRepNet; see
  :func:`box_transform` for the cited code), so roll stays in the image;
* ``as_is``: no transform (released aligned crops, pclbench.data.passthrough).

Template: the standard 5-point ArcFace template of a 112 x 112 crop (InsightFace), normalised to the
unit square, then scaled about the crop centre by ``crop_scale`` (the face's size relative to that
tight crop; < 1 zooms out and keeps more context) and shifted down by ``shift_y`` crop heights.

Coordinates are (x, y), 0-based, (0, 0) = the centre of the top-left pixel (see landmarks.py). In
the unit square the crop spans [0, 1] edge to edge, so pixel-centre p of an S-pixel crop sits at
(p + 0.5) / S; the ArcFace numbers are pixel-centre coordinates (they are used with OpenCV's
warpAffine), hence ``(ARCFACE_112 + 0.5) / 112``.

QC score of a kept face (:func:`qc_scores`): RMS residual of the five crop points after their best
similarity fit to the template.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from pclbench.align.landmarks import five_points
from pclbench.data.passthrough import AS_IS  # crop mode as_is: released aligned crops taken as they are

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


# Crop modes (align.crop / align.crops) and the shapes of a `box` crop (align.box.shape).
CROP_MODES = ("similarity", "box", AS_IS)
BOX_SHAPES = ("square", "center_crop", "stretch")


class BoxCrop(Protocol):
    """What :func:`box_transform` reads of ``align.box`` (:class:`pclbench.align.aligner.BoxCropOptions`)."""

    @property
    def margin(self) -> Sequence[float]: ...  # [left, top, right, bottom] box enlargement, fractions of w/h

    @property
    def shape(self) -> str: ...  # one of BOX_SHAPES


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



def alignment_transforms(landmarks: np.ndarray, template: np.ndarray, points: str) -> np.ndarray:
    """Similarities ``(B, 2, 3)`` taking landmarks ``(B, 68, 2)`` onto the template."""
    if points != "five":
        raise ValueError(f"points: only 'five' is implemented, got {points!r}")
    return umeyama(five_points(landmarks), template)


def box_transform(landmarks: np.ndarray, image_size: tuple[int, int], size: int, opts: BoxCrop) -> np.ndarray:
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
    box: BoxCrop | None = None,
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
