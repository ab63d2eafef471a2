"""AffectNet's two releases: the csv one (training.csv / validation.csv) and the newer npy one.

The npy fixtures are written as public code that reads the release finds them
(armand-07/emotion_recognition notebooks/data_exploration_raw_AffectNet.ipynb: ``<split>_set/images/<n>.jpg``
and ``<split>_set/annotations/<n>_{exp,val,aro,lnd}.npy``; exp/val/aro one value stored as a numpy
unicode string, lnd 136 floats, x and y interleaved -- pablotanner/emotion-recognition
src/util/visualize_landmarks.py plots ``lnd.reshape(-1, 2)`` over the image). Expected labels are
written out by NAME from the AffectNet README order quoted there (0 Neutral ... 7 Contempt).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import official_fixtures as fx
from pclbench.align.pts import read_pts
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers.stage1 import MANIFEST_BASE

RAF = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral", "contempt"]
# AffectNet README order (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt),
# spelled with the stage-1 names
README = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger",
          7: "contempt"}


def entry(**extra) -> dict:
    return {"source": "manual", "parser": "affectnet", "tasks": [], "licence": "x", "splits": ["train", "test"],
            "size": 64, **extra}


def manifest(out, split) -> pd.DataFrame:
    df = pd.read_csv(out / f"{split}.csv")
    assert list(df.columns) == list(MANIFEST_BASE)
    for p in df["path"]:
        assert (out / p).is_file(), p
    return df


def landmarks_flat(seed: int) -> np.ndarray:
    """136 floats as in ``<n>_lnd.npy``: x0, y0, x1, y1, ..."""
    return np.round(np.random.default_rng(seed).uniform(5, 220, size=136), 3)


def write_npy_release(root, labels: dict[str, list[int]], lnd_ok: bool = True) -> dict:
    """``{train_set,val_set}/images/<n>.jpg`` + ``annotations/<n>_{exp,val,aro,lnd}.npy``."""
    info = {}
    for folder, labs in labels.items():
        ann = root / folder / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        for n, lab in enumerate(labs):
            fx.write_image(root / folder / "images" / f"{n}.jpg", 10 + 20 * lab, fmt="JPEG")
            np.save(ann / f"{n}_exp.npy", np.array(str(lab)))  # a 0-d '<U1' array, as in the release
            np.save(ann / f"{n}_val.npy", np.array("0.25"))
            np.save(ann / f"{n}_aro.npy", np.array("-0.5"))
            lnd = landmarks_flat(100 * len(folder) + n)
            np.save(ann / f"{n}_lnd.npy", lnd if lnd_ok else lnd[:100])
            info[(folder, n)] = lnd
    return info


def test_npy_release_labels_landmarks_and_meta(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    info = write_npy_release(src, {"train_set": list(range(8)), "val_set": [3, 7]})
    assert np.load(src / "train_set/annotations/0_exp.npy").dtype.kind == "U"  # the fixture is what we claim
    meta = prepare_dataset("affectnet", entry(), src, out)
    assert meta["release"] == "npy"
    tr, te = manifest(out, "train"), manifest(out, "test")
    assert list(tr["path"]) == [f"images/train_set/{n}.jpg" for n in range(8)]
    assert [RAF[k] for k in tr["expression"]] == [README[n] for n in range(8)]
    assert list(te["path"]) == ["images/val_set/0.jpg", "images/val_set/1.jpg"]
    assert [RAF[k] for k in te["expression"]] == ["surprise", "contempt"]
    assert (tr["subject"] == -1).all() and tr["yaw"].isna().all()
    # .pts: point k is (lnd[2k], lnd[2k+1]), built here by a plain loop
    for (folder, n), lnd in info.items():
        want = np.array([[lnd[2 * k], lnd[2 * k + 1]] for k in range(68)])
        got = read_pts(out / "images" / folder / f"{n}.pts", index_base=0)
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert meta["splits"] == {"train": 8, "test": 2} and meta["dropped"]["no_landmarks"] == 0


def test_npy_release_drops_missing_pairs_and_bad_landmarks(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    write_npy_release(src, {"train_set": [0, 1, 2], "val_set": [6]}, lnd_ok=False)
    (src / "train_set/annotations/1_exp.npy").unlink()           # image without its expression
    (src / "val_set/annotations/9_exp.npy").write_bytes((src / "val_set/annotations/0_exp.npy").read_bytes())
    meta = prepare_dataset("affectnet", entry(), src, out)          # ... and an expression without image
    assert list(manifest(out, "train")["path"]) == ["images/train_set/0.jpg", "images/train_set/2.jpg"]
    assert meta["dropped"]["annotation_missing"] == 1 and meta["dropped"]["image_missing"] == 1
    assert meta["dropped"]["no_landmarks"] == 3                      # 100 values instead of 136: no .pts
    assert not (out / "images/train_set/0.pts").exists()


def test_npy_expression_formats(tmp_path):
    src = tmp_path / "src"
    write_npy_release(src, {"train_set": [0, 1], "val_set": [2]})
    ann = src / "train_set/annotations"
    np.save(ann / "1_exp.npy", np.array([5], dtype=np.int64))     # a numeric copy is read the same way
    meta = prepare_dataset("affectnet", entry(), src, tmp_path / "raw")
    assert [RAF[k] for k in manifest(tmp_path / "raw", "train")["expression"]] == ["neutral", "disgust"]
    assert meta["release"] == "npy"
    np.save(ann / "1_exp.npy", np.array("happy"))
    with pytest.raises(SourceFormatError, match=r"1_exp\.npy: expression 'happy' is not an integer"):
        prepare_dataset("affectnet", entry(), src, tmp_path / "raw2")
    np.save(ann / "1_exp.npy", np.array([{"label": 1}], dtype=object))  # a pickle: never unpickled
    with pytest.raises(SourceFormatError, match=r"1_exp\.npy: not a readable \.npy array"):
        prepare_dataset("affectnet", entry(), src, tmp_path / "raw2")
    np.save(ann / "1_exp.npy", np.array("12"))
    with pytest.raises(SourceFormatError, match=r"1_exp\.npy: expression 12 outside AffectNet's 0-10"):
        prepare_dataset("affectnet", entry(), src, tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_release_detection_and_override(tmp_path):
    src = tmp_path / "src"
    fx.write_affectnet(src)
    meta = prepare_dataset("affectnet", entry(), src, tmp_path / "raw")
    assert meta["release"] == "csv" and meta["splits"] == {"train": 8, "test": 2}
    write_npy_release(src, {"train_set": [1], "val_set": [2]})
    with pytest.raises(SourceLayoutError, match=r"both AffectNet releases.*datasets\.affectnet\.release"):
        prepare_dataset("affectnet", entry(), src, tmp_path / "raw2")
    assert prepare_dataset("affectnet", entry(release="csv"), src, tmp_path / "raw2")["release"] == "csv"
    meta = prepare_dataset("affectnet", entry(release="npy"), src, tmp_path / "raw3")
    assert meta["release"] == "npy" and meta["splits"] == {"train": 1, "test": 1}
    with pytest.raises(ValueError, match="release"):
        prepare_dataset("affectnet", entry(release="both"), src, tmp_path / "raw4")
