"""SynthFaces (data/synth.py, data/synth_render.py): determinism, labels, geometry, flips, AUs, I/O."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from pclbench.core.config import ConfigError, from_dict
from pclbench.data import synth
from pclbench.data import synth_render as sr

TINY = {
    "seed": 0,
    "image_size": 64,
    "supersample": 1,
    "face_scale": [0.45, 0.55],
    "center_jitter": 0.05,
    "max_yaw": 60.0,
    "max_pitch": 30.0,
    "max_roll": 20.0,
    "expression_intensity": [2.0, 5.0],
    "vox": {"n_identities": 2, "clips_per_identity": 2, "frames_per_clip": 4, "keyframes_per_clip": 2},
    "expression": {"n_identities_train": 2, "n_identities_test": 2, "images_per_class_train": 2,
                   "images_per_class_test": 1},
    "verification": {"n_folds": 3, "identities_per_fold": 2, "images_per_identity": 3, "pairs_per_fold": 4},
    "au": {"n_identities": 4, "n_images": 12, "n_folds": 2, "expression_fraction": 0.5, "au_probability": 0.3,
           "au_intensity": [0.5, 5.0]},
    "pose": {"n_identities_train": 2, "n_identities_test": 1, "n_train": 4, "n_test": 3},
}


def _cfg(**over) -> synth.SynthConfig:
    d = copy.deepcopy(TINY)
    for k, v in over.items():
        node = d
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return from_dict(synth.SynthConfig, d, "synth")


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """All five tiny datasets, seed 0, one worker."""
    root = tmp_path_factory.mktemp("synth")
    cfg = _cfg()
    for name in synth.DATASETS:
        synth.generate(name, root / name, cfg, seed=0, workers=1)
    return root


def _frontal_identity(seed: int = 3) -> sr.Identity:
    return sr.sample_identity(np.random.default_rng(seed))


def _plain_scene(**over) -> sr.Scene:
    s = sr.Scene(scale=0.5, offset=(0.0, 0.0), light_dir=(0.0, 0.0, 1.0), light_rgb=(1.0, 1.0, 1.0),
                 ambient_rgb=(0.3, 0.3, 0.3), bg_kind=0, bg_rgb=((0.2, 0.3, 0.4), (0.5, 0.5, 0.5)),
                 bg_angle=0.3, bg_seed=1, cloth_rgb=(0.3, 0.2, 0.6), noise_std=0.0, noise_seed=2)
    return sr.Scene(**{**s.__dict__, **over})


# ------------------------------------------------------------------------------------------------
# determinism and layout
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_any_workers(generated, tmp_path):
    cfg = _cfg()
    for name in ("synth_vox", "synth_verification"):
        synth.generate(name, tmp_path / "w2" / name, cfg, seed=0, workers=2)
        a, b = _tree(generated / name), _tree(tmp_path / "w2" / name)
        assert a.keys() == b.keys() and len(a) > 3
        assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]


def test_different_seed_different_data(generated, tmp_path):
    synth.generate("synth_pose", tmp_path / "s1", _cfg(), seed=1, workers=1)
    a, b = _tree(generated / "synth_pose"), _tree(tmp_path / "s1")
    assert a.keys() == b.keys()  # same structure...
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != b[k] for k in pngs)  # ...different pictures
    assert a["train.csv"] != b["train.csv"]


def test_layout_manifest_columns_and_pts(generated):
    for name in synth.DATASETS:
        root = generated / name
        meta = json.loads((root / "meta.json").read_text())
        assert meta["dataset"] == name and meta["seed"] == 0 and meta["expressions"][6] == "neutral"
        for split, n in meta["splits"].items():
            rows = _read_csv(root / f"{split}.csv")
            assert len(rows) == n
            assert list(rows[0].keys()) == list(synth.MANIFEST_COLUMNS)
            for r in rows:
                img = root / r["path"]
                assert img.is_file() and img.with_suffix(".pts").is_file()
        # one image opened: size and mode
        im = Image.open(root / rows[0]["path"])
        assert im.size == (64, 64) and im.mode == "RGB"
        lm = synth.read_pts((root / rows[0]["path"]).with_suffix(".pts"))
        assert lm.shape == (68, 2)


# ------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------


def _aus(r: dict) -> dict[str, float]:
    return {k: float(r[k]) for k in synth.AU_NAMES}


def test_expression_labels_match_au_prototypes_and_classes_balanced(generated):
    root = generated / "synth_expression"
    train, test = _read_csv(root / "train.csv"), _read_csv(root / "test.csv")
    lo, hi = TINY["expression_intensity"]
    for rows, per_class in ((train, 2), (test, 1)):
        labels = [int(r["expression"]) for r in rows]
        assert np.bincount(labels, minlength=7).tolist() == [per_class] * 7
        for r in rows:
            name = synth.EXPRESSIONS[int(r["expression"])]
            core, optional = synth.PROTOTYPES[name]
            aus = _aus(r)
            active = {k for k, v in aus.items() if v > 0}
            assert set(core) <= active <= set(core) | set(optional), (name, active)
            assert all(lo <= aus[k] <= hi for k in active)
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in test})


def test_au_set_folds_subject_exclusive_and_ranges(generated):
    rows = _read_csv(generated / "synth_au" / "all.csv")
    fold_of: dict[str, set] = {}
    for r in rows:
        fold_of.setdefault(r["subject"], set()).add(int(r["fold"]))
        assert all(0.0 <= v <= 5.0 for v in _aus(r).values())
        assert -1 <= int(r["expression"]) <= 6
    assert all(len(f) == 1 for f in fold_of.values())
    assert {next(iter(f)) for f in fold_of.values()} == {0, 1}


def test_au_sampling_covers_every_au(generated):
    # the sampler itself (not the tiny set): every AU occurs (>= 2) in a reasonable fraction
    cfg = _cfg()
    rng = np.random.default_rng(0)
    occ = np.zeros(len(synth.AU_NAMES))
    n = 3000
    for _ in range(n):
        _, _, aus, _ = synth._still(rng, cfg, "au")
        occ += [aus.get(k, 0.0) >= 2.0 for k in synth.AU_NAMES]
    frac = occ / n
    assert frac.min() > 0.08 and frac.max() < 0.7, dict(zip(synth.AU_NAMES, frac.round(2)))


def test_pose_ranges_and_split_disjoint(generated):
    root = generated / "synth_pose"
    train, test = _read_csv(root / "train.csv"), _read_csv(root / "test.csv")
    for r in train + test:
        assert abs(float(r["yaw"])) <= 60 and abs(float(r["pitch"])) <= 30 and abs(float(r["roll"])) <= 20
        assert int(r["clip"]) == -1 and int(r["frame"]) == -1 and int(r["fold"]) == -1
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in test})
    # the sampler is uniform over the ranges: moments of a large draw
    cfg = _cfg()
    rng = np.random.default_rng(1)
    p = np.array([synth._still(rng, cfg, "expression:-1")[1] for _ in range(2000)])
    assert np.allclose(np.abs(p).max(0), [60, 30, 20], rtol=0.02)
    assert np.allclose(p.std(0), np.array([60, 30, 20]) / math.sqrt(3), rtol=0.08)


def test_verification_pairs_folds_disjoint_and_balanced(generated):
    root = generated / "synth_verification"
    rows = {r["path"]: r for r in _read_csv(root / "all.csv")}
    pairs = _read_csv(root / "pairs.csv")
    assert list(pairs[0].keys()) == ["fold", "path_a", "path_b", "same"]
    ids_by_fold: dict[int, set] = {}
    for p in pairs:
        f = int(p["fold"])
        a, b = rows[p["path_a"]], rows[p["path_b"]]
        assert int(a["fold"]) == int(b["fold"]) == f
        assert (a["subject"] == b["subject"]) == (p["same"] == "1")
        assert p["path_a"] != p["path_b"]
        ids_by_fold.setdefault(f, set()).update([a["subject"], b["subject"]])
    folds = sorted(ids_by_fold)
    assert folds == [0, 1, 2]
    for i in folds:
        same = [p for p in pairs if int(p["fold"]) == i and p["same"] == "1"]
        assert len(same) * 2 == sum(int(p["fold"]) == i for p in pairs) == 4
        for j in folds:
            if i < j:
                assert ids_by_fold[i].isdisjoint(ids_by_fold[j])
    # an identity's images vary (pose, expression)
    by_subject: dict[str, list] = {}
    for r in rows.values():
        by_subject.setdefault(r["subject"], []).append(float(r["yaw"]))
    assert all(np.ptp(v) > 1.0 for v in by_subject.values())


def test_vox_clips_smooth_and_identity_pools_disjoint(generated):
    rows = _read_csv(generated / "synth_vox" / "train.csv")
    assert len(rows) == 2 * 2 * 4
    clips: dict[tuple, list] = {}
    for r in rows:
        assert int(r["expression"]) == -1
        clips.setdefault((r["subject"], int(r["clip"])), []).append(
            (int(r["frame"]), [float(r[k]) for k in ("yaw", "pitch", "roll")]))
    for frames in clips.values():
        frames.sort()
        assert [f for f, _ in frames] == [0, 1, 2, 3]
        pose = np.array([p for _, p in frames])
        # eased keyframes: at most half the range per keyframe interval, so per frame far less
        assert np.all(np.abs(np.diff(pose, axis=0)) <= np.array([60, 30, 20]) * 0.5 + 1e-6)
    # identity pools: drawn from (seed, dataset): no identity shared between datasets
    vox = [synth._identity(0, "synth_vox", k) for k in range(2)]
    ver = [synth._identity(0, "synth_verification", k) for k in range(6)]
    assert all(a != b for a in vox for b in ver)
    assert synth._identity(0, "synth_vox", 1) == vox[1]  # reproducible


# ------------------------------------------------------------------------------------------------
# geometry, landmarks, flips
# ------------------------------------------------------------------------------------------------


def test_flip_permutation_is_a_mirror_involution():
    perm = synth.IBUG68_FLIP_PERMUTATION
    assert sorted(perm.tolist()) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))
    # independent spot checks from the iBUG-68 markup
    for a, b in [(0, 16), (8, 8), (17, 26), (21, 22), (30, 30), (31, 35), (36, 45), (39, 42), (40, 47),
                 (48, 54), (51, 51), (57, 57), (60, 64), (62, 62), (66, 66), (65, 67)]:
        assert perm[a] == b and perm[b] == a


def test_frontal_landmark_topology_and_inside_frame():
    idt = _frontal_identity()
    _, lm = sr.render_face(idt, {}, 0.0, 0.0, 0.0, _plain_scene(), 96)
    x, y = lm[:, 0], lm[:, 1]
    assert x[36] < x[39] < x[42] < x[45]               # image-left eye is left of image-right eye
    assert y[27] < y[30] < y[33] < y[51] < y[57] < y[8]  # nasion, nose tip, subnasale, lips, chin
    assert y[19] < y[37] and y[24] < y[44]               # brows above eyes
    assert x[48] < x[51] < x[54] and x[0] < x[8] < x[16]
    # the neutral frontal face is its own mirror image (the identity is symmetric)
    np.testing.assert_allclose(synth.hflip_landmarks(lm, 96), lm, atol=1e-3)
    # landmarks are inside the frame for moderate poses at the largest configured scale
    rng = np.random.default_rng(0)
    for _ in range(6):
        scene = sr.sample_scene(rng, (0.6, 0.6), 0.06)
        ypr = rng.uniform(-1, 1, 3) * [45, 20, 15]
        _, lm = sr.render_face(_frontal_identity(int(rng.integers(100))), {}, *ypr, scene, 64)
        assert lm.min() >= 0 and lm.max() <= 63


def test_pose_sign_convention():
    idt = _frontal_identity()
    sc = _plain_scene()
    _, lm0 = sr.render_face(idt, {}, 0.0, 0.0, 0.0, sc, 96)
    _, lm_y = sr.render_face(idt, {}, 30.0, 0.0, 0.0, sc, 96)
    _, lm_p = sr.render_face(idt, {}, 0.0, 20.0, 0.0, sc, 96)
    _, lm_r = sr.render_face(idt, {}, 0.0, 0.0, 15.0, sc, 96)
    eyes = lambda lm: lm[36:48].mean(0)  # noqa: E731
    assert lm_y[30, 0] - eyes(lm_y)[0] < lm0[30, 0] - eyes(lm0)[0] - 2  # yaw > 0: nose towards image left
    assert lm_p[30, 1] - eyes(lm_p)[1] < lm0[30, 1] - eyes(lm0)[1] - 1  # pitch > 0: looks up
    d = lm_r[45] - lm_r[36]
    assert math.degrees(math.atan2(-d[1], d[0])) == pytest.approx(15.0, abs=1.5)  # roll > 0: counter-clockwise
    # the rotation matrix agrees with its documented factorisation
    R = sr.rotation(30.0, 20.0, 15.0)
    c, s = math.cos, math.sin
    a, b, g = math.radians(30), math.radians(20), math.radians(15)
    Rz = np.array([[c(g), -s(g), 0], [s(g), c(g), 0], [0, 0, 1]])
    Ry = np.array([[c(-a), 0, s(-a)], [0, 1, 0], [-s(-a), 0, c(-a)]])
    Rx = np.array([[1, 0, 0], [0, c(-b), -s(-b)], [0, s(-b), c(-b)]])
    np.testing.assert_allclose(R, Rz @ Ry @ Rx, atol=1e-12)


@pytest.mark.parametrize("ypr,style", [((35.0, 12.0, 10.0), "long"), ((-55.0, -20.0, 15.0), "short"),
                                       ((20.0, 25.0, -18.0), "bald"), ((-10.0, -5.0, 5.0), "medium")])
def test_hflip_equals_mirrored_pose(ypr, style):
    rng = np.random.default_rng(7)
    idt = dataclasses.replace(sr.sample_identity(rng), hair_style=style, beard=0.7 if style == "bald" else 0.0)
    scene = sr.sample_scene(rng, (0.5, 0.5), 0.05)
    aus = {"AU6": 3.0, "AU12": 4.0, "AU25": 2.5, "AU2": 2.0, "AU20": 1.5}
    img, lm = sr.render_face(idt, aus, *ypr, scene, 96)
    img_m, lm_m = sr.render_face(idt, aus, *synth.hflip_pose(*ypr), scene.mirrored(), 96)
    diff = np.abs(img[:, ::-1].astype(int) - img_m.astype(int))
    # equal up to z-buffer ties on a few edge pixels
    assert diff.mean() < 0.1 and np.mean(diff > 24) < 0.002, (diff.mean(), np.mean(diff > 24))
    np.testing.assert_allclose(synth.hflip_landmarks(lm, 96), lm_m, atol=1e-3)
    # and it is not trivially true: the un-mirrored pose gives a different picture
    img_other, _ = sr.render_face(idt, aus, *ypr, scene.mirrored(), 96)
    assert np.abs(img[:, ::-1].astype(int) - img_other.astype(int)).mean() > 5


def test_far_side_is_occluded_and_foreshortened():
    idt = _frontal_identity()
    sc = _plain_scene(light_dir=(0.0, 0.3, 0.95))
    _, lm0, vis0 = sr.render_face_visibility(idt, {}, 0.0, 0.0, 0.0, sc, 128)
    assert vis0[17:68].all()  # frontal: brows, nose, eyes and lips are all in view
    _, lm, vis = sr.render_face_visibility(idt, {}, 60.0, 0.0, 0.0, sc, 128)
    # yaw > 0 turns the face to the image left, so the image-left eye (36-41) is the far one
    near_w = np.linalg.norm(lm[45] - lm[42])
    far_w = np.linalg.norm(lm[39] - lm[36])
    assert far_w < 0.6 * near_w
    assert vis[42:48].all() and vis[[30, 54]].all()  # near eye, nose tip, near mouth corner seen
    assert not vis[[0, 1, 2, 36]].any()                   # far jaw line and far eye corner hidden
    # the far eye projects onto the nose side: it lies between the nose tip and the near eye
    assert lm[30, 0] < lm[36, 0] + 4


# ------------------------------------------------------------------------------------------------
# action units
# ------------------------------------------------------------------------------------------------


def _lm(aus):
    idt = _frontal_identity()
    return sr.render_face(idt, aus, 0.0, 0.0, 0.0, _plain_scene(), 128)


def test_aus_move_landmarks_consistently():
    img0, lm0 = _lm({})
    gap = lambda lm: lm[66, 1] - lm[62, 1]  # noqa: E731
    assert gap(lm0) < 0.5
    _, lm26 = _lm({"AU26": 5.0, "AU25": 3.0})
    assert gap(lm26) > gap(lm0) + 4                        # jaw drop opens the lips
    assert lm26[8, 1] > lm0[8, 1] + 3                     # and lowers the chin
    _, lm12 = _lm({"AU12": 5.0})
    assert lm12[48, 1] < lm0[48, 1] - 1 and lm12[54, 1] < lm0[54, 1] - 1  # lip corners up
    assert lm12[54, 0] - lm12[48, 0] > lm0[54, 0] - lm0[48, 0]            # and out
    _, lm15 = _lm({"AU15": 5.0})
    assert lm15[48, 1] > lm0[48, 1] + 1                   # lip corners down
    _, lm1 = _lm({"AU1": 5.0, "AU2": 5.0})
    assert np.all(lm1[17:27, 1] < lm0[17:27, 1] - 1)      # brows up
    _, lm4 = _lm({"AU4": 5.0})
    assert np.all(lm4[19:24, 1] > lm0[19:24, 1] + 0.5)    # brows down
    assert lm4[22, 0] - lm4[21, 0] < lm0[22, 0] - lm0[21, 0]  # and together
    eye_h = lambda lm: lm[[40, 41], 1].mean() - lm[[37, 38], 1].mean()  # noqa: E731
    _, lm5 = _lm({"AU5": 5.0})
    _, lm7 = _lm({"AU7": 5.0})
    assert eye_h(lm5) > eye_h(lm0) + 0.5 > eye_h(lm7) + 1.0  # upper lid raiser / lid tightener
    _, lm20 = _lm({"AU20": 5.0})
    assert lm20[54, 0] - lm20[48, 0] > lm0[54, 0] - lm0[48, 0] + 2  # lip stretcher


def test_aus_visibly_change_the_face_region():
    img0, lm0 = _lm({})
    x0, y0 = lm0.min(0).astype(int)
    x1, y1 = lm0.max(0).astype(int)
    y0 -= (y1 - y0) // 2  # the forehead (AU1/AU2 wrinkles) is above the brow landmarks
    y1 += 6  # jaw drop
    for au in synth.AU_NAMES:
        img, _ = _lm({au: 5.0})
        d = np.abs(img.astype(int) - img0.astype(int))
        assert d[y0:y1, x0:x1].sum() > 5 * d.sum() / 6, au  # the change is on the face
        assert np.mean(d[y0:y1, x0:x1] > 20) > 0.002, au     # and visible


def test_bad_au_inputs_raise():
    idt = _frontal_identity()
    with pytest.raises(ValueError, match="AU3"):
        sr.render_face(idt, {"AU3": 1.0}, 0, 0, 0, _plain_scene(), 64)
    with pytest.raises(ValueError, match="AU12"):
        sr.render_face(idt, {"AU12": 6.0}, 0, 0, 0, _plain_scene(), 64)


# ------------------------------------------------------------------------------------------------
# rasteriser against an independent reference
# ------------------------------------------------------------------------------------------------


def test_rasterizer_coverage_and_depth_order():
    rng = np.random.default_rng(0)
    h = w = 40
    xy = rng.uniform(-5, 45, size=(30, 2))
    tris = rng.integers(0, 30, size=(10, 3))
    tris = tris[[len(set(t)) == 3 for t in tris]]
    depth = rng.uniform(1, 2, 30)
    tri, bary = sr.rasterize(xy, depth, tris, np.zeros(len(tris), bool), h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([xx.ravel(), yy.ravel()], -1).astype(float)
    # reference: point-in-polygon per triangle (matplotlib), nearest by the plane through the corners
    best = np.full(h * w, -1)
    best_d = np.full(h * w, np.inf)
    for t, (a, b, c) in enumerate(tris):
        inside = MplPath(xy[[a, b, c]]).contains_points(pts, radius=1e-9) | MplPath(xy[[a, c, b]]).contains_points(pts, radius=1e-9)
        A = np.c_[xy[[a, b, c]], np.ones(3)]
        coef = np.linalg.solve(A, depth[[a, b, c]])
        d = pts @ coef[:2] + coef[2]
        upd = inside & (d < best_d)
        best[upd], best_d[upd] = t, d[upd]
    agree = best == tri
    assert agree.mean() > 0.99  # edge pixels may differ by a rounding hair
    hit = tri >= 0
    np.testing.assert_allclose(bary[hit].sum(1), 1.0, atol=1e-9)
    # back-face culling drops one winding
    one = np.array([[0, 1, 2]])
    xy1 = np.array([[2.0, 2.0], [5.0, 30.0], [30.0, 5.0]])  # counter-clockwise as seen on screen = front
    assert (sr.rasterize(xy1, np.ones(3), one, np.ones(1, bool), h, w)[0] >= 0).sum() > 300
    assert (sr.rasterize(xy1, np.ones(3), one[:, ::-1], np.ones(1, bool), h, w)[0] >= 0).sum() == 0


# ------------------------------------------------------------------------------------------------
# I/O, atomic write, config errors, contact sheet
# ------------------------------------------------------------------------------------------------


def test_pts_round_trip(tmp_path):
    pts = np.random.default_rng(0).uniform(0, 111, size=(68, 2))
    synth.write_pts(tmp_path / "a.pts", pts)
    text = (tmp_path / "a.pts").read_text()
    assert text.startswith("version: 1\nn_points: 68\n{\n") and text.rstrip().endswith("}")
    np.testing.assert_allclose(synth.read_pts(tmp_path / "a.pts"), pts, atol=1e-6)


def test_failed_generation_leaves_no_partial_folder(tmp_path, monkeypatch):
    out = tmp_path / "synth_au"
    calls = {"n": 0}
    real = synth.render_face

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(synth, "render_face", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        synth.generate("synth_au", out, _cfg(), seed=0, workers=1)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    # a previous good folder survives a failed rerun untouched
    monkeypatch.setattr(synth, "render_face", real)
    synth.generate("synth_au", out, _cfg(), seed=0, workers=1)
    before = _tree(out)
    calls["n"] = 0
    monkeypatch.setattr(synth, "render_face", flaky)
    with pytest.raises(RuntimeError):
        synth.generate("synth_au", out, _cfg(), seed=0, workers=1)
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["synth_au"]


def test_bad_config_names_the_key():
    d = copy.deepcopy(TINY)
    del d["vox"]["frames_per_clip"]
    with pytest.raises(ConfigError, match=r"synth\.vox\.frames_per_clip"):
        from_dict(synth.SynthConfig, d, "synth")
    d = copy.deepcopy(TINY)
    d["au"]["n_foldz"] = 3
    with pytest.raises(ConfigError, match=r"synth\.au\.n_foldz"):
        from_dict(synth.SynthConfig, d, "synth")
    with pytest.raises(ConfigError, match=r"synth\.verification\.pairs_per_fold"):
        synth.generate("synth_verification", Path("/nonexistent/x"), _cfg(**{"verification.pairs_per_fold": 5}), 0)
    with pytest.raises(ConfigError, match=r"synth\.verification\.pairs_per_fold = 14: asks for 7 same pairs"):
        _cfg(**{"verification.pairs_per_fold": 14})  # cross-field: only 2 * (3 * 2 / 2) = 6 same pairs exist
    with pytest.raises(ConfigError, match=r"synth\.face_scale"):
        _cfg(face_scale=[0.7, 0.5])
    with pytest.raises(ConfigError, match=r"synth\.expression_intensity"):
        _cfg(expression_intensity=[0.0, 5.0])
    with pytest.raises(ConfigError, match="synth_nope"):
        synth.generate("synth_nope", Path("/nonexistent/x"), _cfg(), 0)


def test_contact_sheet(generated, tmp_path):
    out = synth.contact_sheet(generated / "synth_expression", tmp_path / "cs.png", n=6, seed=0)
    im = Image.open(out)
    assert im.size[0] >= 3 * 100 and im.size[1] >= 2 * 100
    assert np.asarray(im).std() > 10


def test_supersampling_keeps_landmarks_and_picture():
    idt = _frontal_identity()
    sc = _plain_scene()
    img1, lm1 = sr.render_face(idt, {"AU12": 3.0}, 20.0, 5.0, -5.0, sc, 64, supersample=1)
    img2, lm2 = sr.render_face(idt, {"AU12": 3.0}, 20.0, 5.0, -5.0, sc, 64, supersample=2)
    np.testing.assert_allclose(lm1, lm2, atol=0.25)  # same camera; landmarks sit on the (finer) mesh
    d = np.abs(img1.astype(int) - img2.astype(int))
    assert d.mean() < 4.0 and d.max() > 0  # anti-aliased edges differ, the picture does not
