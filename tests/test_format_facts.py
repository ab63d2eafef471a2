"""Release-format facts re-established from public readers of each release.

Every fixture here is written the way the cited public code READS the release, independently of
tests/official_fixtures.py; expected values are computed by the cited rule, not by the parser.

| fact | public source |
|---|---|
| 300W-LP ``landmarks/<subset>/<name>_pts.mat``: ``pts_2d``, ``pts_3d`` both (68, 2); image ``.mat``:
  ``pt2d`` (2, 68) (read with ``.T``), ``Pose_Para`` 7 values, 450x450 images | tensorflow/datasets
  ``tensorflow_datasets/datasets/the300w_lp/the300w_lp_dataset_builder.py`` |
| ``Pose_Para`` = [pitch, yaw, roll, tx, ty, tz, scale], radians | natanielruiz/deep-head-pose
  ``code/datasets.py`` (``get_ypr_from_mat``); cleardusk/3DDFA issue #192 |
| ``_Flip`` folders hold images + ``.mat`` (122,450 = 2 x 61,225 samples) | deep-head-pose issue #60 |
| AFLW2000-3D ``pt3d_68`` (3, 68), read with ``.T`` | tensorflow/datasets ``aflw2k3d_dataset_builder.py`` |
| pairs_CPLFW.txt: two lines ``"<file> <label>"`` per pair, label of line 1; 3000 same then 3000
  different; set k = same[300k:300k+300] + diff[3000+300k:...] | JDAI-CV/FaceX-Zoo
  ``test_protocol/lfw/pairs_parser.py`` (``CPLFW_PairsParser``) |
| LFW pairs.txt: header skipped, 3 TAB fields matched / 4 mismatched, ``name/name_%04d.jpg`` | FaceX-Zoo
  ``LFW_PairsParser`` (same file) |
| vox1_meta.csv TAB-separated, header ``VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`` | public
  readers ``pd.read_csv('vox1_meta.csv', sep='\\t')`` indexing ``'VoxCeleb1 ID'`` / ``'VGGFace1 ID'``;
  kaldi-asr/kaldi ``egs/voxceleb/v1/local/make_voxceleb1.pl`` (5 whitespace fields) |
| vox2_meta.csv comma-separated, header and fields padded with a space (``'VoxCeleb2 ID '``,
  ``'Set '`` = ``'dev '``) | public readers ``csv.DictReader`` + ``row["VoxCeleb2 ID "].strip()`` |
| AffectNet csv columns ``subDirectory_filePath,...,facial_landmarks,expression,valence,arousal`` | public
  converter script comment (content search) + AffectNet README order 0-10 |
| DISFA ``SNxxx_auK.txt`` lines ``frame,intensity``; the 3 folds; 8 benchmark AUs | CVI-SZU/ME-GraphAU
  ``tool/DISFA_image_label_process.py`` |
| BP4D ``AUCoding/AU_OCC/<subj>_<task>.csv``: header ``0,1,2,4,...`` (AU numbers, frame column "0"),
  index = frame number = image name | CVI-SZU/ME-GraphAU ``tool/BP4D_image_label_process.py`` |
| FER2013 ``emotion,pixels,Usage``; 0 Angry ... 6 Neutral; Training/PublicTest/PrivateTest | Kaggle data
  page as quoted by public READMEs (e.g. abhirup-ghosh/facial-expression-classifier-app data/README.md) |
| RAF-DB ``list_patition_label.txt`` ``"<name> <1-7>"``, aligned file = name with ``_aligned`` before
  ``.jpg``, label - 1 = 0 Surprise ... 6 Neutral | msy1412/AU-ViT ``data/RAFDB_100.py``; public
  ``RafDataSet`` loaders (``pd.read_csv(..., sep=' ')``, ``label - 1``) |
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import savemat

from pclbench.align.pts import read_pts
from pclbench.data.parsers import prepare_dataset
from pclbench.data.parsers import bp4d, cplfw, disfa, lfw, voxceleb


def entry(parser: str, splits, tasks=("x",), **extra) -> dict:
    return {"source": "manual", "parser": parser, "tasks": list(tasks), "licence": "x", "splits": list(splits),
            "size": 64, **extra}


def img(path: Path, value: int, size=(16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format="JPEG")


# ---------------------------------------------------------------------------------------------- AFLW2000-3D

def test_aflw2000_pt3d_68_is_3_by_68_and_pose_para_is_pitch_yaw_roll_radians(tmp_path):
    """TFDS aflw2k3d: ``mat["pt3d_68"].T`` -> (68, 3) rows x, y, z; deep-head-pose: Pose_Para[:3] = pitch,
    yaw, roll in radians. A 3x68 array whose x and y rows are distinct ramps tells (3, 68) from (68, 3)."""
    src = tmp_path / "src" / "AFLW2000"
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(3):
        name = f"image{k + 2:05d}"
        img(src / f"{name}.jpg", 40 * k, size=(450, 450))
        x = 100 + 3.0 * np.arange(68) + k
        y = 300 - 2.0 * np.arange(68) + k
        pt3d = np.stack([x, y, rng.normal(size=68)])  # (3, 68) as released
        para = np.array([[0.1 * k, -0.2 * k, 0.05 * k, 0, 0, 0, 1e-3]], dtype=np.float32)  # (1, 7)
        savemat(src / f"{name}.mat", {"pt3d_68": pt3d, "Pose_Para": para, "pt2d": -np.ones((2, 21))})
        truth[name] = (pt3d, para[0])
    out = tmp_path / "raw"
    prepare_dataset("aflw2000", entry("aflw2000", ["test"], landmark_check="warn"), tmp_path / "src", out)
    df = pd.read_csv(out / "test.csv")
    assert len(df) == 3
    for _, r in df.iterrows():
        pt3d, para = truth[Path(r["path"]).stem]
        got = read_pts((out / r["path"]).with_suffix(".pts"), index_base=0)
        # default landmark_index_base 1: 0-based = stored - 1; x = row 0, y = row 1
        np.testing.assert_allclose(got, np.stack([pt3d[0], pt3d[1]], axis=1) - 1, atol=1e-4)
        assert r["pitch"] == pytest.approx(math.degrees(para[0]), abs=1e-3)
        assert r["yaw"] == pytest.approx(math.degrees(para[1]), abs=1e-3)
        assert r["roll"] == pytest.approx(-math.degrees(para[2]), abs=1e-3)  # stage-1 roll sign (docstring)


# ---------------------------------------------------------------------------------------------- 300W-LP

def test_300wlp_pts_mat_is_68_by_2_and_flip_views_get_mirrored_points(tmp_path):
    """TFDS the300w_lp: ``ldm_mat["pts_2d"]`` / ``["pts_3d"]`` used as (68, 2) without transpose, image
    ``.mat`` ``pt2d`` used with ``.T`` (so (2, 68)); landmarks/ only for the unflipped folders; images
    450x450. A ``_Flip`` view (image + .mat, deep-head-pose issue #60) without its own landmark file gets
    the mirrored twin's points: as a SET of points, x -> W + 1 - x in 1-based (W - 1 - x 0-based)."""
    root = tmp_path / "src" / "300W_LP"
    W = 450
    x = 150 + 2.0 * np.arange(68)
    y = 200 + 0.5 * np.arange(68)
    pts3d = np.stack([x, y], axis=1)             # (68, 2): point, x/y
    pts2d = pts3d + 1.5
    src_pt2d = np.stack([x + 7, y - 3])          # (2, 68): the source photo's points (not used)
    para = np.array([[0.05, 0.3, -0.1, 225, 225, 0, 1e-3]], dtype=np.float32)
    flip_para = np.array([[0.05, -0.3, 0.1, 225, 225, 0, 1e-3]], dtype=np.float32)
    arr = (np.arange(W * W * 3).reshape(W, W, 3) % 251).astype(np.uint8)
    for sub, p, a in (("AFW", para, arr), ("AFW_Flip", flip_para, arr[:, ::-1].copy())):
        (root / sub).mkdir(parents=True)
        Image.fromarray(a).save(root / sub / "AFW_1_1_0.jpg", quality=95)
        savemat(root / sub / "AFW_1_1_0.mat", {"Pose_Para": p, "pt2d": src_pt2d, "Shape_Para": np.zeros((199, 1))})
    (root / "landmarks" / "AFW").mkdir(parents=True)
    savemat(root / "landmarks" / "AFW" / "AFW_1_1_0_pts.mat", {"pts_2d": pts2d, "pts_3d": pts3d})

    out = tmp_path / "raw"
    prepare_dataset("300w_lp", entry("300w_lp", ["train"], landmark_check="warn"), tmp_path / "src", out)
    df = pd.read_csv(out / "train.csv").set_index("path")
    assert len(df) == 2
    plain = next(p for p in df.index if "/AFW/" in p)
    flip = next(p for p in df.index if "/AFW_Flip/" in p)
    got = read_pts((out / plain).with_suffix(".pts"), index_base=0)
    np.testing.assert_allclose(got, pts3d - 1, atol=1e-4)  # pts_3d (default key), 1-based -> 0-based
    assert df.loc[plain, "yaw"] == pytest.approx(math.degrees(0.3), abs=1e-3)
    assert df.loc[plain, "pitch"] == pytest.approx(math.degrees(0.05), abs=1e-3)
    got_f = read_pts((out / flip).with_suffix(".pts"), index_base=0)
    want = np.stack([(W + 1 - pts3d[:, 0]) - 1, pts3d[:, 1] - 1], axis=1)
    # point order is the left/right permutation (tested in test_parsers_headpose); compare as sets
    assert sorted(map(tuple, np.round(got_f, 3))) == sorted(map(tuple, np.round(want, 3)))


# ---------------------------------------------------------------------------------------------- CPLFW / LFW

def test_cplfw_released_order_gives_facexzoo_sets(tmp_path):
    """FaceX-Zoo CPLFW_PairsParser: pair = lines (2i, 2i+1), name = first field, label = line 1's second
    field; set k = same pairs [k*p, (k+1)*p) + different pairs [n + k*p, n + (k+1)*p)."""
    p, n = 2, 20
    same = [(f"A{i:02d}_Name_1.jpg", f"A{i:02d}_Name_2.jpg", 1) for i in range(n)]
    diff = [(f"B{i:02d}_One_1.jpg", f"C{i:02d}_Two_3.jpg", 0) for i in range(n)]
    path = tmp_path / "pairs_CPLFW.txt"
    path.write_text("".join(f"{a} {s}\n{b} {s}\n" for a, b, s in same + diff))
    got = cplfw.read_pairs(path)
    assert [(a, b, s) for _, a, b, s in got] == same + diff
    for k in range(10):
        idx = list(range(k * p, (k + 1) * p)) + list(range(n + k * p, n + (k + 1) * p))
        assert sorted(i for i, r in enumerate(got) if r[0] == k) == idx


def test_lfw_pairs_txt_fields_and_image_names(tmp_path):
    """FaceX-Zoo LFW_PairsParser: first line skipped ('10\\t300'), TAB fields, 3 = matched
    ``name/name_%04d.jpg`` (index zero-filled to 4), 4 = mismatched; set = line's block of 2n."""
    lines = ["10\t1"]
    for k in range(10):
        lines += [f"Per_{k}\t1\t12", f"Per_{k}\t3\tOther_{k}\t104"]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    pairs, n_sets, n_per = lfw.read_pairs(path)
    assert (n_sets, n_per, len(pairs)) == (10, 1, 20)
    assert pairs[0] == (0, "Per_0/Per_0_0001.jpg", "Per_0/Per_0_0012.jpg", 1)
    assert pairs[19] == (9, "Per_9/Per_9_0003.jpg", "Other_9/Other_9_0104.jpg", 0)


# ---------------------------------------------------------------------------------------------- VoxCeleb

def test_vox1_meta_tab_header_and_vox2_meta_padded_commas(tmp_path):
    v1 = tmp_path / "vox1_meta.csv"
    v1.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                  "id10001\tA.J._Buckley\tm\tIreland\tdev\n"
                  "id10270\tEartha_Kitt\tf\tUSA\ttest\n")
    m1 = voxceleb.read_meta(v1)
    assert m1["A.J._Buckley"]["id"] == "id10001" and m1["A.J._Buckley"]["set"] == "dev"
    assert m1["Eartha_Kitt"]["id"] == "id10270" and m1["Eartha_Kitt"]["set"] == "test"
    v2 = tmp_path / "vox2_meta.csv"
    v2.write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,m ,dev \nid00017 ,n000017 ,f ,test \n")
    m2 = voxceleb.read_meta(v2)
    assert m2["n000012"]["id"] == "id00012" and m2["n000012"]["set"] == "dev"
    assert m2["n000017"]["set"] == "test"


