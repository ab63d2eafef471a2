"""DISFA pre-extracted frames: which image shows which label frame (datasets.disfa.frame_base).

Facts (cited in src/pclbench/data/parsers/disfa.py): the label files ``SNxxx_auK.txt`` hold lines
``<frame>,<intensity>`` with frames counted from 1; frames extracted with ffmpeg's default pattern
are numbered from 1 (image k = label frame k), ME-GraphAU's are numbered from 0 (``SN001/0.png`` =
label frame 1). Every test image is a flat grey whose level encodes the LABEL frame it shows, so a
one-frame shift is visible in the pixels, not only in the file names.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import official_fixtures as fx
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset

AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def entry(**extra) -> dict:
    return {"source": "manual", "parser": "disfa", "tasks": [], "licence": "x", "splits": ["all"], "size": 64,
            **extra}


def intensity(subject_no: int, frame: int, au: int) -> int:
    return (subject_no + frame + au) % 6


def level(subject_no: int, label_frame: int) -> int:
    return 20 * label_frame + subject_no  # grey level of the image showing this label frame


def write_labels(root, subject: str, frames) -> None:
    d = root / "ActionUnit_Labels" / subject
    d.mkdir(parents=True, exist_ok=True)
    no = int(subject[2:])
    for au in AUS:
        (d / f"{subject}_au{au}.txt").write_text("".join(f"{f},{intensity(no, f, au)}\n" for f in frames))


def write_frames(root, subject: str, base: int, label_frames, names=lambda k: f"{k}.png") -> None:
    """Images of the given label frames, numbered as an extractor with first number ``base`` does."""
    no = int(subject[2:])
    for f in label_frames:
        k = f - 1 + base  # image number of label frame f
        fx.write_image(root / "Frames_LeftCamera" / subject / names(k), level(no, f), fmt="PNG")


def pixel(path) -> float:
    with Image.open(path) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean())


def check_output(out, label_frames: dict[str, list[int]]) -> pd.DataFrame:
    df = pd.read_csv(out / "all.csv")
    assert list(zip(df["subject"], df["frame"])) == [(s, f) for s in sorted(label_frames) for f in label_frames[s]]
    for _, r in df.iterrows():
        no = int(r["subject"][2:])
        assert pixel(out / r["path"]) == pytest.approx(level(no, int(r["frame"])), abs=1), r["path"]
        assert r["path"] == f"images/{r['subject']}/{int(r['frame']):05d}.png"
        for au in AUS:
            assert r[f"AU{au}"] == intensity(no, int(r["frame"]), au)
    return df


@pytest.mark.parametrize("base", [0, 1])
def test_auto_detects_the_base_of_each_extractor(tmp_path, base):
    src, out = tmp_path / "src", tmp_path / "raw"
    for s in ("SN001", "SN013"):
        write_labels(src, s, [1, 2, 3, 4])
        write_frames(src, s, base, [1, 2, 3, 4])
    meta = prepare_dataset("disfa", entry(), src, out)
    check_output(out, {"SN001": [1, 2, 3, 4], "SN013": [1, 2, 3, 4]})
    assert meta["frame_base"]["value"] == base and meta["frame_base"]["per_subject"] == {"SN001": base, "SN013": base}
    assert meta["frame_base"]["decided_by"].startswith("auto")
    assert json.loads((out / "meta.json").read_text())["label_frame_base"] == 1
    assert meta["dropped"]["frame_without_image"] == 0


def test_padded_and_prefixed_names(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    write_labels(src, "SN002", [1, 2, 3])
    write_frames(src, "SN002", 0, [1, 2, 3], names=lambda k: f"SN002_{k:04d}.png")
    meta = prepare_dataset("disfa", entry(), src, out)
    check_output(out, {"SN002": [1, 2, 3]})
    assert meta["frame_base"]["value"] == 0


def test_ambiguous_folder_is_refused_until_the_base_is_set(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    write_labels(src, "SN001", [1, 2, 3, 4])
    write_frames(src, "SN001", 0, [1, 2, 4])  # images 0, 1, 3: image 2 was lost -> 0..N-1 or 1..N? neither
    with pytest.raises(SourceLayoutError, match=r"SN001 \(3 images numbered 0\.\.3.*datasets\.disfa\.frame_base"):
        prepare_dataset("disfa", entry(), src, out)
    assert not out.exists()
    meta = prepare_dataset("disfa", entry(frame_base=0), src, out)
    check_output(out, {"SN001": [1, 2, 4]})
    assert meta["frame_base"] == {"value": 0, "decided_by": "config datasets.disfa.frame_base",
                                  "rule": "label frame f (1-based) = image number k + 1"}
    assert meta["dropped"]["frame_without_image"] == 1


def test_configured_base_is_applied_as_given(tmp_path):
    # a 1-based folder read with frame_base 0 shifts by one frame: the option is obeyed, not second-guessed
    src, out = tmp_path / "src", tmp_path / "raw"
    write_labels(src, "SN001", [1, 2, 3])
    write_frames(src, "SN001", 1, [1, 2, 3])
    prepare_dataset("disfa", entry(frame_base=0), src, out)
    df = pd.read_csv(out / "all.csv")
    # label frame f <- image f - 1: label 1 has no image 0; labels 2, 3 get images 1, 2, which the
    # 1-based extractor wrote for label frames 1, 2
    assert list(df["frame"]) == [2, 3]
    for _, r in df.iterrows():
        assert pixel(out / r["path"]) == pytest.approx(level(1, int(r["frame"]) - 1), abs=1)


def test_subjects_that_disagree_and_bad_values(tmp_path):
    src = tmp_path / "src"
    write_labels(src, "SN001", [1, 2])
    write_labels(src, "SN013", [1, 2])
    write_frames(src, "SN001", 0, [1, 2])
    write_frames(src, "SN013", 1, [1, 2])
    with pytest.raises(SourceLayoutError, match=r"\['SN001'\] start at 0, subjects \['SN013'\] at 1"):
        prepare_dataset("disfa", entry(), src, tmp_path / "raw")
    with pytest.raises(ValueError, match="frame_base"):
        prepare_dataset("disfa", entry(frame_base=2), src, tmp_path / "raw")
    with pytest.raises(ValueError, match="frame_base"):
        prepare_dataset("disfa", entry(frame_base=True), src, tmp_path / "raw")


def test_two_images_for_one_frame_and_conflicting_label_lines(tmp_path):
    src = tmp_path / "src"
    write_labels(src, "SN001", [1, 2])
    write_frames(src, "SN001", 1, [1, 2])
    fx.write_image(src / "Frames_LeftCamera/SN001/0001.jpg", 9, fmt="JPEG")
    with pytest.raises(SourceFormatError, match=r"0001\.jpg and 1\.png are both frame 1"):
        prepare_dataset("disfa", entry(), src, tmp_path / "raw")
    (src / "Frames_LeftCamera/SN001/0001.jpg").unlink()
    p = src / "ActionUnit_Labels/SN001/SN001_au4.txt"
    p.write_text(p.read_text() + "2,5\n")  # frame 2 again, another intensity
    want = intensity(1, 2, 4)
    with pytest.raises(SourceFormatError, match=rf"SN001_au4\.txt:3: frame 2 coded 5, but line 2 codes it {want}"):
        prepare_dataset("disfa", entry(), src, tmp_path / "raw")
    p.write_text(p.read_text().rsplit("2,5\n", 1)[0] + f"2,{want}\n")  # the same line twice: kept once
    prepare_dataset("disfa", entry(), src, tmp_path / "raw")
    check_output(tmp_path / "raw", {"SN001": [1, 2]})


def test_config_default_is_auto(default_config):
    assert default_config["datasets"]["disfa"]["frame_base"] == "auto"
    assert default_config["datasets"]["affectnet"]["release"] == "auto"
