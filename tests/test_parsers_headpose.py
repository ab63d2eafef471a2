"""300W-LP / AFLW2000-3D parser: each view's own landmarks, _Flip mirroring, landmark-pose check.

The fixture is written in the release format as public readers read it (sources in the module
docstring of pclbench.data.parsers.headpose):

* ``300W_LP/<subset>/<photo>_<j>.jpg`` + ``.mat`` with ``Pose_Para`` (1, 7) and ``pt2d`` (2, 68) = the
  SOURCE photo's points, the same for every view ``j`` (TFDS the300w_lp ``landmarks_origin``;
  cleardusk/3DDFA issue #192);
* ``300W_LP/landmarks/<subset>/<photo>_<j>_pts.mat`` with ``pts_2d`` and ``pts_3d`` (68, 2), Matlab
  1-based, for the four unflipped subsets only (TFDS builder; LUVLi organize_300W_LP.py);
* ``<subset>_Flip`` folders: the left-right mirrored images with the mirrored pose.

Expected points are computed independently of the parser: the 3DDFA projection of each view's pose
(a left-right symmetric face, so a _Flip view's points are the projection of the mirrored pose) and a
hand-written mirror using HRNet's 1-based ``MATCHED_PARTS["300W"]`` pairs.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

import official_fixtures as fx
from pclbench.core.config import ConfigError
from pclbench.align.pts import read_pts
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers import headpose
from pclbench.core.schema import validate_config

W = H = 160
F = 0.8
#: HRNet/HRNet-Facial-Landmark-Detection lib/utils/transforms.py MATCHED_PARTS["300W"] (1-based pairs).
HRNET_300W_PAIRS = ([1, 17], [2, 16], [3, 15], [4, 14], [5, 13], [6, 12], [7, 11], [8, 10],
                    [18, 27], [19, 26], [20, 25], [21, 24], [22, 23], [32, 36], [33, 35],
                    [37, 46], [38, 45], [39, 44], [40, 43], [41, 48], [42, 47],
                    [49, 55], [50, 54], [51, 53], [62, 64], [61, 65], [68, 66], [59, 57], [60, 56])
#: (photo, source yaw, pitch, roll) in degrees (3DDFA signs); views j = 0..3 turn 20 degrees further
#: the way the photo already faces, as 300W-LP's profiling does (so the aggregate yaw correlation of
#: the source points stays high and only the within-photo check catches them).
PHOTOS = {"AFW": [("AFW_111_1", -25, 5, 4), ("AFW_222_1", 10, -8, -6), ("AFW_333_1", 0, 3, 8)],
          "HELEN": [("HELEN_444_1", 20, -4, 2), ("HELEN_555_1", -12, 9, -3), ("HELEN_666_1", 5, 0, -7)]}
N_VIEWS = 4


def hrnet_perm() -> np.ndarray:
    perm = np.arange(68)
    for a, b in HRNET_300W_PAIRS:
        perm[a - 1], perm[b - 1] = b - 1, a - 1
    return perm


def symmetric_face() -> np.ndarray:
    """(68, 3) face in 3DDFA model axes, left-right symmetric under the iBUG pairs: the nose tip (30)
    stands 35 units in front of the eyes, the jaw sides go back towards the ears."""
    p = np.zeros((68, 3))
    t = np.linspace(-1.0, 1.0, 17) * math.radians(80)
    p[:17] = np.stack([70 * np.sin(t), -54 * np.cos(t) + 10, -40 + 50 * np.cos(t)], 1)
    brow_x = np.r_[np.linspace(-55, -12, 5), np.linspace(12, 55, 5)]
    p[17:27] = np.stack([brow_x, np.full(10, 45.0), np.full(10, 10.0)], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(35, 5, 4), np.linspace(15, 40, 4)], 1)
    p[31:36] = np.stack([np.linspace(-12, 12, 5), np.full(5, -2.0), np.full(5, 22.0)], 1)
    for i in range(6):
        p[36 + i] = (-30 + 10 * math.cos(i * math.pi / 3), 30 + 4 * math.sin(i * math.pi / 3), 5)
        p[42 + i] = (30 + 10 * math.cos(i * math.pi / 3), 30 + 4 * math.sin(i * math.pi / 3), 5)
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    p[48:60] = np.stack([22 * np.cos(a + np.pi), -30 + 8 * np.sin(a), np.full(12, 15.0)], 1)
    a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    p[60:68] = np.stack([15 * np.cos(a + np.pi), -30 + 3 * np.sin(a), np.full(8, 16.0)], 1)
    perm = hrnet_perm()
    q = p[perm]
    return np.stack([(p[:, 0] - q[:, 0]) / 2, (p[:, 1] + q[:, 1]) / 2, (p[:, 2] + q[:, 2]) / 2], 1)


FACE = symmetric_face()


def project(para) -> np.ndarray:
    """3DDFA / Matlab: f R S + t, image y = H + 1 - y -> (68, 2) 1-based (x, y)."""
    pitch, yaw, roll, tx, ty, tz, f = para
    v = f * fx.rotation_3ddfa(pitch, yaw, roll) @ FACE.T + np.array([[tx], [ty], [tz]])  # (3, 68)
    return np.stack([v[0], H + 1 - v[1]], 1)


def para_of(yaw_deg, pitch_deg, roll_deg) -> tuple:
    return (math.radians(pitch_deg), math.radians(yaw_deg), math.radians(roll_deg), (W + 1) / 2, (H + 1) / 2, 0.0, F)


def mirrored_para(para) -> tuple:
    """The pose of the left-right mirrored image: R(p, -y, -r), tx -> W + 1 - tx (derivation in the module doc)."""
    pitch, yaw, roll, tx, ty, tz, f = para
    return (pitch, -yaw, -roll, W + 1 - tx, ty, tz, f)


def hand_mirror_1based(pts: np.ndarray) -> np.ndarray:
    """Mirror 1-based (68, 2) points of a W-wide image by the HRNet pair table: swap, x -> W + 1 - x."""
    out = np.array(pts, dtype=np.float64)
    for a, b in HRNET_300W_PAIRS:
        out[[a - 1, b - 1]] = out[[b - 1, a - 1]]
    out[:, 0] = W + 1 - out[:, 0]
    return out


def picture(seed: int) -> np.ndarray:
    """(H, W, 3) uint8, smooth and left-right asymmetric (so a mirror is detectable in pixels)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    g = 110 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0) + 0.5 * xx
    return np.clip(np.stack([g, g * 0.9, 255 - g], -1), 0, 255).astype(np.uint8)


