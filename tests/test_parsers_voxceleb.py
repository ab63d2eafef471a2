"""VoxCeleb parser: the official meta files, identity matching, settings passed in, path safety.

Formats as public code reads them (cited in src/pclbench/data/parsers/voxceleb.py):

* vox1_meta.csv: TAB-separated, header "VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender<TAB>Nationality<TAB>Set"
  (names with spaces), rows like "id10001<TAB>A.J._Buckley<TAB>m<TAB>Ireland<TAB>dev"
  (kaldi-asr/kaldi egs/voxceleb/v1/local/make_voxceleb1.pl splits rows into these 5 fields).
* vox2_meta.csv: comma-separated "VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set " with space-padded fields.
* face frames: unzippedIntervalFaces/data/<VGGFace1 name>/1.6/<youtube id>/<utterance>/*.jpg
  (JiaRenChang/FaceCycle dataloader/listvox.py).
"""
from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pclbench.data.parsers.registry import PARSERS
from pclbench.data.parsers import SourceFormatError, prepare_dataset
from pclbench.data.parsers import voxceleb
from pclbench.data.parsers.stage1 import UnsafePathError

VOX1_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"


def video_cfg(**over) -> dict:
    d = dict(fps=5.0, max_frames_per_clip=100, image_format="png", jpeg_quality=95, exclusion_file="")
    d.update(over)
    return d


def entry(splits=("train", "test")) -> dict:
    return {"source": "manual", "parser": "voxceleb1", "tasks": ["pretrain"], "licence": "x",
            "splits": list(splits), "size": 64}


def frames(src: Path, folder: str, yt: str, utt: str, n: int) -> None:
    d = src / "unzippedIntervalFaces" / "data" / folder / "1.6" / yt / utt
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (8, 8), (20 * k, 5, 5)).save(d / f"{k + 1:07d}.jpg")


# ------------------------------------------------------------------------------------------ meta files

def test_vox1_meta_official_header_with_spaces(tmp_path):
    p = tmp_path / "vox1_meta.csv"
    p.write_text(VOX1_HEADER + "id10001\tA.J._Buckley\tm\tIreland\tdev\nid10270\tEartha_Kitt\tf\tUSA\ttest\n")
    meta = voxceleb.read_meta(p)
    assert {k: (v["id"], v["set"]) for k, v in meta.items()} == {"A.J._Buckley": ("id10001", "dev"),
                                                                 "Eartha_Kitt": ("id10270", "test")}
    # the same file saved with a BOM, CRLF line ends and trailing blanks reads the same
    p.write_bytes(b"\xef\xbb\xbf" + (VOX1_HEADER.replace("\n", "\r\n") +
                                      "id10001 \tA.J._Buckley\tm\tIreland\tdev \r\n\r\n").encode())
    assert voxceleb.read_meta(p)["A.J._Buckley"]["id"] == "id10001"


def test_vox2_meta_comma_separated_with_padded_fields(tmp_path):
    p = tmp_path / "vox2_meta.csv"
    p.write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,m ,dev \nid00017 ,n000017 ,f ,test \n")
    meta = voxceleb.read_meta(p)
    assert {k: (v["id"], v["set"]) for k, v in meta.items()} == {"n000012": ("id00012", "dev"),
                                                                 "n000017": ("id00017", "test")}


@pytest.mark.parametrize("row, err, msg", [
    ("id10002\tB_B\tm\tUK\ttrain\n", SourceFormatError, r"vox1_meta\.csv:3: Set 'train' is neither dev nor test"),
    ("id10001\tB_B\tm\tUK\tdev\n", SourceFormatError, r"vox1_meta\.csv:3: id id10001 already on line 2"),
    ("../x\tB_B\tm\tUK\tdev\n", UnsafePathError, r"vox1_meta\.csv:3: .*'\.\.'"),
    ("a/b\tB_B\tm\tUK\tdev\n", UnsafePathError, r"vox1_meta\.csv:3: identity id 'a/b' is not a single folder"),
    ("id10002\tB_B\tm\tdev\n", SourceFormatError, r"vox1_meta\.csv:3: 4 fields, the header has 5"),
])
def test_vox1_meta_errors_name_file_and_line(tmp_path, row, err, msg):
    p = tmp_path / "vox1_meta.csv"
    p.write_text(VOX1_HEADER + "id10001\tA.J._Buckley\tm\tIreland\tdev\n" + row)
    with pytest.raises(err, match=msg):
        voxceleb.read_meta(p)


def test_meta_without_the_needed_columns_is_refused(tmp_path):
    p = tmp_path / "vox1_meta.csv"
    p.write_text("ID\tName\tSet\nid10001\tA\tdev\n")
    with pytest.raises(SourceFormatError, match=r"vox1_meta\.csv:1: expected the columns"):
        voxceleb.read_meta(p)


# ------------------------------------------------------------------------------------------ matching

META_ROWS = [  # id, VGGFace1 name, set
    ("id10001", "A.J._Buckley", "dev"),
    ("id10002", "Aaron_Tveit", "dev"),
    ("id10003", "Aamir_Khan", "dev"),
    ("id10004", "Jose_Gonzalez", "dev"),
    ("id10005", "Ann_Lee", "dev"),
    ("id10006", "Ann.Lee", "dev"),
    ("id10007", "Never_Placed", "dev"),
    ("id10270", "Eartha_Kitt", "test"),
]
# folder name in the copy -> what the documented rules give (by hand): (id, how) or None
FOLDERS = {
    "A.J._Buckley": ("id10001", "name"),
    "AJ_Buckley": None,                       # normalises to A.J._Buckley, which the folder above already took
    "id10003": ("id10003", "id"),             # a copy whose folders are named by id
    "aaron-tveit": ("id10002", "normalised"),
    "José_González": ("id10004", "normalised"),
    "ANN LEE": None,                          # ambiguous: Ann_Lee and Ann.Lee
    "Unknown_Person": None,                   # no row
    "Eartha_Kitt": ("id10270", "name"),
}