# ---------------------------------------------------------------------------------------------- AffectNet

def test_affectnet_csv_columns_and_label_order(tmp_path):
    """Columns by name; labels 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt,
    8-10 (None, Uncertain, No-Face) dropped; stage-1 names = RAF order + contempt."""
    src = tmp_path / "src"
    lists = src / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    names = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
    lm = ";".join(f"{v:.1f}" for v in np.arange(136) + 10)
    rows = ["subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"]
    for lab in range(11):
        rel = f"{lab + 1}/f{lab}.jpg"
        img(src / "Manually_Annotated_Images" / rel, 10 + lab)
        rows.append(f"{rel},0,0,16,12,{lm},{lab},0.1,0.2")
    (lists / "training.csv").write_text("\n".join(rows) + "\n")
    img(src / "Manually_Annotated_Images" / "99/v.jpg", 5)
    (lists / "validation.csv").write_text(rows[0] + f"\n99/v.jpg,0,0,16,12,{lm},3,0.0,0.0\n")
    out = tmp_path / "raw"
    prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    from pclbench.data.parsers.stage1 import EXPRESSIONS_8
    df = pd.read_csv(out / "train.csv")
    assert len(df) == 8
    for _, r in df.iterrows():
        lab = int(Path(r["path"]).stem[1:])
        assert EXPRESSIONS_8[r["expression"]] == names[lab]
    test = pd.read_csv(out / "test.csv")
    assert [EXPRESSIONS_8[e] for e in test["expression"]] == ["surprise"]