def save_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def view_paras():
    """{(subset, name): Pose_Para} of the unflipped views and {(subset, photo): source Pose_Para}."""
    views, sources = {}, {}
    for subset, photos in PHOTOS.items():
        for photo, yaw, pitch, roll in photos:
            sources[(subset, photo)] = para_of(yaw, pitch, roll)
            sign = 1 if yaw >= 0 else -1
            for j in range(N_VIEWS):
                views[(subset, f"{photo}_{j}")] = para_of(yaw + sign * 20 * j, pitch, roll)
    return views, sources


def write_release(root: Path, *, source_points_everywhere: bool = False, flip_mirrors: bool = True) -> dict:
    """300W_LP release in the official format. source_points_everywhere: every _pts.mat carries the
    source photo's points (what the parser used to read from pt2d). Returns {(subset, name): para}."""
    base = root / "300W_LP"
    (base / "Code").mkdir(parents=True)
    views, sources = view_paras()
    out = {}
    for seed, ((subset, name), para) in enumerate(sorted(views.items())):
        photo = name.rsplit("_", 1)[0]
        src = project(sources[(subset, photo)])  # (68, 2) 1-based: the source photo's points
        img = picture(seed)
        save_jpg(base / subset / f"{name}.jpg", img)
        savemat(base / subset / f"{name}.mat", {"Pose_Para": np.array([para], dtype=np.float32), "pt2d": src.T,
                                                "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))})
        own = src if source_points_everywhere else project(para)
        pts2d = own.copy()
        pts2d[:17, 0] += 2.0  # contour points "snapped" elsewhere: tells pts_2d from pts_3d
        lm = base / "landmarks" / subset / f"{name}_pts.mat"
        lm.parent.mkdir(parents=True, exist_ok=True)
        savemat(lm, {"pts_2d": pts2d, "pts_3d": own})
        # The _Flip twin: mirrored pixels, mirrored pose, mirrored source points; no landmark file.
        fpara = mirrored_para(para)
        save_jpg(base / f"{subset}_Flip" / f"{name}.jpg", img[:, ::-1] if flip_mirrors else picture(seed + 100))
        savemat(base / f"{subset}_Flip" / f"{name}.mat",
                {"Pose_Para": np.array([fpara], dtype=np.float32), "pt2d": hand_mirror_1based(src).T})
        out[(subset, name)], out[(f"{subset}_Flip", name)] = para, fpara
    return out


def entry(parser: str, split: str, **keys) -> dict:
    return {"source": "url", "parser": parser, "tasks": ["pose"], "licence": "x", "splits": [split], "size": 64,
            **keys}


def run_300wlp(tmp_path: Path, **keys) -> tuple[dict, pd.DataFrame, Path]:
    out = tmp_path / "raw"
    meta = prepare_dataset("300w_lp", entry("300w_lp", "train", **keys), tmp_path / "src", out)
    return meta, pd.read_csv(out / "train.csv"), out


# ---------------------------------------------------------------------------------------------- fixture sanity


def test_fixture_has_the_release_quirk(tmp_path):
    """pt2d is the same for all views of a photo; the views' own points are far from it (so a parser
    reading pt2d fails the tests below), and the face is mirror-symmetric under the HRNet pairs."""
    write_release(tmp_path / "src")
    base = tmp_path / "src/300W_LP"
    a = loadmat(base / "AFW/AFW_111_1_0.mat")["pt2d"]
    b = loadmat(base / "AFW/AFW_111_1_3.mat")["pt2d"]
    np.testing.assert_array_equal(a, b)
    own = loadmat(base / "landmarks/AFW/AFW_111_1_3_pts.mat")["pts_3d"]
    assert own.shape == (68, 2) and np.abs(own - a.T).max() > 20
    np.testing.assert_allclose(FACE[hrnet_perm()] * [-1, 1, 1], FACE, atol=1e-12)
    assert not (base / "landmarks/AFW_Flip").exists()


# ---------------------------------------------------------------------------------------------- own points


def test_each_view_is_aligned_on_its_own_points(tmp_path):
    paras = write_release(tmp_path / "src")
    meta, df, out = run_300wlp(tmp_path)
    assert len(df) == 2 * len(paras) // 2 == 48
    for _, r in df.iterrows():
        subset, name = r["path"].split("/")[1], Path(r["path"]).stem
        got = read_pts((out / r["path"]).with_suffix(".pts"), index_base=0)
        para = paras[(subset, name)]
        # Projection of this view's own pose (0-based = 1-based - 1): unflipped and _Flip alike.
        np.testing.assert_allclose(got, project(para) - 1, atol=1e-4)
        if subset.endswith("_Flip"):
            twin = loadmat(tmp_path / f"src/300W_LP/landmarks/{subset[:-5]}/{name}_pts.mat")["pts_3d"]
            np.testing.assert_allclose(got, hand_mirror_1based(twin) - 1, atol=1e-4)
        assert r["yaw"] == pytest.approx(math.degrees(para[1]), abs=1e-3)
        assert r["roll"] == pytest.approx(-math.degrees(para[2]), abs=1e-3)
        assert r["subject"] == name.rsplit("_", 1)[0]
    lp = meta["landmark_pose_check"]
    assert lp["verdict"] == "ok" and lp["problems"] == []
    assert lp["within_photo_slope_ratio"] > 0.9 and lp["yaw_agreement"] > 0.9 and lp["yaw_proxy_corr"] > 0.9
    assert lp["n_photo_groups"] == 12 and lp["photo_groups_identical_landmarks"] == 0
    fc = meta["flip_check"]
    assert fc["pixel_mirror_ratio"]["median"] < 0.3 and fc["pixel_mirror_ratio"]["n"] == 24
    assert fc["yaw"]["max"] < 1e-3 and fc["roll"]["max"] < 1e-3 and fc["pitch"]["max"] < 1e-3
    assert sorted(meta["landmark_origin"].values()) == [24, 24]
    assert meta["options"] == {"landmark_key": "pts_3d", "landmark_index_base": 1, "flip_landmarks": "mirror",
                               "landmark_check": "error"}


def test_mirror_points_matches_the_hrnet_pair_table():
    rng = np.random.default_rng(0)
    pts1 = rng.uniform(1, W, (68, 2))  # 1-based
    np.testing.assert_allclose(headpose.mirror_points(pts1 - 1, W), hand_mirror_1based(pts1) - 1, atol=1e-12)


def test_pts_2d_and_index_base_keys(tmp_path):
    paras = write_release(tmp_path / "src")
    _, df, out = run_300wlp(tmp_path, landmark_key="pts_2d", landmark_index_base=0)
    r = df[df["path"] == "images/AFW/AFW_222_1_2.jpg"].iloc[0]
    got = read_pts((out / r["path"]).with_suffix(".pts"), index_base=0)
    want = project(paras[("AFW", "AFW_222_1_2")])  # stored as is (index base 0)
    want[:17, 0] += 2.0
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_flip_views_use_a_shipped_flip_landmark_file(tmp_path):
    paras = write_release(tmp_path / "src")
    d = tmp_path / "src/300W_LP/landmarks/AFW_Flip"
    d.mkdir()
    shipped = project(paras[("AFW_Flip", "AFW_111_1_2")]) + 0.25  # marked, to be recognised
    savemat(d / "AFW_111_1_2_pts.mat", {"pts_2d": shipped, "pts_3d": shipped})
    meta, df, out = run_300wlp(tmp_path)
    got = read_pts(out / "images/AFW_Flip/AFW_111_1_2.pts", index_base=0)
    np.testing.assert_allclose(got, shipped - 1, atol=1e-4)
    assert meta["landmark_origin"] == {"landmarks/<subset>/<name>_pts.mat pts_3d": 25,
                                       "mirrored landmarks/<unflipped twin>/<name>_pts.mat pts_3d": 23}


def test_flip_drop_missing_files_and_missing_landmarks_folder(tmp_path):
    write_release(tmp_path / "src")
    meta, df, _ = run_300wlp(tmp_path, flip_landmarks="drop")
    assert len(df) == 24 and not df["path"].str.contains("_Flip").any()
    assert meta["dropped"]["flip_without_own_landmarks"] == 24
    (tmp_path / "src/300W_LP/landmarks/HELEN/HELEN_444_1_1_pts.mat").unlink()
    meta, df, _ = run_300wlp(tmp_path)
    assert meta["dropped"]["landmarks_missing"] == 2  # the view and its _Flip twin
    assert sorted(meta["dropped_examples_by_reason"]["landmarks_missing"]) == [
        "images/HELEN/HELEN_444_1_1.jpg", "images/HELEN_Flip/HELEN_444_1_1.jpg"]
    import shutil

    shutil.rmtree(tmp_path / "src/300W_LP/landmarks")
    with pytest.raises(SourceLayoutError, match=r"landmarks/ is missing.*source photo's points"):
        run_300wlp(tmp_path)


def test_flip_images_that_are_not_mirrors_are_reported(tmp_path, caplog):
    write_release(tmp_path / "src", flip_mirrors=False)
    with caplog.at_level(logging.WARNING, logger="pclbench.data.parsers"):
        meta, _, _ = run_300wlp(tmp_path)
    assert meta["flip_check"]["pixel_mirror_ratio"]["median"] > 0.5
    assert "not pixel mirrors" in caplog.text


# ---------------------------------------------------------------------------------------------- the check


def test_source_photo_points_for_every_view_are_detected(tmp_path, caplog):
    """The reviewer's case: every view carries the source photo's points (the old parser's pt2d)."""
    write_release(tmp_path / "src", source_points_everywhere=True)
    with pytest.raises(SourceFormatError, match=r"do not follow the labelled pose.*within_photo_slope_ratio"):
        run_300wlp(tmp_path)
    assert not (tmp_path / "raw").exists()  # nothing written
    with caplog.at_level(logging.WARNING, logger="pclbench.data.parsers"):
        meta, df, _ = run_300wlp(tmp_path, landmark_check="warn")
    lp = meta["landmark_pose_check"]
    assert lp["verdict"] == "error" and lp["within_photo_slope_ratio"] < 0.5
    assert lp["photo_groups_identical_landmarks"] == lp["n_photo_groups"] == 12
    assert "landmarks and labelled pose disagree" in caplog.text


def test_yaw_proxy_sign_follows_the_projection():
    # 3DDFA yaw > 0 -> stage-1 yaw > 0 (turned to the image left) -> nose left of the eyes -> proxy < 0
    lms = np.stack([project(para_of(y, 0, 0)) - 1 for y in (-60, -20, 0, 20, 60)])
    s = headpose.yaw_proxy(lms, np.zeros(5))
    assert s[0] > s[1] > 0 and abs(s[2]) < 1e-9 and 0 > s[3] > s[4]
    # an in-plane counter-clockwise turn by r on screen (stage-1 roll r) is undone before measuring
    flat = project(para_of(40, 0, 0)) - 1
    r = math.radians(25)
    d = flat - flat.mean(axis=0)
    ccw = flat.mean(axis=0) + np.stack([math.cos(r) * d[:, 0] + math.sin(r) * d[:, 1],
                                        -math.sin(r) * d[:, 0] + math.cos(r) * d[:, 1]], 1)  # y down: up = -y
    assert ccw[45, 1] < flat[45, 1]  # the image-right eye corner went up: counter-clockwise
    got = headpose.yaw_proxy(np.stack([ccw, flat]), np.array([25.0, 0.0]))
    assert got[0] == pytest.approx(got[1], abs=1e-9) and got[1] < 0
    assert headpose.yaw_proxy(ccw[None], np.array([-25.0]))[0] != pytest.approx(got[1], abs=1e-3)


def test_landmark_pose_check_needs_enough_data():
    lms = np.stack([project(para_of(y, 0, 0)) - 1 for y in (-30, 30)])
    poses = np.array([[-30.0, 0, 0], [30.0, 0, 0]])
    lp = headpose.landmark_pose_check(poses, lms, ["a", "a"])
    assert lp["verdict"] == "insufficient data" and lp["yaw_proxy_corr"] is None


# ---------------------------------------------------------------------------------------------- AFLW2000-3D


def write_aflw(root: Path, frontal_points: bool = False) -> list:
    d = root / "AFLW2000"
    paras = []
    for i in range(24):
        para = para_of(-80 + 7 * i, (i % 5) * 4 - 8, (i % 3) * 5 - 5)
        name = f"image{2 * i + 2:05d}"
        save_jpg(d / f"{name}.jpg", picture(i))
        xy = project(para_of(0, 0, 0) if frontal_points else para)  # (68, 2) 1-based
        pt3d = np.vstack([xy.T, np.linspace(-5, 5, 68)[None]])  # (3, 68)
        savemat(d / f"{name}.mat", {"Pose_Para": np.array([para], dtype=np.float32), "pt3d_68": pt3d,
                                    "pt2d": -np.ones((2, 21))})
        paras.append((name, para))
    return paras


def test_aflw2000_per_image_points_and_check(tmp_path):
    paras = write_aflw(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("aflw2000", entry("aflw2000", "test"), tmp_path / "src", out)
    for name, para in paras:
        got = read_pts(out / f"images/{name}.pts", index_base=0)
        np.testing.assert_allclose(got, project(para) - 1, atol=1e-4)
    lp = meta["landmark_pose_check"]
    assert lp["verdict"] == "ok" and lp["within_photo_slope_ratio"] is None and lp["yaw_agreement"] > 0.9


def test_aflw2000_points_that_ignore_the_pose_are_refused(tmp_path):
    write_aflw(tmp_path / "src", frontal_points=True)
    with pytest.raises(SourceFormatError, match=r"aflw2000: the landmarks do not follow the labelled pose"):
        prepare_dataset("aflw2000", entry("aflw2000", "test"), tmp_path / "src", tmp_path / "raw")


# ---------------------------------------------------------------------------------------------- keys


def test_bad_keys_are_refused(tmp_path):
    write_release(tmp_path / "src")
    with pytest.raises(ValueError, match=r"datasets\.300w_lp\.landmark_key is 'pt2d'"):
        run_300wlp(tmp_path, landmark_key="pt2d")
    with pytest.raises(ValueError, match=r"datasets\.300w_lp\.landmark_index_base is True"):
        run_300wlp(tmp_path, landmark_index_base=True)
    good = {"datasets": {"300w_lp": {**entry("300w_lp", "train"), "download": [
        {"name": "a.zip", "urls": ["http://x/a.zip"], "sha256": None, "md5": None, "size": None, "extract": True}]}}}
    validate_config(good, partial=True)
    for key, value in (("landmark_key", "pt2d"), ("flip_landmarks", "keep"), ("landmark_check", "ignore"),
                       ("landmark_index_base", 2)):
        bad = {"datasets": {"300w_lp": {**good["datasets"]["300w_lp"], key: value}}}
        with pytest.raises(ConfigError):
            validate_config(bad, partial=True)