def write_release(src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    (src / "vox1_meta.csv").write_text(
        VOX1_HEADER + "".join(f"{i}\t{n}\tm\tX\t{s}\n" for i, n, s in META_ROWS))
    for folder in FOLDERS:
        frames(src, folder, "yt0000000AA", "1", 2)


def test_identity_matching_by_id_name_and_normalised_name(tmp_path, caplog):
    src = tmp_path / "src"
    write_release(src)
    out = tmp_path / "raw"
    with caplog.at_level(logging.INFO, logger="pclbench.data.parsers"):
        meta = PARSERS.get("voxceleb1")(entry(), src, out, video=video_cfg())
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    want_train = sorted(v[0] for v in FOLDERS.values() if v and v[0] != "id10270")
    assert sorted(train["subject"].unique()) == want_train
    assert test["subject"].unique().tolist() == ["id10270"]
    m = meta["identity_matching"]
    assert m["matched"] == sum(1 for v in FOLDERS.values() if v)
    assert sorted((x["folder"], x["id"]) for x in m["matched_by_normalised_name"]) == sorted(
        (f, v[0]) for f, v in FOLDERS.items() if v and v[1] == "normalised")
    unmatched = {u["folder"]: u["reason"] for u in m["unmatched"]}
    assert set(unmatched) == {f for f, v in FOLDERS.items() if v is None}
    assert "already matched by folder 'A.J._Buckley'" in unmatched["AJ_Buckley"]
    assert "ambiguous" in unmatched["ANN LEE"] and "no meta row" in unmatched["Unknown_Person"]
    assert m["meta_rows_without_folder"] == ["Ann_Lee", "Ann.Lee", "Never_Placed"]
    # the log names every identity left out
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for folder in unmatched:
        assert repr(folder) in warned
    # the frames of a folder matched by normalisation are its released files, under the meta id
    rel = "images/id10004/yt0000000AA/1/00001.jpg"
    assert rel in train["path"].tolist()
    src_frame = src / "unzippedIntervalFaces/data/José_González/1.6/yt0000000AA/1/0000002.jpg"
    assert (out / rel).read_bytes() == src_frame.read_bytes()


def test_exclusion_by_meta_name_applies_to_a_normalised_match(tmp_path):
    src = tmp_path / "src"
    write_release(src)
    excl = tmp_path / "ex.txt"
    excl.write_text("Jose_Gonzalez\n")  # the meta spelling; the folder is José_González
    meta = PARSERS.get("voxceleb1")(entry(["train"]), src, tmp_path / "raw", video=video_cfg(exclusion_file=str(excl)))
    assert meta["exclusion"]["excluded"] == ["id10004"]
    assert "id10004" not in set(pd.read_csv(tmp_path / "raw" / "train.csv")["subject"])


# ------------------------------------------------------------------------------------------ settings

def test_parser_reads_no_configuration_itself(tmp_path):
    src = tmp_path / "src"
    write_release(src)
    with pytest.raises(ValueError, match="config section `video` must be passed"):
        PARSERS.get("voxceleb1")(entry(), src, tmp_path / "raw")
    with pytest.raises(ValueError, match=r"needs the config section\(s\) \['video'\]"):
        prepare_dataset("voxceleb1", entry(), src, tmp_path / "raw", config={})
    tree = ast.parse(Path(voxceleb.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.split(".")[-1] == "cli" for m in imported), imported
    assert "load_config" not in Path(voxceleb.__file__).read_text()


def test_importing_the_parsers_does_not_import_the_cli():
    code = "import sys, pclbench.data.parsers; print('pclbench.cli' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(voxceleb.__file__).resolve().parents[3]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ path safety

def test_symlinked_identity_folder_out_of_the_release_is_refused(tmp_path):
    src = tmp_path / "src"
    write_release(src)
    outside = tmp_path / "elsewhere"
    frames(outside, "Never_Placed", "yt0000000AA", "1", 1)
    os.symlink(outside / "unzippedIntervalFaces/data/Never_Placed",
               src / "unzippedIntervalFaces/data/Never_Placed")
    with pytest.raises(UnsafePathError, match="outside"):
        PARSERS.get("voxceleb1")(entry(), src, tmp_path / "raw", video=video_cfg())
    assert not (tmp_path / "raw").exists()


def test_symlinked_frame_out_of_the_release_is_refused(tmp_path):
    src = tmp_path / "src"
    write_release(src)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    os.symlink(secret, src / "unzippedIntervalFaces/data/Eartha_Kitt/1.6/yt0000000AA/1/0000000.jpg")
    with pytest.raises(UnsafePathError, match=r"0000000\.jpg.*outside"):
        PARSERS.get("voxceleb1")(entry(), src, tmp_path / "raw", video=video_cfg())


def test_fifo_frame_is_skipped_with_a_reason(tmp_path):
    src = tmp_path / "src"
    write_release(src)
    os.mkfifo(src / "unzippedIntervalFaces/data/Eartha_Kitt/1.6/yt0000000AA/1/0000000.jpg")
    meta = PARSERS.get("voxceleb1")(entry(), src, tmp_path / "raw", video=video_cfg())
    assert [s["reason"] for s in meta["skipped_files"]] == ["not a regular file"]
    assert len(pd.read_csv(tmp_path / "raw" / "test.csv")) == 2