# ---------------------------------------------------------------------------------------------- DISFA / BP4D

def test_disfa_label_lines_and_folds(tmp_path):
    """ME-GraphAU reads ``SNxxx_auK.txt`` lines ``frameIdx,AUIntensity`` (split on ','); the 27 subjects
    in 3 folds of 9 (part1/2/3 of the same script)."""
    f = tmp_path / "SN001_au1.txt"
    f.write_text("1,0\n2,3\n3,5\n")
    assert disfa.read_au_file(f) == {1: 0, 2: 3, 3: 5}
    me_graphau = [
        ["SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"],
        ["SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"],
        ["SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"]]
    assert [list(p) for p in disfa.FOLDS] == me_graphau
    assert len({s for p in me_graphau for s in p}) == 27
    assert set(disfa.BENCHMARK_AUS) == {1, 2, 4, 6, 9, 12, 25, 26}


def test_bp4d_occurrence_csv_as_me_graphau_reads_it(tmp_path):
    """ME-GraphAU: ``pd.read_csv(header=0, index_col=0, usecols=["0","1","2","4",...])``: header cells are
    AU numbers, the first ("0") is the frame column, whose values name the image ``<frame>.jpg``."""
    header_aus = list(range(1, 100))  # one column per AU number, as the usecols strings imply
    path = tmp_path / "F001_T1.csv"
    rows = ["0," + ",".join(map(str, header_aus))]
    codes = {2440: {a: (a + 1) % 2 for a in header_aus}, 2441: {a: a % 2 for a in header_aus}}
    codes[2442] = {**codes[2441], 7: 9}
    for fr, c in codes.items():
        rows.append(f"{fr}," + ",".join(str(c[a]) for a in header_aus))
    path.write_text("\n".join(rows) + "\n")
    got, unknown = bp4d.read_occurrence(path)
    assert sorted(got) == [2440, 2441] and unknown == 1  # 9 = not coded: dropped
    for fr in (2440, 2441):
        for a in bp4d.AUS:
            assert got[fr][f"AU{a}"] == 5.0 * codes[fr][a]


