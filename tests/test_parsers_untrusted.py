"""File names read from a release are untrusted: they never read or write outside the
release and the output folder, a refusal names file and line, and nothing already produced is lost.

The attacks are written into releases in their official formats (tests/official_fixtures.py): a
RAF-DB label line, AffectNet CSV rows, a symlink planted in the image folder, an image listed in both
AffectNet CSVs, and FIFOs where an image or a label file is expected (opening a FIFO blocks: those
runs happen in a thread that must finish; the join timeout only keeps a regression from hanging the
suite).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

import official_fixtures as fx
from bounded import replace_with_fifo, run_bounded, unblock
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers.stage1 import UnsafePathError

RAF_LABELS = "basic/EmoLabel/list_patition_label.txt"


def entry(parser: str, splits: list[str]) -> dict:
    return {"source": "manual", "parser": parser, "tasks": [], "licence": "x", "splits": splits, "size": 64}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- RAF-DB


def test_raf_db_label_line_cannot_overwrite_another_dataset(tmp_path):
    sources, raw = tmp_path / "sources", tmp_path / "raw"
    src, out = sources / "raf_db", raw / "raf_db"
    fx.write_raf_db(src, with_aligned=False)  # Image/original: the label's file name is used as is
    prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out)
    before = snapshot(out)
    # another dataset's manifest, next to raf_db's output (paths.raw/<name>/)
    victim = raw / "victim" / "train.csv"
    victim.parent.mkdir(parents=True)
    victim.write_text("path,subject\nimages/a.jpg,1\n")
    # what the attacker plants so that the name resolves: a folder train_x and a payload 4 levels up
    (src / "basic/Image/original/train_x").mkdir()
    (src / "victim").mkdir()
    (src / "victim/train.csv").write_text("pwned\n")
    labels = src / RAF_LABELS
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines + ["train_x/../../../../victim/train.csv 1"]) + "\n")
    with pytest.raises(UnsafePathError) as err:
        prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out)
    assert f"{labels}:{len(lines) + 1}:" in str(err.value) and "'..'" in str(err.value)
    assert victim.read_text() == "path,subject\nimages/a.jpg,1\n"  # untouched
    assert snapshot(out) == before                                # the previous output is intact
    assert sorted(p.name for p in raw.iterdir()) == ["raf_db", "victim"]  # no temporary folder left


def test_raf_db_absolute_label_name(tmp_path):
    src = tmp_path / "src"
    fx.write_raf_db(src)
    host = tmp_path / "host.jpg"
    fx.write_image(host, 200)
    labels = src / RAF_LABELS
    labels.write_text(f"{host} 4\n" + labels.read_text())
    with pytest.raises(UnsafePathError, match=rf"{labels}:1: absolute file name"):
        prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------------------------ AffectNet


def affectnet_rows(src: Path, name: str) -> list[str]:
    return (src / "Manually_Annotated_file_lists" / name).read_text().splitlines()


def write_rows(src: Path, name: str, rows: list[str]) -> Path:
    p = src / "Manually_Annotated_file_lists" / name
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_affectnet_row_leaving_the_image_folder(tmp_path, kind):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    host = tmp_path / "host_secret.jpg"
    fx.write_image(host, 77, fmt="JPEG")
    rows = affectnet_rows(src, "training.csv")
    name = str(host) if kind == "absolute" else "../../host_secret.jpg"
    rows.insert(2, rows[1].replace(rows[1].split(",", 1)[0], name, 1))  # row 3: a copy of row 2 naming the host file
    csv_path = write_rows(src, "training.csv", rows)
    with pytest.raises(UnsafePathError, match=rf"{csv_path}:3: "):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert not out.exists() and os.stat(host).st_nlink == 1  # nothing written, no hard link to the host file


def test_symlink_out_of_the_release(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    outside = tmp_path / "outside.jpg"
    fx.write_image(outside, 99, fmt="JPEG")
    img = src / "Manually_Annotated_Images/2/img_01.jpg"  # training.csv line 3
    img.unlink()
    img.symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"training\.csv:3: '2/img_01\.jpg' resolves to .*outside"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert not out.exists()
    # a symlink that stays inside the release is fine
    img.unlink()
    img.symlink_to(src / "Manually_Annotated_Images/1/img_00.jpg")
    meta = prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert meta["splits"]["train"] == 8


def test_symlink_out_of_the_release_disfa_frames(tmp_path):
    src = tmp_path / "src"
    d = src / "ActionUnit_Labels/SN001"
    d.mkdir(parents=True)
    for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26):
        (d / f"SN001_au{au}.txt").write_text("1,0\n2,1\n")
    fx.write_image(src / "Frames_LeftCamera/SN001/1.png", 10, fmt="PNG")
    fx.write_image(tmp_path / "elsewhere.png", 10, fmt="PNG")
    (src / "Frames_LeftCamera/SN001/2.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(UnsafePathError, match=r"2\.png.*outside"):
        prepare_dataset("disfa", entry("disfa", ["all"]), src, tmp_path / "raw")


def test_image_listed_in_both_affectnet_csvs(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    train, val = affectnet_rows(src, "training.csv"), affectnet_rows(src, "validation.csv")
    # training.csv line 5 is 4/img_03.jpg, label 3 (surprise); validation.csv has no header
    assert train[4].startswith("4/img_03.jpg,") and train[4].split(",")[-3] == "3"
    val_path = write_rows(src, "validation.csv", val + [train[4]])  # validation.csv line 3: the same image
    meta = prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    tr, te = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert "images/4/img_03.jpg" in set(tr["path"]) and "images/4/img_03.jpg" not in set(te["path"])
    assert len(te) == 2 and meta["dropped"]["duplicate_rows"] == 1
    assert meta["duplicate_examples"] == [f"{val_path}:3 (first listed at {src}/Manually_Annotated_file_lists/"
                                          f"training.csv:5)"]
    # the same image with another label: an error naming both lines, the previous output kept
    before = snapshot(out)
    fields = train[4].split(",")
    fields[-3] = "6"
    write_rows(src, "validation.csv", val + [",".join(fields)])
    with pytest.raises(SourceFormatError, match=rf"{val_path}:3: '4/img_03\.jpg' is listed again with "
                                                rf"expression 6 \(anger\), but .*training\.csv:5 gives 3"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------- FIFOs


def test_fifo_instead_of_an_affectnet_image(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    img = src / "Manually_Annotated_Images/2/img_01.jpg"
    replace_with_fifo(img)
    try:
        meta = run_bounded(lambda: prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out))
    finally:
        unblock(img)
    assert meta["dropped"]["not_regular_file"] == 1 and meta["splits"]["train"] == 7
    assert "images/2/img_01.jpg" not in set(pd.read_csv(out / "train.csv")["path"])


def test_fifo_instead_of_a_raf_db_image(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_raf_db(src)
    img = src / "basic/Image/aligned/train_00002_aligned.jpg"
    replace_with_fifo(img)
    try:
        meta = run_bounded(lambda: prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out))
    finally:
        unblock(img)
    assert meta["dropped"]["not_regular_file"] == 1 and meta["splits"] == {"train": 2, "test": 2}


def test_fifo_instead_of_disfa_frame_and_label_file(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    d = src / "ActionUnit_Labels/SN001"
    d.mkdir(parents=True)
    for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26):
        (d / f"SN001_au{au}.txt").write_text("1,0\n2,1\n3,2\n")
    for k in (1, 3):
        fx.write_image(src / f"Frames_LeftCamera/SN001/{k}.png", 10 * k, fmt="PNG")
    frame = src / "Frames_LeftCamera/SN001/2.png"
    os.mkfifo(frame)
    disfa = {**entry("disfa", ["all"]), "frame_base": 1}  # images 1, 3 alone are not a gap-free run
    try:
        meta = run_bounded(lambda: prepare_dataset("disfa", disfa, src, out))
    finally:
        unblock(frame)
    assert meta["dropped"]["not_regular_file"] == 1 and meta["dropped"]["frame_without_image"] == 1
    assert list(pd.read_csv(out / "all.csv")["frame"]) == [1, 3]
    label = d / "SN001_au26.txt"
    replace_with_fifo(label)
    try:
        with pytest.raises(SourceLayoutError, match=r"SN001_au26\.txt is not a regular file"):
            run_bounded(lambda: prepare_dataset("disfa", disfa, src, tmp_path / "raw2"))
    finally:
        unblock(label)


def test_fifo_instead_of_bp4d_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_bp4d(src)
    img = src / "BP4D-training/F001/T1/0002.jpg"
    replace_with_fifo(img)
    csv_fifo = src / "AUCoding/AU_OCC/F002_T1.csv"
    os.mkfifo(csv_fifo)
    try:
        meta = run_bounded(lambda: prepare_dataset("bp4d", entry("bp4d", ["all"]), src, out))
    finally:
        unblock(img)
        unblock(csv_fifo)
    assert meta["dropped"] == {"au_not_coded_9": 1, "frame_without_image": 2, "not_regular_file": 2}
    df = pd.read_csv(out / "all.csv")
    assert list(zip(df["subject"], df["frame"])) == [("F001", 1), ("M011", 10), ("M011", 11)]
