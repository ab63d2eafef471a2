"""Parsers (data/parsers/): official release formats -> the stage-1 layout of docs/architecture.md.

Every test writes a tiny dataset in the exact official format (tests/official_fixtures.py), runs the
parser and compares the manifests with expectations computed by hand from the dataset documentation
(label tables written out here by NAME, fold tables, the 3DDFA projection for the pose signs).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import official_fixtures as fx
from pclbench.align.pts import read_pts
from pclbench.data.parsers.registry import PARSERS
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers import headpose
from pclbench.data.parsers.stage1 import MANIFEST_BASE

RAF = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral", "contempt"]


def entry(parser: str, splits: list[str]) -> dict:
    return {"source": "manual", "parser": parser, "tasks": [], "licence": "x", "splits": splits, "size": 64}


def manifest(out: Path, split: str) -> pd.DataFrame:
    df = pd.read_csv(out / f"{split}.csv")
    assert list(df.columns[: len(MANIFEST_BASE)]) == list(MANIFEST_BASE)
    for p in df["path"]:
        assert (out / p).is_file(), p
    return df


def pixel(path: Path) -> float:
    with Image.open(path) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean())


# ----------------------------------------------------------------------------------------------------------


def test_registry_names_and_synth_entry(tmp_path):
    assert set(PARSERS.names()) == {"raf_db", "affectnet", "fer2013", "lfw", "cplfw", "disfa", "bp4d", "300w_lp",
                                    "aflw2000", "synth", "voxceleb1", "voxceleb2"}
    with pytest.raises(ValueError, match="pclbench generate"):
        PARSERS.get("synth")(entry("synth", ["train"]), tmp_path, tmp_path / "out")


def test_raf_db_labels_are_rafdb_order_minus_one(tmp_path):
    fx.write_raf_db(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), tmp_path / "src", out)
    names = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
    tr, te = manifest(out, "train"), manifest(out, "test")
    assert list(tr["path"]) == [f"images/aligned/train_0000{i}_aligned.jpg" for i in (1, 2, 3)]
    assert [RAF[k] for k in tr["expression"]] == [names[1], names[7], names[4]]
    assert [RAF[k] for k in te["expression"]] == [names[5], names[2]]
    assert (tr["subject"] == -1).all() and (tr["fold"] == -1).all() and (tr["clip"] == -1).all()
    assert tr["yaw"].isna().all()
    assert meta["images"] == "aligned" and meta["splits"] == {"train": 3, "test": 2}
    assert pixel(out / tr["path"][1]) == pytest.approx(101, abs=1)  # the aligned file, not the original


def test_raf_db_falls_back_to_original_images(tmp_path):
    fx.write_raf_db(tmp_path / "src", with_aligned=False)
    meta = PARSERS.get("raf_db")(entry("raf_db", ["train", "test"]), tmp_path / "src", tmp_path / "raw")
    assert meta["images"] == "original"
    assert manifest(tmp_path / "raw", "test")["path"][0] == "images/original/test_0001.jpg"


def test_affectnet_mapping_drops_and_landmarks(tmp_path):
    info = fx.write_affectnet(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), tmp_path / "src", out)
    affectnet_names = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
    tr = manifest(out, "train")
    assert list(tr["path"]) == [f"images/{k + 1}/img_{k:02d}.jpg" for k in range(8)]  # 8-10 dropped
    assert [RAF[k] for k in tr["expression"]] == affectnet_names
    assert meta["dropped"]["label_none"] == meta["dropped"]["label_uncertain"] == meta["dropped"]["label_no_face"] == 1
    te = manifest(out, "test")  # validation.csv without a header row
    assert list(te["path"]) == ["images/20/v_a.JPG", "images/20/v_b.jpg"]
    assert [RAF[k] for k in te["expression"]] == ["surprise", "contempt"]
    lm = read_pts(out / "images/4/img_03.pts", index_base=0)
    np.testing.assert_allclose(lm, info["train"][3][2], atol=1e-5)
    assert not (out / "images/20/v_b.pts").exists() and meta["dropped"]["no_landmarks"] == 1


def test_fer2013_pixels_splits_and_mapping(tmp_path):
    info = fx.write_fer2013(tmp_path / "src")
    out = tmp_path / "raw"
    prepare_dataset("fer2013", entry("fer2013", ["train", "val", "test"]), tmp_path / "src", out)
    fer = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"}
    split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    seen = {"train": [], "val": [], "test": []}
    for k, (emotion, usage) in enumerate(info["rows"]):
        seen[split[usage]].append((f"images/{split[usage]}/{k:05d}.png", fer[emotion], k))
    for s, want in seen.items():
        df = manifest(out, s)
        assert list(df["path"]) == [w[0] for w in want]
        assert [RAF[e] for e in df["expression"]] == [w[1] for w in want]
        for (p, _, k) in want:
            with Image.open(out / p) as im:
                assert im.size == (48, 48) and im.mode == "L"
                np.testing.assert_array_equal(np.asarray(im), info["images"][k])


def test_lfw_pairs_folds_and_manifest(tmp_path):
    fx.write_lfw(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("lfw", entry("lfw", ["all"]), tmp_path / "src", out)
    pairs = pd.read_csv(out / "pairs.csv")
    i = lambda n, k: f"images/{n}/{n}_{k:04d}.jpg"  # noqa: E731
    want = [(0, i("Ann_A", 1), i("Ann_A", 2), 1), (0, i("Bob_B", 1), i("Bob_B", 2), 1),
            (0, i("Ann_A", 3), i("Cid_C", 1), 0), (0, i("Bob_B", 2), i("Cid_C", 1), 0),
            (1, i("Dee_D", 1), i("Dee_D", 2), 1), (1, i("Dee_D", 2), i("Dee_D", 1), 1),
            (1, i("Eve_E", 1), i("Fay_F", 1), 0), (1, i("Dee_D", 1), i("Eve_E", 1), 0)]
    assert [tuple(r) for r in pairs[["fold", "path_a", "path_b", "same"]].itertuples(index=False)] == want
    df = manifest(out, "all")
    assert set(df["path"]) == {p for w in want for p in w[1:3]}
    folds = dict(zip(df["subject"], df["fold"]))
    assert folds == {"Ann_A": 0, "Bob_B": 0, "Cid_C": 0, "Dee_D": 1, "Eve_E": 1, "Fay_F": 1}
    assert meta["counts"] == {"pairs": 8, "same_pairs": 4, "identities": 6, "folds": 2}


def test_lfw_errors_name_file_and_line(tmp_path):
    fx.write_lfw(tmp_path / "src", pairs_in_downloads=False)
    p = tmp_path / "src" / "pairs.txt"
    lines = p.read_text().splitlines()
    lines[3] = "Ann_A\t3\tCid_C"  # a mismatched line with 3 fields
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"pairs\.txt:4: set 0.*mismatched"):
        prepare_dataset("lfw", entry("lfw", ["all"]), tmp_path / "src", tmp_path / "raw")
    p.unlink()
    with pytest.raises(SourceLayoutError, match=r"pairs\.txt not found.*expected the official layout"):
        prepare_dataset("lfw", entry("lfw", ["all"]), tmp_path / "src", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_cplfw_consecutive_lines_and_folds(tmp_path):
    info = fx.write_cplfw(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("cplfw", entry("cplfw", ["all"]), tmp_path / "src", out)
    pairs = pd.read_csv(out / "pairs.csv")
    want = [(k // 2, f"images/{a}", f"images/{b}", s) for k, (a, b, s) in enumerate(info["pairs"])]
    assert [tuple(r) for r in pairs.itertuples(index=False)] == want
    df = manifest(out, "all")
    assert sorted(df["path"]) == [f"images/{n}" for n in info["names"]]
    assert dict(zip(df["path"], df["subject"]))["images/P3_Alpha_2.jpg"] == "P3_Alpha"
    assert meta["counts"]["same_pairs_per_fold"] == {str(k): 1 for k in range(10)}  # JSON keys are strings
    # the two lines of a pair must agree
    p = tmp_path / "src" / "pairs_CPLFW.txt"
    lines = p.read_text().splitlines()
    lines[1] = lines[1][:-1] + "0"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match="different labels"):
        prepare_dataset("cplfw", entry("cplfw", ["all"]), tmp_path / "src", tmp_path / "raw2")


def test_disfa_video_frames_intensities_and_folds(tmp_path):
    info = fx.write_disfa(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("disfa", entry("disfa", ["all"]), tmp_path / "src", out)
    df = manifest(out, "all")
    aus = [f"AU{a}" for a in fx.DISFA_AUS]
    assert list(df.columns) == list(MANIFEST_BASE) + aus
    want = [(s, f) for s in ("SN001", "SN013") for f in info["frames"][s]]
    assert list(zip(df["subject"], df["frame"])) == want
    assert dict(zip(df["subject"], df["fold"])) == {"SN001": 0, "SN013": 1}  # published partition
    for _, r in df.iterrows():
        for a in fx.DISFA_AUS:
            assert r[f"AU{a}"] == fx.disfa_intensity(int(r["subject"][2:]), int(r["frame"]), a)
        level = 40 * r["frame"] if r["subject"] == "SN001" else 7 * r["frame"]
        assert pixel(out / r["path"]) == pytest.approx(level, abs=3)  # frame k is the k-th decoded frame
    assert (df["clip"] == 0).all()
    assert meta["dropped"] == {"frame_not_in_all_label_files": 1, "frame_without_image": 0, "not_regular_file": 0}
    assert meta["benchmark_aus"] == ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]


def test_disfa_missing_label_file(tmp_path):
    fx.write_disfa(tmp_path / "src")
    (tmp_path / "src/ActionUnit_Labels/SN013/SN013_au26.txt").unlink()
    with pytest.raises(SourceLayoutError, match=r"SN013_au26\.txt is missing"):
        prepare_dataset("disfa", entry("disfa", ["all"]), tmp_path / "src", tmp_path / "raw")
    (tmp_path / "src/ActionUnit_Labels/SN013/SN013_au26.txt").write_text("1,7\n")
    with pytest.raises(SourceFormatError, match=r"SN013_au26\.txt:1: intensity 7"):
        prepare_dataset("disfa", entry("disfa", ["all"]), tmp_path / "src", tmp_path / "raw")


def test_bp4d_occurrence_codes_drops_and_folds(tmp_path):
    fx.write_bp4d(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("bp4d", entry("bp4d", ["all"]), tmp_path / "src", out)
    df = manifest(out, "all")
    assert list(df.columns) == list(MANIFEST_BASE) + [f"AU{a}" for a in fx.BP4D_AUS]
    # F001_T1 frame 3 has a 9 (not coded), frame 4 has no image
    assert list(zip(df["subject"], df["clip"], df["frame"])) == [("F001", 1, 1), ("F001", 1, 2), ("M011", 2, 10),
                                                                  ("M011", 2, 11)]
    assert list(df["fold"]) == [0, 0, 1, 1]
    for _, r in df.iterrows():
        for a in fx.BP4D_AUS:  # present -> 5, absent -> 0: occurrence = value >= 2 gives the label back
            assert (r[f"AU{a}"] >= 2) == bool(fx.bp4d_code(int(r["frame"]), a))
            assert r[f"AU{a}"] in (0.0, 5.0)
    assert meta["dropped"] == {"au_not_coded_9": 1, "frame_without_image": 1, "not_regular_file": 0}
    csv_path = tmp_path / "src/AUCoding/AU_OCC/M011_T2.csv"
    csv_path.write_text(csv_path.read_text().replace(",24,", ",25,", 1))  # AU24 column gone from the header
    with pytest.raises(SourceFormatError, match=r"M011_T2\.csv:1: header lacks AU column\(s\) \[24\]"):
        prepare_dataset("bp4d", entry("bp4d", ["all"]), tmp_path / "src", out)
    assert len(manifest(out, "all")) == 4  # the failed rerun left the previous output intact


def _expected_pose(para) -> tuple[float, float, float]:
    pitch, yaw, roll = (math.degrees(float(np.float32(v))) for v in para[:3])
    return yaw, pitch, -roll  # 3DDFA roll > 0 is clockwise on screen; stage 1 wants counter-clockwise


def test_pose_sign_convention_against_the_3ddfa_projection():
    # Known answers, derived from the projection in official_fixtures (not from the parser):
    # yaw > 0 in Pose_Para -> nose tip left of the eyes -> stage-1 yaw > 0 (turned to the image left)
    v = fx.project_3ddfa(np.array([0, 0.6, 0, 60, 60, 0, 0.5]))
    assert v[0, 30] < (v[0, 36:42].mean() + v[0, 42:48].mean()) / 2
    assert headpose.pose_from_para([0, 0.6, 0])[0] > 0
    # pitch > 0 -> nose tip above the eye line's projection shift -> looks up (smaller image y)
    up = fx.project_3ddfa(np.array([0.3, 0, 0, 60, 60, 0, 0.5]))
    flat = fx.project_3ddfa(np.array([0, 0, 0, 60, 60, 0, 0.5]))
    assert up[1, 30] < flat[1, 30]
    assert headpose.pose_from_para([0.3, 0, 0])[1] > 0
    # roll > 0 in Pose_Para -> image-right eye LOWER (clockwise) -> stage-1 roll < 0
    r = fx.project_3ddfa(np.array([0, 0, 0.4, 60, 60, 0, 0.5]))
    assert r[1, 42:48].mean() > r[1, 36:42].mean()
    assert headpose.pose_from_para([0, 0, 0.4])[2] == pytest.approx(-math.degrees(0.4))


def test_300w_lp_angles_filter_subjects_and_landmarks(tmp_path):
    from scipy.io import savemat

    own = fx.write_300w_lp(tmp_path / "src")["own_points"]  # each view's (68, 2) 1-based points
    # the .mat's pt2d is the source photo's: it differs from the profiled view _1_1's own points
    assert np.abs(own["AFW/AFW_1051618982_1_1"] - own["AFW/AFW_1051618982_1_0"]).max() > 5
    out = tmp_path / "raw"
    meta = prepare_dataset("300w_lp", entry("300w_lp", ["train"]), tmp_path / "src", out)
    df = manifest(out, "train")
    kept = [(n, p) for n, p in fx.POSES_300WLP if max(abs(math.degrees(a)) for a in p[:3]) <= 99]
    subset_order = list(headpose.SUBSETS_300WLP)
    kept.sort(key=lambda x: (subset_order.index(x[0].split("/")[0]), x[0]))
    assert list(df["path"]) == [f"images/{n}.jpg" for n, _ in kept]
    for (n, p), (_, r) in zip(kept, df.iterrows()):
        assert (r["yaw"], r["pitch"], r["roll"]) == pytest.approx(_expected_pose(p), abs=1e-3)
        lm = read_pts((out / r["path"]).with_suffix(".pts"), index_base=0)
        # _Flip views (no file of their own): the unflipped twin's points mirrored in the 120 px image
        # (the mirror itself is checked against HRNet's pair table in test_parsers_headpose.py)
        want = headpose.mirror_points(own[n.replace("_Flip/", "/")] - 1, 120) if "_Flip/" in n else own[n] - 1
        np.testing.assert_allclose(lm, want, atol=1e-3)
    assert list(df["subject"]) == ["AFW_1051618982_1"] * 3 + ["HELEN_232194_1"]
    assert meta["dropped"]["out_of_range_99deg"] == 1
    assert meta["dropped_examples"] == ["images/IBUG/IBUG_image_003_1_0.jpg"]
    assert meta["convention_check"]["yaw_sign_agreement"] == 1.0 and meta["convention_check"]["yaw_n"] == 3
    assert meta["convention_check"]["roll_sign_agreement"] == 1.0 and meta["convention_check"]["roll_n"] == 1


def test_aflw2000_uses_pt3d_68_and_drops_beyond_99(tmp_path):
    fx.write_aflw2000(tmp_path / "src")
    out = tmp_path / "raw"
    meta = prepare_dataset("aflw2000", entry("aflw2000", ["test"]), tmp_path / "src", out)
    df = manifest(out, "test")
    assert list(df["path"]) == ["images/image00002.jpg", "images/image00004.jpg"]
    for (_, p), (_, r) in zip(fx.POSES_AFLW, df.iterrows()):
        assert (r["yaw"], r["pitch"], r["roll"]) == pytest.approx(_expected_pose(p), abs=1e-3)
    assert (df["subject"] == -1).all()
    lm = read_pts(out / "images/image00002.pts", index_base=0)
    assert lm.shape == (68, 2)
    assert meta["dropped"]["out_of_range_99deg"] == 2 and meta["n_source_images"] == 4


def test_headpose_bad_mat_and_split_mismatch(tmp_path):
    from scipy.io import savemat

    fx.write_aflw2000(tmp_path / "src")
    with pytest.raises(ValueError, match=r"datasets\.aflw2000\.splits is \['train'\].*writes the splits \['test'\]"):
        prepare_dataset("aflw2000", entry("aflw2000", ["train"]), tmp_path / "src", tmp_path / "raw")
    savemat(tmp_path / "src/AFLW2000/image00004.mat", {"pt3d_68": np.zeros((3, 68))})
    with pytest.raises(SourceFormatError, match=r"image00004\.mat: key 'Pose_Para' missing"):
        prepare_dataset("aflw2000", entry("aflw2000", ["test"]), tmp_path / "src", tmp_path / "raw")
    with pytest.raises(SourceLayoutError, match=r"300W-LP subset folders"):
        prepare_dataset("300w_lp", entry("300w_lp", ["train"]), tmp_path / "src", tmp_path / "raw")


def test_cli_prepare_reads_the_config_entry(tmp_path, repo_root):
    fx.write_raf_db(tmp_path / "src")
    manual = {"obtain": "x", "from": "y", "files": [{"path": "basic", "kind": "dir", "sha256": None}]}
    params = json.dumps({"datasets": {"raf_db": {**entry("raf_db", ["train", "test"]), "manual": manual}}})
    r = subprocess.run([sys.executable, "-m", "pclbench", "prepare", "--params", params, "--dataset", "raf_db",
                        "--source", str(tmp_path / "src"), "--out", str(tmp_path / "raw")],
                       cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "raw/meta.json").read_text())["splits"] == {"train": 3, "test": 2}
    r = subprocess.run([sys.executable, "-m", "pclbench", "prepare", "--params", params, "--dataset", "lfw",
                        "--source", str(tmp_path / "src"), "--out", str(tmp_path / "raw2")],
                       cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 2 and "lfw" in r.stderr


def test_config_entries_name_registered_parsers_and_their_splits(default_config):
    # what each parser writes (module docstrings); the config must declare exactly these splits
    writes = {"raf_db": ["train", "test"], "affectnet": ["train", "test"], "fer2013": ["train", "val", "test"],
              "lfw": ["all"], "cplfw": ["all"], "disfa": ["all"], "bp4d": ["all"], "300w_lp": ["train"],
              "aflw2000": ["test"]}
    real = {n: d for n, d in default_config["datasets"].items() if d["source"] != "synthetic"}
    assert set(writes) <= set(real)
    for name, want in writes.items():
        d = real[name]
        assert d["parser"] == name and d["parser"] in PARSERS
        assert d["splits"] == want, name
        assert d["size"] == {"expression": 100, "pose": 256}.get(d["tasks"][0], 112), name