# ---------------------------------------------------------------------------------------------- FER2013 / RAF-DB

def test_fer2013_usage_and_label_order(tmp_path):
    fer = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    usage = ["Training", "Training", "PublicTest", "PrivateTest", "PrivateTest", "Training", "PublicTest"]
    lines = ["emotion,pixels,Usage"]
    for e, u in enumerate(usage):
        lines.append(f"{e},{' '.join(str((e * 7 + i) % 256) for i in range(2304))},{u}")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fer2013.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "raw"
    prepare_dataset("fer2013", entry("fer2013", ["train", "val", "test"]), src, out)
    from pclbench.data.parsers.stage1 import RAF_EXPRESSIONS
    seen = {}
    for split, want in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        df = pd.read_csv(out / f"{split}.csv")
        assert len(df) == usage.count(want)
        for _, r in df.iterrows():
            row = int(Path(r["path"]).stem)  # 0-based data row of the CSV
            assert usage[row] == want
            seen[row] = RAF_EXPRESSIONS[r["expression"]]
            px = np.asarray(Image.open(out / r["path"]))
            assert px.shape == (48, 48) and px[0, 1] == (row * 7 + 1) % 256  # row-major
    assert seen == {e: fer[e] for e in range(7)}


def test_raf_db_label_list_aligned_names_and_order(tmp_path):
    raf = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    base = tmp_path / "src" / "basic"
    names = [f"train_{i:05d}.jpg" for i in range(1, 8)] + ["test_0001.jpg"]
    labels = list(range(1, 8)) + [5]
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{n} {k}\n" for n, k in zip(names, labels)))
    for i, n in enumerate(names):
        img(base / "Image" / "aligned" / n.replace(".jpg", "_aligned.jpg"), 20 + i, size=(100, 100))
    out = tmp_path / "raw"
    prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), tmp_path / "src", out)
    from pclbench.data.parsers.stage1 import RAF_EXPRESSIONS
    tr, te = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert len(tr) == 7 and len(te) == 1
    for _, r in tr.iterrows():
        k = int(Path(r["path"]).stem.split("_")[1])  # train_0000k_aligned
        assert Path(r["path"]).name == f"train_{k:05d}_aligned.jpg"
        assert RAF_EXPRESSIONS[r["expression"]] == raf[k - 1]
    assert RAF_EXPRESSIONS[te["expression"][0]] == "sadness"
