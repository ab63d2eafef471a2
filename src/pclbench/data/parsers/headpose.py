"""300W-LP (training) and AFLW2000-3D (testing) head pose, Zhu et al. CVPR 2016 (3DDFA) -> stage 1.

Official layouts (public downloads from the 3DDFA project page, CUHK/CASIA, Xiangyu Zhu)::

    300W-LP.zip  -> 300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/<name>.jpg + <name>.mat   (+ landmarks/, Code/)
    AFLW2000-3D.zip -> AFLW2000/image00002.jpg + image00002.mat

Each ``.mat`` holds ``Pose_Para`` (1x7: pitch, yaw, roll in RADIANS, then tx, ty, tz, scale), the 3DMM
``Shape_Para`` / ``Exp_Para`` and landmarks: 300W-LP ``pt2d`` (2x68, the image's 68 iBUG points),
AFLW2000-3D ``pt3d_68`` (3x68: x, y and depth of the 68 fitted points; its ``pt2d`` is AFLW's 21-point
markup, not iBUG-68). [Relied on: the TensorFlow-Datasets ``the300w_lp`` builder (keys, 2x68 shapes,
``landmarks/<subset>/<name>_pts.mat``), Hopenet / FSA-Net loaders (``Pose_Para[:3]`` = pitch, yaw,
roll in radians), and 3DDFA's ``RotationMatrix``: R = Rx(pitch) Ry(yaw) Rz(roll) with
Rx = [[1,0,0],[0,c,s],[0,-s,c]], Ry = [[c,0,-s],[0,1,0],[s,0,c]], Rz = [[c,s,0],[-s,c,0],[0,0,1]],
projection f R S + t, then image y = height + 1 - y (Matlab, 1-based).]

Conversion to the stage-1 convention (docs/architecture.md: yaw > 0 = the face turns to the image
left, pitch > 0 = looks up, roll > 0 = counter-clockwise in the image), derived from that model
(model axes: x to the image right, y up, z towards the camera):

* yaw:   Ry(+g) moves the nose tip (0, 0, z>0) to x = -z sin g < 0, the image LEFT  -> ``yaw = +deg(Pose_Para[1])``
* pitch: Rx(+p) moves the nose tip to y = +z sin p (up in the model, up in the image) -> ``pitch = +deg(Pose_Para[0])``
* roll:  Rz(+r) moves a point on the image right (x>0) to y = -x sin r (DOWN in the image): clockwise
  on screen -> ``roll = -deg(Pose_Para[2])``

So only roll changes sign (Hopenet's draw_axis, which negates nothing for roll and draws it clockwise,
agrees). Mean absolute errors are unchanged by a sign convention applied to labels and predictions
alike, so MAEs stay comparable with FSA-Net / Hopenet tables. Columns are named, never positional:
the PCL logs' pitch/yaw/roll column labels are likely swapped (method doc 4.2); here ``yaw`` is yaw.
meta.json also records a check of the convention ON THE DATA: for strongly turned faces the nose tip
must lie on the side the yaw sign says, and for strongly rolled faces the eye line must tilt the way
the roll sign says (``convention_check``; a warning is logged below 90 % agreement).

Filter (method doc 3.6, FSA-Net / Hopenet practice): samples with any angle outside [-99, 99] degrees
are dropped and counted (AFLW2000-3D: 2,000 -> 1,969 in the literature). Landmarks are written as
0-based ``.pts`` (Matlab 1-based coordinates minus 1; assumed from the Matlab projection above).
``subject``: 300W-LP = the source photo (``AFW_134212_1`` for all profiled views ``_0 ... _k`` and
their ``_Flip`` copies, so validation carving never splits one photo), AFLW2000-3D -1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ...io import atomic_dir
from . import PARSERS
from .stage1 import (POSE_CONVENTION, Progress, SourceFormatError, SourceLayoutError, check_splits, log,
                     make_row, place_image, save_pts, write_manifest, write_meta)
from ..landmarks import LEFT_EYE, NOSE_TIP, RIGHT_EYE

LAYOUT_300WLP = """  <source>/300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/<name>.jpg + <name>.mat (Pose_Para 1x7, pt2d 2x68)
     (300W-LP.zip unpacked; the subset folders directly under <source> are accepted too)"""
LAYOUT_AFLW = """  <source>/AFLW2000/image00002.jpg + image00002.mat (Pose_Para 1x7, pt3d_68 3x68)
     (AFLW2000-3D.zip unpacked; the files directly under <source> are accepted too)"""

SUBSETS_300WLP = ("AFW", "AFW_Flip", "HELEN", "HELEN_Flip", "IBUG", "IBUG_Flip", "LFPW", "LFPW_Flip")
MAX_ABS_DEG = 99.0
MATLAB_INDEX_BASE = 1


def pose_from_para(pose_para) -> tuple[float, float, float]:
    """3DDFA ``Pose_Para`` (pitch, yaw, roll radians first) -> stage-1 (yaw, pitch, roll) degrees."""
    p = np.asarray(pose_para, dtype=np.float64).reshape(-1)
    if p.size < 3 or not np.all(np.isfinite(p[:3])):
        raise ValueError(f"Pose_Para must hold at least 3 finite values, got {p.tolist()}")
    pitch, yaw, roll = np.degrees(p[:3])
    return float(yaw), float(pitch), float(-roll)


def within_range(yaw: float, pitch: float, roll: float, limit: float = MAX_ABS_DEG) -> bool:
    return all(abs(a) <= limit for a in (yaw, pitch, roll))


def convention_check(poses: np.ndarray, lms: np.ndarray, min_yaw: float = 30.0, min_roll: float = 15.0) -> dict:
    """Agreement of the converted angles with the landmark geometry.

    poses (N, 3) = (yaw, pitch, roll) degrees; lms (N, 68, 2) image (x, y). Yaw: for |yaw| >= min_yaw the
    nose tip must lie left of the eye midpoint when yaw > 0 (face turned to the image left). Roll: for
    |roll| >= min_roll and |yaw| < min_yaw the image-right eye must be HIGHER (smaller y) when roll > 0
    (counter-clockwise).
    """
    out = {}
    if len(poses):
        eye_l = lms[:, list(LEFT_EYE)].mean(axis=1)  # (N, 2) image-left eye centre
        eye_r = lms[:, list(RIGHT_EYE)].mean(axis=1)
        nose_dx = lms[:, NOSE_TIP, 0] - (eye_l[:, 0] + eye_r[:, 0]) / 2  # < 0: nose left of the eyes
        sel = np.abs(poses[:, 0]) >= min_yaw
        agree = np.sign(poses[sel, 0]) == -np.sign(nose_dx[sel])
        out["yaw_sign_agreement"] = float(np.mean(agree)) if sel.any() else None
        out["yaw_n"] = int(sel.sum())
        tilt = eye_l[:, 1] - eye_r[:, 1]  # > 0: image-right eye higher
        sel = (np.abs(poses[:, 2]) >= min_roll) & (np.abs(poses[:, 0]) < min_yaw)
        out["roll_sign_agreement"] = float(np.mean(np.sign(poses[sel, 2]) == np.sign(tilt[sel]))) if sel.any() else None
        out["roll_n"] = int(sel.sum())
    out["rule"] = (f"|yaw| >= {min_yaw}: yaw > 0 <=> nose tip left of the eye midpoint; |roll| >= {min_roll} "
                   f"(and |yaw| < {min_yaw}): roll > 0 <=> image-right eye higher")
    return out


def _load_mat(path: Path, landmark_key: str) -> tuple[tuple[float, float, float], np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a broken file
        raise SourceFormatError(f"{path}: not a readable .mat file ({e})") from None
    for key in ("Pose_Para", landmark_key):
        if key not in mat:
            raise SourceFormatError(f"{path}: key {key!r} missing; the 3DDFA release .mat has Pose_Para and "
                                    f"{landmark_key} (found {sorted(k for k in mat if not k.startswith('__'))})")
    try:
        pose = pose_from_para(mat["Pose_Para"])
    except ValueError as e:
        raise SourceFormatError(f"{path}: {e}") from None
    pts = np.asarray(mat[landmark_key], dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 68 or pts.shape[0] not in (2, 3):
        raise SourceFormatError(f"{path}: {landmark_key} has shape {pts.shape}, expected (2, 68) or (3, 68)")
    lm = pts[:2].T - MATLAB_INDEX_BASE  # (68, 2) 0-based pixel centres
    return pose, lm


def _prepare(dataset: str, split: str, entry: Mapping, source: Path, out: Path, files: list[tuple[Path, str, str]],
             landmark_key: str, layout: str, notes: dict) -> dict:
    """files: [(jpg, output rel path, subject)]."""
    check_splits(entry, dataset, (split,))
    if not files:
        raise SourceLayoutError(f"no .jpg images found for {dataset} under {source}; expected the official "
                                f"layout:\n{layout}")
    rows, poses, lms = [], [], []
    dropped = {"out_of_range_99deg": 0, "mat_missing": 0}
    examples: list[str] = []
    with atomic_dir(out) as tmp:
        progress = Progress(len(files), f"prepare {dataset}")
        for jpg, rel, subject in files:
            progress.update()
            mat = jpg.with_suffix(".mat")
            if not mat.is_file():
                dropped["mat_missing"] += 1
                continue
            (yaw, pitch, roll), lm = _load_mat(mat, landmark_key)
            if not within_range(yaw, pitch, roll):
                dropped["out_of_range_99deg"] += 1
                if len(examples) < 10:
                    examples.append(rel)
                continue
            place_image(jpg, tmp / rel)
            save_pts((tmp / rel).with_suffix(".pts"), lm)
            rows.append(make_row(rel, subject=subject, yaw=yaw, pitch=pitch, roll=roll))
            poses.append((yaw, pitch, roll))
            lms.append(lm)
        progress.close()
        write_manifest(tmp, split, rows)
        check = convention_check(np.array(poses).reshape(-1, 3), np.array(lms).reshape(-1, 68, 2))
        meta = write_meta(tmp, dataset, source, pose_convention=POSE_CONVENTION,
                          pose_conversion="yaw = deg(Pose_Para[1]), pitch = deg(Pose_Para[0]), "
                                          "roll = -deg(Pose_Para[2]) (3DDFA roll > 0 is clockwise in the image)",
                          angle_filter=f"samples with any |angle| > {MAX_ABS_DEG} degrees dropped",
                          landmarks=f"{landmark_key} (first two rows) minus 1 (Matlab 1-based) as 0-based .pts",
                          convention_check=check, splits={split: len(rows)}, n_images=len(rows),
                          n_source_images=len(files), dropped=dropped, dropped_examples=examples, **notes)
    for k in ("yaw_sign_agreement", "roll_sign_agreement"):
        if check.get(k) is not None and check[k] < 0.9:
            log.warning("%s: only %.0f%% of the samples agree with the expected %s sign; check the pose conversion "
                        "(meta.json convention_check)", dataset, 100 * check[k], k.split("_")[0])
    log.info("prepared %s: %d kept, dropped %s", dataset, len(rows), dropped)
    return meta


@PARSERS.register("300w_lp")
def prepare_300w_lp(entry: Mapping, source: Path, out: Path) -> dict:
    source = Path(source)
    root = None
    for cand in ("300W_LP", "300W-LP", "."):
        if any((source / cand / s).is_dir() for s in SUBSETS_300WLP):
            root = source if cand == "." else source / cand
            break
    if root is None:
        raise SourceLayoutError(f"none of the 300W-LP subset folders {SUBSETS_300WLP} found under {source}/300W_LP "
                                f"or {source}; expected the official layout:\n{LAYOUT_300WLP}")
    files, present = [], []
    for subset in SUBSETS_300WLP:
        d = root / subset
        if not d.is_dir():
            continue
        present.append(subset)
        for jpg in sorted(d.glob("*.jpg")):
            # AFW_134212_1_3 -> source photo AFW_134212_1 (views _0.._k and the _Flip copy share it)
            files.append((jpg, f"images/{subset}/{jpg.name}", jpg.stem.rsplit("_", 1)[0]))
    return _prepare("300w_lp", "train", entry, source, out, files, "pt2d", LAYOUT_300WLP,
                    {"subsets": present, "subject_note": "subject = source photo (all profiled views and flips)"})


@PARSERS.register("aflw2000")
def prepare_aflw2000(entry: Mapping, source: Path, out: Path) -> dict:
    source = Path(source)
    root = None
    for cand in ("AFLW2000", "AFLW2000-3D", "."):
        d = source if cand == "." else source / cand
        if d.is_dir() and any(d.glob("image*.mat")):
            root = d
            break
    if root is None:
        raise SourceLayoutError(f"no AFLW2000-3D image*.mat files under {source}/AFLW2000 or {source}; expected the "
                                f"official layout:\n{LAYOUT_AFLW}")
    files = [(jpg, f"images/{jpg.name}", -1) for jpg in sorted(root.glob("*.jpg"))]
    return _prepare("aflw2000", "test", entry, source, out, files, "pt3d_68", LAYOUT_AFLW,
                    {"landmark_note": "pt3d_68 x, y (pt2d is AFLW's 21-point markup, not used)"})
