"""SynthFaces: the built-in offline face datasets (pretraining clips and labelled evaluation sets).

No public face set labelled for expression, action units or identity can be fetched offline
(docs: offline-resources), so the default pipeline runs on SynthFaces, rendered here from a seed by
:mod:`pclbench.data.synth_render` (a 3D head with FACS action units, head pose, lighting and
background; see that module for the geometry and the angle / landmark conventions). The datasets
mirror the roles of the paper's data (PCL, Liu et al. CVPR 2023; docs/method.md):

``synth_vox``           VoxCeleb-like pretraining set (split ``train``): identity / clip / frame. Within
                        a clip, head pose and expression (AU intensities) move smoothly between random
                        keyframes; identity, lighting, background and framing are fixed per clip.
``synth_expression``    RAF-DB-like FER set (``train``, ``test``): subject-disjoint, classes exactly
                        balanced, every subject shows every expression.
``synth_verification``  LFW-like set (``all`` + ``pairs.csv``): 10 folds of disjoint identities, half
                        same / half different pairs per fold; one identity's images vary in pose,
                        expression, lighting, background and framing.
``synth_au``            DISFA-like AU set (``all``): 3 subject-exclusive folds (column ``fold``); half of
                        the images show expression prototypes, half random AU combinations, so every
                        AU occurs in a sizeable fraction of images and AUs are not tied to expressions.
``synth_pose``          300W-LP / AFLW2000-like head-pose set (``train``, ``test``): subject-disjoint,
                        pose uniform over the configured ranges.

Identity pools: every dataset draws its own identities from ``(seed, dataset)``; identity k of one
dataset is an independent draw from the identity distribution, unrelated to identity k of another.
No person therefore appears in two datasets: in particular the verification identities are
disjoint from the pretraining (``synth_vox``) ones, the role of VoxCeleb's ``remove_id`` list
(which removes LFW overlaps).

Layout (docs/architecture.md, Stage 1): ``images/<split>/<subject>/<name>.png`` (for synth_vox
``images/<subject>/clipNN/frameNN.png``) with the iBUG-68 ground truth in ``<name>.pts`` next to
each image (0-based pixel centres, ``index_base: 0``), one manifest ``<split>.csv`` per split with
columns :data:`MANIFEST_COLUMNS`, ``pairs.csv`` (verification) and ``meta.json``.

Conventions (details in :mod:`pclbench.data.synth_render`): angles in degrees, order (yaw, pitch,
roll); yaw > 0 turns the face towards the *image left* (the subject turns to their right), pitch > 0
looks up, roll > 0 tilts the head counter-clockwise in the image. A horizontal flip maps the pose to
(-yaw, pitch, -roll) (:func:`hflip_pose`) and the landmarks by ``x -> W - 1 - x`` plus
:data:`IBUG68_FLIP_PERMUTATION` (:func:`hflip_landmarks`). Landmarks are 0-based pixel centres; all
68 are given even when self-occluded (projected 3D points, as in 300W-LP / AFLW2000-3D). AU columns
are FACS intensities 0-5 (occurrence = intensity >= 2); ``expression`` is -1 where no single
expression applies (synth_vox frames blend keyframes; synth_au random AU combinations).

Determinism: every random draw comes from ``np.random.SeedSequence(seed, spawn_key=(dataset,
kind, index...))``, PNGs are written with fixed settings and no metadata, and floats are rounded
before rendering and written with fixed formats, so the same seed gives the same bytes whatever
the number of worker processes.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pclbench.core.config import ConfigError, setting
from pclbench.core.io import atomic_dir, atomic_file
from pclbench.core.progress import Progress
from pclbench.align import pts as _pts
from pclbench.data.synth_render import (  # noqa: F401  (re-exported public API)
    AU_NAMES,
    EXPRESSIONS,
    IBUG68_FLIP_PERMUTATION,
    PROTOTYPES,
    Identity,
    Scene,
    landmarks_3d,
    render_face,
    rotation,
    sample_identity,
    sample_scene,
)

log = logging.getLogger(__name__)

#: The SynthFaces dataset names.
DATASETS: tuple[str, ...] = ("synth_vox", "synth_expression", "synth_verification", "synth_au", "synth_pose")

#: Bump when the renderer or the sampling changes what a seed produces.
SYNTH_VERSION = "1.0"

#: Manifest columns written for every dataset (docs/architecture.md, Stage 1).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "subject", "clip", "frame", "yaw", "pitch", "roll", "expression", "fold",
) + AU_NAMES

_SUBJECT_PREFIX = {
    "synth_vox": "vox", "synth_expression": "expr", "synth_verification": "ver", "synth_au": "au", "synth_pose": "pose",
}
# spawn-key "kinds" of the seed tree
_K_IDENTITY, _K_IMAGE, _K_STRUCTURE = 0, 1, 2


# --------------------------------------------------------------------------------------------------
# Configuration (the `synth` section; every value comes from the config file)
# --------------------------------------------------------------------------------------------------


@dataclass
class VoxConfig:
    """synth_vox, VoxCeleb-like pretraining clips (split train)."""

    n_identities: int = setting("identities (disjoint from other SynthFaces sets)", minimum=1)
    clips_per_identity: int = setting("clips per identity (own lighting/background/framing)", minimum=1)
    frames_per_clip: int = setting("frames per clip", minimum=2)
    keyframes_per_clip: int = setting("pose/expression keyframes per clip, eased between", minimum=2)


@dataclass
class ExpressionConfig:
    """synth_expression, RAF-DB-like FER set (train/test, subject-disjoint, balanced classes)."""

    n_identities_train: int = setting("subjects of the train split", minimum=1)
    n_identities_test: int = setting("subjects of the test split", minimum=1)
    images_per_class_train: int = setting("train images per expression class", minimum=1)
    images_per_class_test: int = setting("test images per expression class", minimum=1)


@dataclass
class VerificationConfig:
    """synth_verification, LFW-like pairs (split all + pairs.csv, identity-disjoint folds)."""

    n_folds: int = setting("folds with disjoint identities", minimum=2)
    identities_per_fold: int = setting("identities per fold", minimum=2)
    images_per_identity: int = setting("images per identity", minimum=2)
    pairs_per_fold: int = setting("pairs per fold, half same and half different", minimum=2, multipleOf=2)


@dataclass
class AUConfig:
    """synth_au, DISFA-like AU set (split all, subject-exclusive folds)."""

    n_identities: int = setting("subjects (subject k in fold k mod n_folds)", minimum=2)
    n_images: int = setting("images spread evenly over the subjects", minimum=2)
    n_folds: int = setting("subject-exclusive folds", minimum=2)
    expression_fraction: float = setting("fraction of images showing expression prototypes", minimum=0, maximum=1)
    au_probability: float = setting("per-AU activation probability in a random combination",
                                    exclusiveMinimum=0, maximum=1)
    au_intensity: list[float] = setting("[lo, hi] intensity of an active AU in a random combination",
                                        items={"type": "number", "exclusiveMinimum": 0, "maximum": 5},
                                        minItems=2, maxItems=2)


@dataclass
class PoseConfig:
    """synth_pose, head-pose regression set (train/test, subject-disjoint, pose uniform)."""

    n_identities_train: int = setting("subjects of the train split", minimum=1)
    n_identities_test: int = setting("subjects of the test split", minimum=1)
    n_train: int = setting("train images", minimum=1)
    n_test: int = setting("test images", minimum=1)


@dataclass
class SynthConfig:
    """SynthFaces, the built-in offline datasets rendered from a seed (pclbench.data.synth).

    Types and ranges are checked by the schema generated from these fields (at the boundary:
    :func:`pclbench.core.config.from_dict`); :meth:`__post_init__` checks only what a JSON schema
    cannot state, relations between keys.
    """

    seed: int = setting("root of every random draw (identities, poses, AUs, scenes, splits, pairs)", minimum=0)
    image_size: int = setting("side of the square output frame in pixels", minimum=32, maximum=1024)
    supersample: int = setting("render at this multiple of image_size and box-filter down (anti-aliasing)",
                               minimum=1, maximum=4)
    face_scale: list[float] = setting("[lo, hi] nominal brow-to-chin face height as a fraction of the frame (uniform)",
                                      items={"type": "number", "minimum": 0.1, "maximum": 1.0},
                                      minItems=2, maxItems=2)
    center_jitter: float = setting("max offset of the face centre from the frame centre, fraction of the frame",
                                   minimum=0, maximum=0.25)
    max_yaw: float = setting("yaw uniform in [-max_yaw, max_yaw] degrees (yaw > 0 turns the face to the image left)",
                             minimum=0, maximum=90)
    max_pitch: float = setting("pitch uniform in [-max_pitch, max_pitch] degrees (pitch > 0 looks up)",
                               minimum=0, maximum=60)
    max_roll: float = setting("roll uniform in [-max_roll, max_roll] degrees (roll > 0 counter-clockwise in the image)",
                              minimum=0, maximum=60)
    expression_intensity: list[float] = setting("[lo, hi] FACS intensity (0-5) of the AUs of an expression prototype",
                                                items={"type": "number", "exclusiveMinimum": 0, "maximum": 5},
                                                minItems=2, maxItems=2)
    vox: VoxConfig = setting("synth_vox, VoxCeleb-like pretraining clips (split train)")
    expression: ExpressionConfig = setting(
        "synth_expression, RAF-DB-like FER set (train/test, subject-disjoint, balanced classes)")
    verification: VerificationConfig = setting(
        "synth_verification, LFW-like pairs (split all + pairs.csv, identity-disjoint folds)")
    au: AUConfig = setting("synth_au, DISFA-like AU set (split all, subject-exclusive folds)")
    pose: PoseConfig = setting("synth_pose, head-pose regression set (train/test, subject-disjoint, pose uniform)")

    def __post_init__(self) -> None:
        """Cross-field constraints (no JSON-schema keyword relates two values); ConfigError names the key."""

        def need(ok: bool, key: str, value, what: str):
            if not ok:
                raise ConfigError(f"synth.{key} = {value!r}: {what}")

        need(self.face_scale[0] <= self.face_scale[1], "face_scale", self.face_scale, "must be [lo, hi] with lo <= hi")
        lo_hi = self.expression_intensity
        need(lo_hi[0] <= lo_hi[1], "expression_intensity", lo_hi, "must be [lo, hi] with lo <= hi")
        f = self.verification
        n_same = f.identities_per_fold * f.images_per_identity * (f.images_per_identity - 1) // 2
        need(f.pairs_per_fold // 2 <= n_same, "verification.pairs_per_fold", f.pairs_per_fold,
             f"asks for {f.pairs_per_fold // 2} same pairs per fold but only {n_same} exist")
        a = self.au
        need(a.n_identities >= a.n_folds, "au.n_identities", a.n_identities, "must be >= au.n_folds")
        need(a.n_images >= a.n_identities, "au.n_images", a.n_images, "must be >= au.n_identities")
        need(a.au_intensity[0] <= a.au_intensity[1], "au.au_intensity", a.au_intensity,
             "must be [lo, hi] with lo <= hi")
        p = self.pose
        need(p.n_train >= p.n_identities_train, "pose.n_train", p.n_train, "must be >= pose.n_identities_train")
        need(p.n_test >= p.n_identities_test, "pose.n_test", p.n_test, "must be >= pose.n_identities_test")


# --------------------------------------------------------------------------------------------------
# .pts and flips
# --------------------------------------------------------------------------------------------------


def read_pts(path) -> np.ndarray:
    """Read a SynthFaces ``.pts`` file -> (68, 2) (x, y), 0-based pixel centres."""
    return _pts.read_pts(path, index_base=0)


def write_pts(path, pts) -> None:
    """Write (68, 2) 0-based (x, y) landmarks as an iBUG ``.pts`` file (``version: 1``, 0-based)."""
    _pts.write_pts(path, pts, index_base=0)


def hflip_landmarks(lm: np.ndarray, width: int) -> np.ndarray:
    """Landmarks (..., 68, 2) of an image -> those of its horizontal flip (mirror x, swap sides)."""
    lm = np.asarray(lm)
    out = lm[..., IBUG68_FLIP_PERMUTATION, :].copy()
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def hflip_pose(yaw: float, pitch: float, roll: float) -> tuple[float, float, float]:
    """Pose of the horizontally flipped image (see the angle convention in synth_render)."""
    return -yaw, pitch, -roll


# --------------------------------------------------------------------------------------------------
# Sampling one labelled instance
# --------------------------------------------------------------------------------------------------


def _seed(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def _identity(seed: int, name: str, k: int) -> Identity:
    return sample_identity(_seed(seed, DATASETS.index(name), _K_IDENTITY, k))


def expression_aus(rng: np.random.Generator, expression: int, intensity: tuple[float, float]) -> dict[str, float]:
    """AU intensities of one instance of an expression: core AUs always, optional AUs with p = 1/2."""
    core, optional = PROTOTYPES[EXPRESSIONS[expression]]
    aus = {k: float(rng.uniform(*intensity)) for k in core}
    for k in optional:
        draw = rng.uniform(*intensity)
        if rng.uniform() < 0.5:
            aus[k] = float(draw)
    return aus


def random_aus(rng: np.random.Generator, p: float, intensity: tuple[float, float]) -> dict[str, float]:
    """An arbitrary AU combination: every AU independently active with probability p."""
    active = rng.uniform(size=len(AU_NAMES)) < p
    values = rng.uniform(intensity[0], intensity[1], size=len(AU_NAMES))
    return {k: float(x) for k, x, on in zip(AU_NAMES, values, active) if on}


def _pose(rng: np.random.Generator, cfg: SynthConfig) -> tuple[float, float, float]:
    return (float(rng.uniform(-cfg.max_yaw, cfg.max_yaw)), float(rng.uniform(-cfg.max_pitch, cfg.max_pitch)),
            float(rng.uniform(-cfg.max_roll, cfg.max_roll)))


def _r(x: float, nd: int = 3) -> float:
    return float(round(float(x), nd)) + 0.0  # + 0.0 turns -0.0 into 0.0


# --------------------------------------------------------------------------------------------------
# Jobs: one per identity (the renderer caches an identity's static head between its images)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    index: int         # row order in the manifests (assigned once the whole dataset is planned)
    split: str
    rel: str           # image path relative to the dataset folder
    subject: str
    key: tuple         # seed spawn key of this image (or clip)
    mode: str          # "expression:<k>", "au", "vox"
    fold: int = -1
    clip: int = -1
    frame: int = -1


def _plan(name: str, cfg: SynthConfig, seed: int) -> tuple[dict[int, list[_Item]], dict]:
    """Every image of a dataset, grouped by identity; plus structure (pairs) decided up front."""
    d = DATASETS.index(name)
    pre = _SUBJECT_PREFIX[name]
    jobs: dict[int, list[_Item]] = {}
    extra: dict = {}

    def subj(k):
        return f"{pre}_{k:04d}"

    if name == "synth_vox":
        v = cfg.vox
        for k in range(v.n_identities):
            for c in range(v.clips_per_identity):
                for f in range(v.frames_per_clip):
                    jobs.setdefault(k, []).append(_Item(
                        index=0, split="train", rel=f"images/{subj(k)}/clip{c:02d}/frame{f:02d}.png",
                        subject=subj(k), key=(d, _K_IMAGE, k, c), mode="vox", clip=c, frame=f))
    elif name == "synth_expression":
        e = cfg.expression
        splits = [("train", 0, e.n_identities_train, e.images_per_class_train),
                  ("test", e.n_identities_train, e.n_identities_test, e.images_per_class_test)]
        for si, (split, first, n_ids, per_class) in enumerate(splits):
            for i in range(per_class * len(EXPRESSIONS)):
                cls = i % len(EXPRESSIONS)
                k = first + (i // len(EXPRESSIONS)) % n_ids
                jobs.setdefault(k, []).append(_Item(
                    index=0, split=split, rel=f"images/{split}/{subj(k)}/{i:05d}.png", subject=subj(k),
                    key=(d, _K_IMAGE, si, i), mode=f"expression:{cls}"))
    elif name == "synth_verification":
        f = cfg.verification
        paths: dict[int, list[str]] = {}
        for fold in range(f.n_folds):
            for j in range(f.identities_per_fold):
                k = fold * f.identities_per_fold + j
                for m in range(f.images_per_identity):
                    rel = f"images/all/{subj(k)}/{m:02d}.png"
                    paths.setdefault(k, []).append(rel)
                    jobs.setdefault(k, []).append(_Item(
                        index=0, split="all", rel=rel, subject=subj(k), key=(d, _K_IMAGE, k, m),
                        mode="expression:-1", fold=fold))
        extra["pairs"] = _verification_pairs(cfg, seed, d, paths)
    elif name == "synth_au":
        a = cfg.au
        for i in range(a.n_images):
            k = i % a.n_identities
            jobs.setdefault(k, []).append(_Item(
                index=0, split="all", rel=f"images/all/{subj(k)}/{i:05d}.png", subject=subj(k),
                key=(d, _K_IMAGE, i), mode="au", fold=k % a.n_folds))
    elif name == "synth_pose":
        p = cfg.pose
        splits = [("train", 0, p.n_identities_train, p.n_train), ("test", p.n_identities_train, p.n_identities_test, p.n_test)]
        for si, (split, first, n_ids, n) in enumerate(splits):
            for i in range(n):
                k = first + i % n_ids
                jobs.setdefault(k, []).append(_Item(
                    index=0, split=split, rel=f"images/{split}/{subj(k)}/{i:05d}.png", subject=subj(k),
                    key=(d, _K_IMAGE, si, i), mode="expression:-1"))
    else:
        raise ValueError(f"unknown SynthFaces dataset {name!r}; known: {', '.join(DATASETS)}")
    # row order: by split, then by the order the items were planned in
    order = 0
    split_rank = {"train": 0, "test": 1, "all": 2}
    items = sorted((it for its in jobs.values() for it in its), key=lambda it: (split_rank[it.split], it.rel))
    for it in items:
        it.index = order
        order += 1
    return jobs, extra


def _verification_pairs(cfg: SynthConfig, seed: int, d: int, paths: dict[int, list[str]]) -> list[tuple]:
    """Per fold: pairs_per_fold / 2 distinct same-identity pairs and as many different-identity pairs."""
    f = cfg.verification
    out = []
    for fold in range(f.n_folds):
        rng = _seed(seed, d, _K_STRUCTURE, fold)
        ids = list(range(fold * f.identities_per_fold, (fold + 1) * f.identities_per_fold))
        same = [(paths[k][i], paths[k][j]) for k in ids for i in range(len(paths[k])) for j in range(i + 1, len(paths[k]))]
        pick = rng.choice(len(same), size=f.pairs_per_fold // 2, replace=False)
        rows = [(fold, *same[int(t)], 1) for t in sorted(pick)]
        seen = set()
        while len(rows) < f.pairs_per_fold:
            ka, kb = rng.choice(ids, size=2, replace=False)
            pa = paths[int(ka)][int(rng.integers(f.images_per_identity))]
            pb = paths[int(kb)][int(rng.integers(f.images_per_identity))]
            if (pa, pb) in seen or (pb, pa) in seen:
                continue
            seen.add((pa, pb))
            rows.append((fold, pa, pb, 0))
        out += rows
    return out




def _clip_frames(rng: np.random.Generator, cfg: SynthConfig) -> tuple[Scene, list[tuple[tuple[float, float, float], dict]]]:
    """One pretraining clip: a fixed scene and smoothly eased poses / AU intensities between keyframes.

    The first keyframe's pose is uniform over the ranges; each next one moves by at most half the
    range per axis (a head turning, not teleporting). Keyframe expressions are random prototypes.
    """
    v = cfg.vox
    scene = sample_scene(rng, tuple(cfg.face_scale), cfg.center_jitter)
    limits = np.array([cfg.max_yaw, cfg.max_pitch, cfg.max_roll])
    poses = [np.array(_pose(rng, cfg))]
    for _ in range(v.keyframes_per_clip - 1):
        step = rng.uniform(-0.5, 0.5, 3) * limits
        poses.append(np.clip(poses[-1] + step, -limits, limits))
    expr = [expression_aus(rng, int(rng.integers(len(EXPRESSIONS))), tuple(cfg.expression_intensity))
            for _ in range(v.keyframes_per_clip)]
    au_keys = np.array([[e.get(k, 0.0) for k in AU_NAMES] for e in expr])  # (K, n_AU)
    out = []
    for f in range(v.frames_per_clip):
        t = f / (v.frames_per_clip - 1) * (v.keyframes_per_clip - 1)
        i = min(int(t), v.keyframes_per_clip - 2)
        s = t - i
        s = s * s * (3.0 - 2.0 * s)  # ease in/out: velocity is continuous at the keyframes
        pose = (1 - s) * poses[i] + s * poses[i + 1]
        au = (1 - s) * au_keys[i] + s * au_keys[i + 1]
        out.append((tuple(_r(x) for x in pose), {k: _r(x) for k, x in zip(AU_NAMES, au) if round(x, 3) > 0}))
    return scene, out


def _still(rng: np.random.Generator, cfg: SynthConfig, mode: str) -> tuple[Scene, tuple, dict, int]:
    """One still image: scene, pose uniform over the ranges, AUs by mode -> (scene, pose, aus, label)."""
    scene = sample_scene(rng, tuple(cfg.face_scale), cfg.center_jitter)
    pose = tuple(_r(x) for x in _pose(rng, cfg))
    inten = tuple(cfg.expression_intensity)
    if mode == "au":
        if rng.uniform() < cfg.au.expression_fraction:
            label = int(rng.integers(len(EXPRESSIONS)))
            aus = expression_aus(rng, label, inten)
        else:
            label = -1
            aus = random_aus(rng, cfg.au.au_probability, tuple(cfg.au.au_intensity))
    else:
        label = int(mode.split(":")[1])
        if label < 0:
            label = int(rng.integers(len(EXPRESSIONS)))
        aus = expression_aus(rng, label, inten)
    return scene, pose, {k: _r(x) for k, x in aus.items()}, label


def _row(it: _Item, pose, aus: dict, label: int) -> dict:
    row = {"path": it.rel, "subject": it.subject, "clip": str(it.clip), "frame": str(it.frame),
           "yaw": f"{pose[0]:.3f}", "pitch": f"{pose[1]:.3f}", "roll": f"{pose[2]:.3f}",
           "expression": str(label), "fold": str(it.fold)}
    for k in AU_NAMES:
        row[k] = f"{aus.get(k, 0.0):.3f}"
    return row


def _save(root: Path, rel: str, img: np.ndarray, lm: np.ndarray) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed encoder settings and no metadata chunks: same pixels -> same bytes
    Image.fromarray(img).save(path, format="PNG", compress_level=1, optimize=False)
    write_pts(path.with_suffix(".pts"), lm)


def _render_job(args) -> list[tuple[int, str, dict]]:
    """Render all images of one identity into ``root``; returns (row index, split, manifest row)."""
    name, cfg, seed, k, items, root = args
    root = Path(root)
    idt = _identity(seed, name, k)
    size, ss = cfg.image_size, cfg.supersample
    out = []
    if name == "synth_vox":
        clips: dict[int, list[_Item]] = {}
        for it in items:
            clips.setdefault(it.clip, []).append(it)
        for c, its in sorted(clips.items()):
            scene, frames = _clip_frames(_seed(seed, *its[0].key), cfg)
            for it in sorted(its, key=lambda x: x.frame):
                pose, aus = frames[it.frame]
                img, lm = render_face(idt, aus, *pose, scene, size, ss)
                _save(root, it.rel, img, lm)
                out.append((it.index, it.split, _row(it, pose, aus, -1)))
    else:
        for it in items:
            scene, pose, aus, label = _still(_seed(seed, *it.key), cfg, it.mode)
            img, lm = render_face(idt, aus, *pose, scene, size, ss)
            _save(root, it.rel, img, lm)
            out.append((it.index, it.split, _row(it, pose, aus, label)))
    return out


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns))
    for r in rows:
        w.writerow(r)
    path.write_text(buf.getvalue())


def _pool_context():
    # fork starts workers instantly and they only use numpy; elsewhere fall back to spawn
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() and sys.platform.startswith("linux") else "spawn")


def generate(name: str, out_dir: Path, cfg: SynthConfig, seed: int, workers: int = 1) -> dict:
    """Render SynthFaces dataset ``name`` into the dataset folder ``out_dir`` (replaced atomically).

    Everything is written to a temporary sibling folder that is renamed onto ``out_dir`` only when
    complete; on any error the temporary folder is removed and ``out_dir`` is left untouched.
    The output is byte-identical for any ``workers`` >= 1. ``seed`` is the root of all draws (the
    CLI passes ``synth.seed``); ``cfg.seed`` is only recorded. Returns the ``meta.json`` dict.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown SynthFaces dataset {name!r}; known: {', '.join(DATASETS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:  # a failure deletes tmp and leaves out_dir untouched
        jobs, extra = _plan(name, cfg, seed)
        args = [(name, cfg, seed, k, items, str(tmp)) for k, items in sorted(jobs.items())]
        total = sum(len(items) for items in jobs.values())
        progress = Progress(f"generate {name}", total, unit="img", logger=log)
        results: list[tuple[int, str, dict]] = []
        try:
            if workers == 1:
                for a in args:
                    r = _render_job(a)
                    results += r
                    progress.update(len(r))
            else:
                with _pool_context().Pool(workers) as pool:
                    for r in pool.imap_unordered(_render_job, args):
                        results += r
                        progress.update(len(r))
        finally:
            progress.close()
        results.sort(key=lambda x: x[0])
        counts: dict[str, int] = {}
        for split in ("train", "test", "all"):
            rows = [r for _, s, r in results if s == split]
            if rows:
                _write_csv(tmp / f"{split}.csv", MANIFEST_COLUMNS, ([r[c] for c in MANIFEST_COLUMNS] for r in rows))
                counts[split] = len(rows)
        if "pairs" in extra:
            _write_csv(tmp / "pairs.csv", ("fold", "path_a", "path_b", "same"), extra["pairs"])
        meta = _meta(name, cfg, seed, counts, results, extra)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("generated %s: %d images in %.1f s (%d workers)", name, total, time.perf_counter() - t0, workers)
    return meta


def _meta(name: str, cfg: SynthConfig, seed: int, counts: dict, results: list, extra: dict) -> dict:
    subjects = {s: sorted({r["subject"] for _, sp, r in results if sp == s}) for s in counts}
    meta = {
        "generator": "pclbench.data.synth (SynthFaces)",
        "version": SYNTH_VERSION,
        "dataset": name,
        "seed": seed,
        "config": asdict(cfg),
        "image_size": cfg.image_size,
        "expressions": list(EXPRESSIONS),
        "aus": list(AU_NAMES),
        "au_scale": "FACS intensity 0-5; occurrence = intensity >= 2",
        "expression_prototypes": {k: {"core": list(c), "optional": list(o)} for k, (c, o) in PROTOTYPES.items()},
        "pose_convention": "degrees (yaw, pitch, roll); yaw > 0 face turns to the image left, pitch > 0 looks up, "
                           "roll > 0 counter-clockwise in the image; hflip: (-yaw, pitch, -roll)",
        "landmarks": "iBUG 68 points, .pts next to each image, 0-based pixel centres (index_base 0)",
        "identity_pool": f"identities drawn from (seed, {name!r}); disjoint from every other SynthFaces dataset",
        "splits": counts,
        "counts": {"images": sum(counts.values()), "subjects": {s: len(v) for s, v in subjects.items()}},
        "n_images": sum(counts.values()),
    }
    if "pairs" in extra:
        pairs = extra["pairs"]
        meta["counts"]["pairs"] = len(pairs)
        meta["counts"]["same_pairs"] = sum(1 for p in pairs if p[3] == 1)
    return meta


# --------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------

_LM_COLOURS = [((0, 17), (255, 255, 0)), ((17, 27), (255, 128, 0)), ((27, 36), (0, 200, 255)),
               ((36, 48), (0, 255, 0)), ((48, 68), (255, 0, 200))]


def contact_sheet(dataset_dir: Path, out_png: Path, n: int, seed: int) -> Path:
    """Write a grid PNG of ``n`` random images of a raw dataset with landmarks and labels drawn.

    Works on any Stage-1 dataset folder (all ``<split>.csv`` manifests, ``.pts`` where present).
    """
    dataset_dir, out_png = Path(dataset_dir), Path(out_png)
    manifests = sorted(p for p in dataset_dir.glob("*.csv") if p.name != "pairs.csv")
    if not manifests:
        raise FileNotFoundError(f"{dataset_dir}: no <split>.csv manifest found")
    rows = []
    for m in manifests:
        with m.open(newline="") as fh:
            for r in csv.DictReader(fh):
                r["_split"] = m.stem
                rows.append(r)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    tile, text_h = 192, 40
    cols = int(math.ceil(math.sqrt(len(pick))))
    nrows = int(math.ceil(len(pick) / cols))
    sheet = Image.new("RGB", (cols * tile, nrows * (tile + text_h)), (24, 24, 24))
    font = ImageFont.load_default()
    for j, idx in enumerate(pick):
        r = rows[idx]
        path = dataset_dir / r["path"]
        im = Image.open(path).convert("RGB")
        sx, sy = tile / im.width, tile / im.height
        im = im.resize((tile, tile), Image.BILINEAR)
        draw = ImageDraw.Draw(im)
        pts_path = path.with_suffix(".pts")
        if pts_path.is_file():
            lm = read_pts(pts_path)
            for (a, b), colour in _LM_COLOURS:
                for x, y in lm[a:b]:
                    cx, cy = (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5
                    draw.ellipse([cx - 0.9, cy - 0.9, cx + 0.9, cy + 0.9], fill=colour)
        ox, oy = (j % cols) * tile, (j // cols) * (tile + text_h)
        sheet.paste(im, (ox, oy))
        d = ImageDraw.Draw(sheet)
        expr = int(r.get("expression", -1) or -1)
        label = EXPRESSIONS[expr] if 0 <= expr < len(EXPRESSIONS) else "-"
        aus = [k for k in AU_NAMES if k in r and float(r[k]) >= 2.0]
        lines = [
            f"{r.get('subject', '?')} {r['_split']} {label}",
            f"y{float(r.get('yaw', 'nan')):+.0f} p{float(r.get('pitch', 'nan')):+.0f} r{float(r.get('roll', 'nan')):+.0f}",
            " ".join(a[2:] for a in aus) if aus else "no AU >= 2",
        ]
        for li, text in enumerate(lines):
            d.text((ox + 3, oy + tile + 1 + 12 * li), text, fill=(230, 230, 230), font=font)
    with atomic_file(out_png) as tmp:  # temp removed on error; a killed writer's by the next write
        sheet.save(tmp, format="PNG")
    return out_png
