"""300W-LP (training) and AFLW2000-3D (testing) head pose, Zhu et al. CVPR 2016 (3DDFA) -> stage 1.

Release layouts (public downloads from the 3DDFA project page, CUHK/CASIA, Xiangyu Zhu)::

    300W-LP.zip  -> 300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/<name>.jpg + <name>.mat
                    300W_LP/landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat      (+ Code/)
    AFLW2000-3D.zip -> AFLW2000/image00002.jpg + image00002.mat

Format facts and where they come from (public code that reads the release):

* Top-level folders ``AFW AFW_Flip Code HELEN HELEN_Flip IBUG IBUG_Flip landmarks LFPW LFPW_Flip``:
  the ``ls`` in cleardusk/3DDFA_V2 issue #118 ("Ground Truth 2D landmarks in 300W-LP dataset").
* The ``.mat`` beside each image holds ``Pose_Para`` (1x7: pitch, yaw, roll in RADIANS, then tx, ty,
  tz, scale; natanielruiz/deep-head-pose ``code/datasets.py``, shamangary/FSA-Net
  ``data/type1/TYY_create_db_type1.py``), the 3DMM ``Shape_Para`` / ``Exp_Para`` / ... and ``pt2d`` (2x68).
  ``pt2d`` is the SOURCE photo's 68 points, identical for all profiled views ``<photo>_0 ... _k``:
  tensorflow/datasets ``tensorflow_datasets/datasets/the300w_lp/the300w_lp_dataset_builder.py`` stores
  it as ``landmarks_origin``; cleardusk/3DDFA issue #192 reports ``IBUG_image_011_1_0.mat`` and
  ``IBUG_image_011_1_10.mat`` carrying "the exact same landmark while their faces are rotated".
* Each view's OWN points are ``landmarks/<subset>/<name>_pts.mat`` with ``pts_2d`` and ``pts_3d``, both
  (68, 2) = (point, x/y) as stored (the TFDS builder above reads both without a transpose; public
  viewers index ``pts_2d[i][0], pts_2d[i][1]``, e.g. Chenxu-nmsu/Face_AI_Application
  ``02_face_landmarks/read_300wlp_data.py``; spacejake/face-alignment ``datasets/W300LP.py`` picks
  ``pts_2d`` or ``pts_3d`` from the same file). ``pts_3d`` are the projected 3D landmarks (points
  hidden by the head are drawn where they project); ``pts_2d`` are "snapped" to the visible face
  contour (3DDFA_V2 issue #118, with a picture). Which one: key ``landmark_key`` (below).
* ``landmarks/`` has only the four unflipped subsets: the TFDS builder derives landmark paths for the
  unflipped folders only; merlresearch/LUVLi ``splits_prep/organize_300W_LP.py`` reads
  ``landmarks/{AFW,HELEN,IBUG,LFPW}``; a public mat-to-txt script (its repository not identified by
  the search index) counts 5,207 + 37,676 + 1,786 + 16,556 = 61,225 files there, the unflipped image
  count (TFDS: 61,225 examples). No public source shows ``landmarks/*_Flip``. So a ``_Flip``
  view's points are DERIVED by mirroring its unflipped twin's ``_pts.mat`` (a
  ``landmarks/<X>_Flip/<name>_pts.mat``, if a release has one, is used as is).
  How the ``_Flip`` images were made is not published; natanielruiz/deep-head-pose issue #97 shows a
  ``_Flip`` ``Pose_Para`` that is close to, not exactly, the mirrored pose (re-fitted). The parser
  therefore MEASURES the mirror assumption on the data (``flip_check`` in meta.json: the ``_Flip``
  image against the left-right mirror of its twin's pixels, and the pose pair) and the key
  ``flip_landmarks: drop`` leaves ``_Flip`` views without their own landmark file out.
* Mirroring: in 0-based pixel centres a column x of a W-wide image goes to W - 1 - x (W + 1 - x in
  Matlab's 1-based ones), and the iBUG-68 left/right points swap
  (:data:`pclbench.data.synth_render.IBUG68_FLIP_PERMUTATION`, the pairs of HRNet/HRNet-Facial-
  Landmark-Detection ``lib/utils/transforms.py`` ``MATCHED_PARTS["300W"]``; HRNet maps x -> W - x, a
  half-open pixel convention, not the pixel-centre one used here).
* Index base: the release is made in Matlab, 1-based: 3DDFA's projection ends with
  ``y = height + 1 - y`` (cleardusk/3DDFA ``utils/ddfa.py`` ``reconstruct_vertex``:
  ``std_size + 1 - vertex[1, :]``) and the Python port subtracts 1 "for Python compatibility"
  (cleardusk/3DDFA_V2 ``utils/tddfa_util.py`` ``similar_transform``). No source states the base of ``pts_2d``/``pts_3d``
  themselves, and spacejake/face-alignment ``datasets/W300LP.py`` adds 1 to them as if 0-based, so
  the base is the key ``landmark_index_base`` (default 1: stored value minus 1 = our 0-based .pts).
* AFLW2000-3D ``.mat``: ``Pose_Para`` as above, ``pt3d_68`` (3x68: x, y and depth of the 68 fitted
  points, per image) and ``pt2d`` = AFLW's 21-point markup, not iBUG-68 (TFDS ``aflw2k3d`` builder).
  ``pt3d_68`` is the same kind of point as 300W-LP ``pts_3d`` (projected fitted model), hence that
  default for training.
* Rotation model: 3DDFA's ``RotationMatrix``: R = Rx(pitch) Ry(yaw) Rz(roll) with
  Rx = [[1,0,0],[0,c,s],[0,-s,c]], Ry = [[c,0,-s],[0,1,0],[s,0,c]], Rz = [[c,s,0],[-s,c,0],[0,0,1]],
  projection f R S + t, then image y = height + 1 - y.

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
the PCL logs' pitch/yaw/roll column labels are likely swapped (docs/method.md §4.2); here ``yaw`` is yaw.

Checks ON THE DATA (meta.json):

* ``convention_check``: sign agreement; for strongly turned faces the nose tip must lie on the side the
  yaw sign says, for strongly rolled faces the eye line must tilt the way the roll sign says (a warning
  below 90 %).
* ``landmark_pose_check`` (:func:`landmark_pose_check`): do the landmarks MOVE with the labelled pose?
  A yaw proxy (nose-tip offset from the eye midpoint, in the de-rolled frame, over the eye-chin
  distance) must follow -sin(yaw) image by image and, for 300W-LP, WITHIN each photo's views. The
  source-photo ``pt2d`` bug gives identical points for views 40 degrees apart: the within-photo slope
  ratio is then 0 (correct points: about 1). Error below 0.5, warning below 0.8 (key
  ``landmark_check: error | warn``); the per-image agreement and the correlation are recorded and
  judged the same way.

Filter (docs/method.md §3.6, FSA-Net / Hopenet practice): samples with any angle outside [-99, 99] degrees
are dropped and counted (AFLW2000-3D: 2,000 -> 1,969 in the literature). ``subject``: 300W-LP = the
source photo (``AFW_134212_1`` for all profiled views ``_0 ... _k`` and their ``_Flip`` copies, so
validation carving never splits one photo), AFLW2000-3D -1.

Parser keys of the dataset entry (``datasets.<name>.<key>`` in config/config.yaml; first value = the
default when absent): 300w_lp: ``landmark_key`` pts_3d | pts_2d, ``landmark_index_base`` 1 | 0,
``flip_landmarks`` mirror | drop, ``landmark_check`` error | warn; aflw2000: ``landmark_index_base``,
``landmark_check``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pclbench.core.io import atomic_dir
from pclbench.align.landmarks import LEFT_EYE, NOSE_TIP, RIGHT_EYE
from pclbench.data.synth_render import IBUG68_FLIP_PERMUTATION
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (POSE_CONVENTION, SourceFormatError, SourceLayoutError, check_splits,
                     inside, is_regular_file, log, make_row, place_image, save_pts, write_manifest, write_meta)

LAYOUT_300WLP = """  <source>/300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/<name>.jpg + <name>.mat (Pose_Para 1x7)
  <source>/300W_LP/landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat (pts_2d, pts_3d 68x2: each view's own points)
     (300W-LP.zip unpacked; the subset folders directly under <source> are accepted too)"""
LAYOUT_AFLW = """  <source>/AFLW2000/image00002.jpg + image00002.mat (Pose_Para 1x7, pt3d_68 3x68)
     (AFLW2000-3D.zip unpacked; the files directly under <source> are accepted too)"""

SUBSETS_300WLP = ("AFW", "AFW_Flip", "HELEN", "HELEN_Flip", "IBUG", "IBUG_Flip", "LFPW", "LFPW_Flip")
FLIP_SUFFIX = "_Flip"
LANDMARK_DIR = "landmarks"
MAX_ABS_DEG = 99.0

#: The parsers' keys in their dataset entry: name -> allowed values, the first is the default.
OPTIONS_300WLP: dict[str, tuple] = {"landmark_key": ("pts_3d", "pts_2d"), "landmark_index_base": (1, 0),
                                    "flip_landmarks": ("mirror", "drop"), "landmark_check": ("error", "warn")}
OPTIONS_AFLW: dict[str, tuple] = {"landmark_index_base": (1, 0), "landmark_check": ("error", "warn")}

# landmark_pose_check thresholds. Correct per-view points are projections of the model whose angles
# are the labels, so the statistics sit near 1 (0.97-0.99 on a simulated release with 1.5 px noise);
# the source-photo points give a within-photo ratio of exactly 0. 0.8 / 0.5 leave a wide margin both ways.
CHECK_MIN_N = 20             # images needed for the per-image statistics
CHECK_MIN_YAW_STD = 10.0     # degrees of yaw spread needed (a frontal-only set says nothing)
CHECK_MIN_GROUPS = 5         # photos with >= 2 views spanning CHECK_MIN_SPAN degrees of yaw
CHECK_MIN_SPAN = 15.0
CHECK_TOL_DEG = 25.0         # per image: |yaw implied by the landmarks - labelled yaw| within this
CHECK_WARN, CHECK_ERROR = 0.8, 0.5
# flip_check: mirrored-twin pixel difference over unmirrored difference, on an even sample of pairs.
FLIP_PIXEL_SAMPLES = 200
FLIP_PIXEL_WARN = 0.5


def parser_options(entry: Mapping, dataset: str, allowed: Mapping[str, tuple]) -> dict:
    """The parser's keys of the dataset entry (``datasets.<dataset>.<key>``), absent = the default
    (first allowed value); any other value is refused naming the key. The schema lists the keys too."""
    out = {}
    for key, values in allowed.items():
        v = entry.get(key, values[0])
        if isinstance(v, bool) or v not in values:  # bool: True == 1 must not pass as an index base
            raise ValueError(f"datasets.{dataset}.{key} is {v!r}; allowed: {list(values)}")
        out[key] = v
    return out


def pose_from_para(pose_para) -> tuple[float, float, float]:
    """3DDFA ``Pose_Para`` (pitch, yaw, roll radians first) -> stage-1 (yaw, pitch, roll) degrees."""
    p = np.asarray(pose_para, dtype=np.float64).reshape(-1)
    if p.size < 3 or not np.all(np.isfinite(p[:3])):
        raise ValueError(f"Pose_Para must hold at least 3 finite values, got {p.tolist()}")
    pitch, yaw, roll = np.degrees(p[:3])
    return float(yaw), float(pitch), float(-roll)


def within_range(yaw: float, pitch: float, roll: float, limit: float = MAX_ABS_DEG) -> bool:
    return all(abs(a) <= limit for a in (yaw, pitch, roll))


def points68(arr, where: str) -> np.ndarray:
    """A 68-point array as stored ((68, 2|3) or (2|3, 68)) -> (68, 2) x, y in the file's index base."""
    a = np.asarray(arr, dtype=np.float64)
    if a.shape in ((68, 2), (68, 3)):
        xy = a[:, :2]
    elif a.shape in ((2, 68), (3, 68)):
        xy = a[:2].T
    else:
        raise SourceFormatError(f"{where}: shape {a.shape}, expected 68 points as (68, 2|3) or (2|3, 68)")
    if not np.all(np.isfinite(xy)):
        raise SourceFormatError(f"{where}: non-finite landmark coordinates")
    return np.array(xy)


def mirror_points(lm: np.ndarray, width: int) -> np.ndarray:
    """(68, 2) 0-based points of an image -> those of its left-right mirror (W wide): x -> W - 1 - x,
    and each point takes its left/right partner's index (iBUG-68)."""
    out = np.array(lm, dtype=np.float64)[IBUG68_FLIP_PERMUTATION]  # (68, 2)
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def convention_check(poses: np.ndarray, lms: np.ndarray, min_yaw: float = 30.0, min_roll: float = 15.0) -> dict:
    """Agreement of the converted angles' SIGNS with the landmark geometry.

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


def yaw_proxy(lms: np.ndarray, roll_deg: np.ndarray) -> np.ndarray:
    """Landmark yaw proxy (N,): horizontal offset of the nose tip from the eye midpoint over the
    eye-midpoint-to-chin distance, measured after undoing the labelled roll.

    Under the 3DDFA projection a point at depth z moves by -z sin(yaw) horizontally, and the nose tip
    stands in front of the eyes, so the proxy is about -k sin(yaw) with k > 0 a face-shape constant
    (nose depth over eye-chin height); it is blind to translation and scale. NaN where degenerate.
    """
    lms = np.asarray(lms, dtype=np.float64)  # (N, 68, 2)
    r = np.radians(np.asarray(roll_deg, dtype=np.float64))[:, None]  # (N, 1)
    d = lms - lms.mean(axis=1, keepdims=True)
    # stage-1 roll r > 0 turned the face counter-clockwise on screen (y down): rotate back by -r
    x = np.cos(r) * d[..., 0] - np.sin(r) * d[..., 1]  # (N, 68)
    y = np.sin(r) * d[..., 0] + np.cos(r) * d[..., 1]
    eyes = list(LEFT_EYE) + list(RIGHT_EYE)
    ex, ey = x[:, eyes].mean(axis=1), y[:, eyes].mean(axis=1)  # (N,)
    h = np.hypot(x[:, 8] - ex, y[:, 8] - ey)  # iBUG 8 = chin
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (x[:, NOSE_TIP] - ex) / h
    s[~(h > 0)] = np.nan
    return s


def landmark_pose_check(poses: np.ndarray, lms: np.ndarray, groups: Sequence | None = None) -> dict:
    """Do the landmarks agree with the labelled yaw? (meta.json ``landmark_pose_check``)

    poses (N, 3) stage-1 degrees; lms (N, 68, 2); groups: one hashable per image (the views of one
    photo share it) or None. Statistics (each None when the data cannot say):

    * ``yaw_proxy_corr``: Pearson correlation of :func:`yaw_proxy` with -sin(yaw);
    * ``yaw_agreement``: fraction of images whose landmark-implied yaw, asin(-proxy / k) with k the
      least-squares slope over all images, is within ``CHECK_TOL_DEG`` of the label;
    * ``within_photo_slope_ratio``: the slope of proxy on -sin(yaw) fitted WITHIN photos (each photo's
      mean removed) over k. Views of one photo carrying the same points give 0, however well the
      photos' own points fit their photos' poses (the reviewer's 300W-LP case, where the aggregate
      correlation can stay near 0.9 because views turn further the way the photo already faces).

    ``verdict`` is "error" if a statistic is below CHECK_ERROR, "warn" below CHECK_WARN, "ok",
    or "insufficient data"; ``problems`` says which.
    """
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    lms = np.asarray(lms, dtype=np.float64).reshape(-1, 68, 2)
    s = yaw_proxy(lms, poses[:, 2])  # (N,)
    t = -np.sin(np.radians(poses[:, 0]))  # (N,)
    ok = np.isfinite(s)
    out: dict = {"n": int(ok.sum()), "yaw_proxy_corr": None, "yaw_proxy_slope": None, "yaw_agreement": None,
                 "within_photo_slope_ratio": None, "n_photo_groups": 0, "photo_groups_identical_landmarks": 0}
    k = None
    if ok.sum() >= CHECK_MIN_N and np.std(poses[ok, 0]) >= CHECK_MIN_YAW_STD:
        so, to = s[ok], t[ok]
        out["yaw_proxy_corr"] = float(np.corrcoef(so, to)[0, 1]) if np.std(so) > 0 else 0.0
        k = float(so @ to / (to @ to))
        out["yaw_proxy_slope"] = k
        if k > 0:
            implied = np.degrees(np.arcsin(np.clip(-so / k, -1.0, 1.0)))
            out["yaw_agreement"] = float(np.mean(np.abs(implied - poses[ok, 0]) <= CHECK_TOL_DEG))
        else:
            out["yaw_agreement"] = 0.0
    if groups is not None:
        members: dict = {}
        for i, g in enumerate(groups):
            if ok[i]:
                members.setdefault(g, []).append(i)
        sst = stt = 0.0
        for idx in members.values():
            if len(idx) < 2 or np.ptp(poses[idx, 0]) < CHECK_MIN_SPAN:
                continue
            out["n_photo_groups"] += 1
            if np.allclose(lms[idx], lms[idx[0]], atol=1e-3):
                out["photo_groups_identical_landmarks"] += 1
            ds, dt = s[idx] - s[idx].mean(), t[idx] - t[idx].mean()
            sst, stt = sst + float(ds @ dt), stt + float(dt @ dt)
        if out["n_photo_groups"] >= CHECK_MIN_GROUPS and k is not None and k > 0 and stt > 0:
            out["within_photo_slope_ratio"] = (sst / stt) / k
    stats = {name: out[name] for name in ("yaw_proxy_corr", "yaw_agreement", "within_photo_slope_ratio")
             if out[name] is not None}
    problems = [f"{name} = {v:.3f} < {CHECK_WARN if v >= CHECK_ERROR else CHECK_ERROR}"
                for name, v in stats.items() if v < CHECK_WARN]
    if not stats:
        out["verdict"] = "insufficient data"
    elif any(v < CHECK_ERROR for v in stats.values()):
        out["verdict"] = "error"
    else:
        out["verdict"] = "warn" if problems else "ok"
    out["problems"] = problems
    out["rule"] = (f"proxy = nose-tip x offset from the eye midpoint / eye-chin distance (de-rolled), expected "
                   f"-k sin(yaw); needs >= {CHECK_MIN_N} images with yaw std >= {CHECK_MIN_YAW_STD} deg (photo "
                   f"groups: >= {CHECK_MIN_GROUPS} with >= 2 views spanning >= {CHECK_MIN_SPAN} deg); agreement "
                   f"tolerance {CHECK_TOL_DEG} deg; warn < {CHECK_WARN}, error < {CHECK_ERROR}")
    return out


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat

    if not is_regular_file(path):
        raise SourceFormatError(f"{path}: not a regular file (a FIFO or device?)")
    try:
        return loadmat(str(path))
    except Exception as e:  # scipy raises several types for a broken file
        raise SourceFormatError(f"{path}: not a readable .mat file ({e})") from None


def _need(mat: dict, key: str, path: Path, what: str):
    if key not in mat:
        raise SourceFormatError(f"{path}: key {key!r} missing; {what} (found "
                                f"{sorted(k for k in mat if not k.startswith('__'))})")
    return mat[key]


def _pose(mat: dict, path: Path) -> tuple[float, float, float]:
    para = _need(mat, "Pose_Para", path, "the 3DDFA release .mat beside each image has Pose_Para")
    try:
        return pose_from_para(para)
    except ValueError as e:
        raise SourceFormatError(f"{path}: {e}") from None


def _image_width(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0])
    except Exception as e:  # PIL raises several types for a broken file
        raise SourceFormatError(f"{path}: not a readable image ({e})") from None


def _mirror_pixel_ratio(flip_jpg: Path, twin_jpg: Path) -> float | None:
    """mean |flip - mirror(twin)| / mean |flip - twin| in grey levels; ~0 when the ``_Flip`` image is the
    left-right mirror of its twin (JPEG noise aside), ~1 when it is not. None if uninformative."""
    from PIL import Image

    try:
        with Image.open(flip_jpg) as a, Image.open(twin_jpg) as b:
            fa = np.asarray(a.convert("L"), dtype=np.float64)  # (H, W)
            fb = np.asarray(b.convert("L"), dtype=np.float64)
    except Exception as e:
        raise SourceFormatError(f"{flip_jpg} / {twin_jpg}: not readable images ({e})") from None
    if fa.shape != fb.shape:
        return None
    plain = float(np.abs(fa - fb).mean())
    if plain < 1.0:  # a left-right symmetric picture cannot tell mirrored from not
        return None
    return float(np.abs(fa - fb[:, ::-1]).mean()) / plain


def _summary(x: list[float]) -> dict | None:
    if not x:
        return None
    a = np.abs(np.asarray(x, dtype=np.float64))
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "max": float(a.max()), "n": len(a)}


class _Sample:
    """One image: its pose and its (68, 2) 0-based points, or why it is dropped."""
    __slots__ = ("jpg", "rel", "subject", "group", "pose", "lm", "drop", "origin")

    def __init__(self, jpg, rel, subject, group):
        self.jpg, self.rel, self.subject, self.group = jpg, rel, subject, group
        self.pose = self.lm = self.drop = self.origin = None


def _prepare(dataset: str, split: str, entry: Mapping, source: Path, out: Path, samples: list[_Sample], load,
             layout: str, options: dict, grouped: bool, notes: dict, finish=None) -> dict:
    """samples: listed images; load(sample) fills pose / lm / origin or sets drop (a dropped-counter key);
    finish() -> extra meta.json fields, called once after the loop."""
    check_splits(entry, dataset, (split,))
    if not samples:
        raise SourceLayoutError(f"no .jpg images found for {dataset} under {source}; expected the official "
                                f"layout:\n{layout}")
    rows, poses, lms, groups = [], [], [], []
    dropped = {"out_of_range_99deg": 0, "mat_missing": 0}
    examples: dict[str, list[str]] = {}
    origins: dict[str, int] = {}
    with atomic_dir(out) as tmp:
        progress = Progress(f"prepare {dataset}", len(samples), unit="img", logger=log)
        for smp in samples:
            progress.update()
            mat = smp.jpg.with_suffix(".mat")
            for p in (smp.jpg, mat):  # globbed names are safe; a symlink out of the release is not
                if os.path.lexists(p):
                    inside(source, p.relative_to(source).as_posix(), where=str(p))
            if not is_regular_file(smp.jpg) or (os.path.lexists(mat) and not is_regular_file(mat)):
                smp.drop = "not_regular_file"  # a FIFO would block forever, a device never ends: never opened
                log.warning("%s: %s or its .mat is not a regular file (FIFO, device or dangling link); skipped",
                            dataset, smp.jpg)
            else:
                load(smp)
            if smp.drop is None and not within_range(*smp.pose):
                smp.drop = "out_of_range_99deg"
            if smp.drop is not None:
                dropped[smp.drop] = dropped.get(smp.drop, 0) + 1
                ex = examples.setdefault(smp.drop, [])
                if len(ex) < 10:
                    ex.append(smp.rel)
                continue
            place_image(smp.jpg, tmp / smp.rel, where=str(smp.jpg))
            save_pts((tmp / smp.rel).with_suffix(".pts"), smp.lm, where=str(smp.jpg))
            yaw, pitch, roll = smp.pose
            rows.append(make_row(smp.rel, subject=smp.subject, yaw=yaw, pitch=pitch, roll=roll))
            poses.append(smp.pose)
            lms.append(smp.lm)
            groups.append(smp.group)
            origins[smp.origin] = origins.get(smp.origin, 0) + 1
        progress.close()
        write_manifest(tmp, split, rows)
        poses_a, lms_a = np.array(poses).reshape(-1, 3), np.array(lms).reshape(-1, 68, 2)
        check = convention_check(poses_a, lms_a)
        lp_check = landmark_pose_check(poses_a, lms_a, groups if grouped else None)
        meta = write_meta(tmp, dataset, source, pose_convention=POSE_CONVENTION,
                          pose_conversion="yaw = deg(Pose_Para[1]), pitch = deg(Pose_Para[0]), "
                                          "roll = -deg(Pose_Para[2]) (3DDFA roll > 0 is clockwise in the image)",
                          angle_filter=f"samples with any |angle| > {MAX_ABS_DEG} degrees dropped",
                          options=options, landmark_origin=origins, convention_check=check,
                          landmark_pose_check=lp_check, splits={split: len(rows)}, n_images=len(rows),
                          n_source_images=len(samples), dropped=dropped,
                          dropped_examples=examples.get("out_of_range_99deg", []), dropped_examples_by_reason=examples,
                          **notes, **(finish() if finish is not None else {}))
        if lp_check["verdict"] == "error" and options["landmark_check"] == "error":
            raise SourceFormatError(
                f"{dataset}: the landmarks do not follow the labelled pose ({'; '.join(lp_check['problems'])}; "
                f"{lp_check['photo_groups_identical_landmarks']} of {lp_check['n_photo_groups']} photos carry "
                f"identical points in views at different yaw). Aligned crops would be misplaced; check which "
                f"landmark files were read ({notes.get('landmarks')}). Nothing was written; set "
                f"datasets.{dataset}.landmark_check: warn to write it anyway.")
    for k in ("yaw_sign_agreement", "roll_sign_agreement"):
        if check.get(k) is not None and check[k] < 0.9:
            log.warning("%s: only %.0f%% of the samples agree with the expected %s sign; check the pose conversion "
                        "(meta.json convention_check)", dataset, 100 * check[k], k.split("_")[0])
    if lp_check["verdict"] in ("warn", "error"):
        log.warning("%s: landmarks and labelled pose disagree (%s); see meta.json landmark_pose_check",
                    dataset, "; ".join(lp_check["problems"]))
    log.info("prepared %s: %d kept, dropped %s", dataset, len(rows), dropped)
    return meta


# ---------------------------------------------------------------------------------------------- 300W-LP

def _find_300wlp_root(source: Path) -> Path:
    for cand in ("300W_LP", "300W-LP", "."):
        if any((source / cand / s).is_dir() for s in SUBSETS_300WLP):
            return source if cand == "." else source / cand
    raise SourceLayoutError(f"none of the 300W-LP subset folders {SUBSETS_300WLP} found under {source}/300W_LP "
                            f"or {source}; expected the official layout:\n{LAYOUT_300WLP}")


@PARSERS.register("300w_lp")
def prepare_300w_lp(entry: Mapping, source: Path, out: Path) -> dict:
    source = Path(source)
    options = parser_options(entry, "300w_lp", OPTIONS_300WLP)
    root = _find_300wlp_root(source)
    if not (root / LANDMARK_DIR).is_dir():
        raise SourceLayoutError(f"{root}/{LANDMARK_DIR}/ is missing: 300W-LP's per-view landmarks "
                                f"(landmarks/<subset>/<name>_pts.mat) are needed, the .mat beside each image "
                                f"holds the source photo's points (pt2d), the same for all its rotated views. "
                                f"Expected the official layout:\n{LAYOUT_300WLP}")
    key, base = options["landmark_key"], options["landmark_index_base"]
    samples, present = [], []
    for subset in SUBSETS_300WLP:
        d = root / subset
        if not d.is_dir():
            continue
        present.append(subset)
        for jpg in sorted(d.glob("*.jpg")):
            # AFW_134212_1_3 -> source photo AFW_134212_1 (views _0.._k and the _Flip copy share it)
            photo = jpg.stem.rsplit("_", 1)[0]
            samples.append(_Sample(jpg, f"images/{subset}/{jpg.name}", photo, (subset, photo)))
    n_flip = sum(s.group[0].endswith(FLIP_SUFFIX) for s in samples)
    stride = max(1, n_flip // FLIP_PIXEL_SAMPLES)
    flip = {"n": 0, "yaw_sum": [], "pitch_diff": [], "roll_sum": [], "pixel_ratio": []}  # mirrored-twin views

    def landmark_file(subset: str, stem: str) -> Path | None:
        rel = f"{LANDMARK_DIR}/{subset}/{stem}_pts.mat"
        p = inside(root, rel, where=str(root / rel))  # a symlink out of the release is refused
        return p if p.exists() else None

    def read_points(path: Path) -> np.ndarray | None:
        if not is_regular_file(path):  # a FIFO or device: never opened (the caller drops the view)
            log.warning("300w_lp: %s is not a regular file (FIFO, device or dangling link); skipped", path)
            return None
        mat = _load_mat(path)
        arr = _need(mat, key, path, "300W-LP landmarks/<subset>/<name>_pts.mat holds pts_2d and pts_3d (68 x 2)")
        return points68(arr, f"{path}: {key}") - base  # (68, 2) 0-based

    def load(smp: _Sample) -> None:
        mat_path = smp.jpg.with_suffix(".mat")
        if not mat_path.is_file():
            smp.drop = "mat_missing"
            return
        smp.pose = _pose(_load_mat(mat_path), mat_path)
        subset, stem = smp.group[0], smp.jpg.stem
        own = landmark_file(subset, stem)
        if own is not None:
            smp.lm, smp.origin = read_points(own), f"{LANDMARK_DIR}/<subset>/<name>_pts.mat {key}"
            if smp.lm is None:
                smp.drop = "not_regular_file"
            return
        if not subset.endswith(FLIP_SUFFIX):
            smp.drop = "landmarks_missing"
            return
        if options["flip_landmarks"] == "drop":
            smp.drop = "flip_without_own_landmarks"
            return
        twin_subset = subset[: -len(FLIP_SUFFIX)]
        twin = landmark_file(twin_subset, stem)
        if twin is None:
            smp.drop = "landmarks_missing"
            return
        twin_points = read_points(twin)
        if twin_points is None:
            smp.drop = "not_regular_file"
            return
        width = _image_width(smp.jpg)
        smp.lm = mirror_points(twin_points, width)
        smp.origin = f"mirrored {LANDMARK_DIR}/<unflipped twin>/<name>_pts.mat {key}"
        # Measure the mirror assumption: the twin's labels and pixels against this view's.
        twin_mat = inside(root, f"{twin_subset}/{stem}.mat", where=str(smp.jpg))  # no symlink out
        if is_regular_file(twin_mat):
            ty, tp, tr = _pose(_load_mat(twin_mat), twin_mat)
            y, p, r = smp.pose
            flip["yaw_sum"].append(y + ty)
            flip["pitch_diff"].append(p - tp)
            flip["roll_sum"].append(r + tr)
        twin_jpg = inside(root, f"{twin_subset}/{smp.jpg.name}", where=str(smp.jpg))
        if flip["n"] % stride == 0 and len(flip["pixel_ratio"]) < FLIP_PIXEL_SAMPLES and is_regular_file(twin_jpg):
            ratio = _mirror_pixel_ratio(smp.jpg, twin_jpg)
            if ratio is not None:
                flip["pixel_ratio"].append(ratio)
        flip["n"] += 1

    def finish() -> dict:
        return {"flip_check": {
            "what": "_Flip views whose points are the mirrored unflipped twin's: |yaw_flip + yaw_twin|, "
                    "|pitch_flip - pitch_twin|, |roll_flip + roll_twin| in degrees (0 for an exact mirror), and "
                    "mean|flip - mirror(twin)| / mean|flip - twin| grey levels on an even sample of image pairs "
                    f"(~0 when the _Flip image is the pixel mirror; warning above {FLIP_PIXEL_WARN})",
            "n_views": flip["n"], "yaw": _summary(flip["yaw_sum"]), "pitch": _summary(flip["pitch_diff"]),
            "roll": _summary(flip["roll_sum"]), "pixel_mirror_ratio": _summary(flip["pixel_ratio"])}}

    meta = _prepare("300w_lp", "train", entry, source, out, samples, load, LAYOUT_300WLP, options, True,
                    {"subsets": present, "subject_note": "subject = source photo (all profiled views and flips)",
                     "landmarks": f"{LANDMARK_DIR}/<subset>/<name>_pts.mat {key} minus {base} (index base) as "
                                  f"0-based .pts; _Flip views without their own file: "
                                  f"{options['flip_landmarks']} (mirrored twin: x -> W - 1 - x, iBUG-68 "
                                  f"left/right swap). The .mat's pt2d (the source photo's points) is not used."},
                    finish)
    pr = (meta.get("flip_check") or {}).get("pixel_mirror_ratio")
    if pr is not None and pr["median"] > FLIP_PIXEL_WARN:
        log.warning("300w_lp: the _Flip images are not pixel mirrors of their unflipped twins (median ratio %.2f); "
                    "their mirrored landmarks may be off. Consider datasets.300w_lp.flip_landmarks: "
                    "drop (meta.json flip_check)", pr["median"])
    return meta


# ---------------------------------------------------------------------------------------------- AFLW2000-3D

@PARSERS.register("aflw2000")
def prepare_aflw2000(entry: Mapping, source: Path, out: Path) -> dict:
    source = Path(source)
    options = parser_options(entry, "aflw2000", OPTIONS_AFLW)
    root = None
    for cand in ("AFLW2000", "AFLW2000-3D", "."):
        d = source if cand == "." else source / cand
        if d.is_dir() and any(d.glob("image*.mat")):
            root = d
            break
    if root is None:
        raise SourceLayoutError(f"no AFLW2000-3D image*.mat files under {source}/AFLW2000 or {source}; expected the "
                                f"official layout:\n{LAYOUT_AFLW}")
    base = options["landmark_index_base"]
    samples = [_Sample(jpg, f"images/{jpg.name}", -1, None) for jpg in sorted(root.glob("*.jpg"))]

    def load(smp: _Sample) -> None:
        mat_path = smp.jpg.with_suffix(".mat")
        if not mat_path.is_file():
            smp.drop = "mat_missing"
            return
        mat = _load_mat(mat_path)
        smp.pose = _pose(mat, mat_path)
        arr = _need(mat, "pt3d_68", mat_path, "the AFLW2000-3D .mat has Pose_Para and pt3d_68 (3 x 68)")
        smp.lm = points68(arr, f"{mat_path}: pt3d_68") - base
        smp.origin = "pt3d_68 x, y"

    return _prepare("aflw2000", "test", entry, source, out, samples, load, LAYOUT_AFLW, options, False,
                    {"landmarks": f"pt3d_68 (first two rows) minus {base} (index base) as 0-based .pts",
                     "landmark_note": "pt3d_68 x, y (pt2d is AFLW's 21-point markup, not used)"})


__all__ = ["LAYOUT_300WLP", "LAYOUT_AFLW", "OPTIONS_300WLP", "OPTIONS_AFLW", "SUBSETS_300WLP", "convention_check",
           "landmark_pose_check", "mirror_points", "parser_options", "points68", "pose_from_para", "yaw_proxy"]
