"""Attacks on the rule that a placed dataset is untrusted input, parser by parser and through
``pclbench prepare`` / ``align``.

Every release is written in its official format (tests/official_fixtures.py), then one file or one
name is replaced by an attack: a name that collides with a file the parser itself writes, non-UTF-8
bytes in a label file, a symlink or FIFO where an image / ``.mat`` / ``.npy`` is expected, a
manifest row leaving the raw folder, pickled or malformed ``.npy`` annotations, broken images.
Runs that could block on a FIFO happen in a thread with a join timeout (a hang guard, not a timing
assertion). Each refusal must name the file (and line where there is one), the CLI must exit with a
message instead of a traceback, and the release and any previous output must be left unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import official_fixtures as fx
from bounded import replace_with_fifo, run_bounded
from test_align_crops import _cfg_dict as align_cfg_dict
from pclbench.core.config import from_dict
from pclbench.align.aligner import AlignConfig, align_split
from pclbench.align.images import read_image
from pclbench.align.pts import write_pts
from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers.stage1 import DuplicateImageError, UnsafePathError

REPO = Path(__file__).resolve().parents[1]
RAF_LABELS = "basic/EmoLabel/list_patition_label.txt"
LATIN1 = "Caf\xe9".encode("latin-1")  # b"Caf\xe9": not valid UTF-8


def entry(parser: str, splits: list[str], **extra) -> dict:
    return {"source": "manual", "parser": parser, "tasks": [], "licence": "x", "splits": splits, "size": 64,
            **extra}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclbench", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")})


# --------------------------------------------------------------------------- AffectNet: a name vs a .pts


def test_affectnet_image_named_like_a_pts_cannot_overwrite_the_release(tmp_path):
    """training.csv lists ``1/img_00.pts`` (an image file the attacker named .pts) before
    ``1/img_00.jpg``, whose landmarks go to ``images/1/img_00.pts``: writing them must not replace the
    first image, which is a hard link to the release's file (writing through it edits the release)."""
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    planted = src / "Manually_Annotated_Images/1/img_00.pts"
    fx.write_image(planted, 5, fmt="JPEG")
    planted_bytes = planted.read_bytes()
    csv_path = src / "Manually_Annotated_file_lists/training.csv"
    rows = csv_path.read_text().splitlines()
    assert rows[1].startswith("1/img_00.jpg,")
    rows.insert(1, rows[1].replace("1/img_00.jpg", "1/img_00.pts", 1))  # line 2: the .pts "image"
    csv_path.write_text("\n".join(rows) + "\n")
    # line 2's own landmarks would go to images/1/img_00.pts: that is the image itself
    with pytest.raises(DuplicateImageError, match=rf"{csv_path}:2: img_00\.pts would be written twice"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert planted.read_bytes() == planted_bytes  # the release is untouched
    assert not out.exists()


def test_affectnet_two_images_sharing_a_pts_name(tmp_path):
    """``1/img_00.jpg`` and ``1/img_00.png`` (both with landmarks) would share ``1/img_00.pts``: the
    second must not silently replace the first's landmarks."""
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    fx.write_image(src / "Manually_Annotated_Images/1/img_00.png", 6, fmt="PNG")
    csv_path = src / "Manually_Annotated_file_lists/training.csv"
    rows = csv_path.read_text().splitlines()
    rows.insert(2, rows[2].replace(rows[2].split(",", 1)[0], "1/img_00.png", 1))  # line 3, landmarks of row 3
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DuplicateImageError, match=rf"{csv_path}:3: img_00\.pts would be written twice"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert not out.exists()


def test_affectnet_names_colliding_after_normalisation_are_one_image(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_affectnet(src)
    csv_path = src / "Manually_Annotated_file_lists/training.csv"
    rows = csv_path.read_text().splitlines()
    rows.append(rows[1].replace("1/img_00.jpg", "1//./img_00.jpg", 1))
    csv_path.write_text("\n".join(rows) + "\n")
    meta = prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, out)
    assert meta["dropped"]["duplicate_rows"] == 1
    assert list(pd.read_csv(out / "train.csv")["path"]).count("images/1/img_00.jpg") == 1


# ------------------------------------------------------------------------ AffectNet npy: pickles, shapes


def _affectnet_npy(src: Path) -> None:
    """The npy release: {train_set,val_set}/images/<n>.jpg + annotations/<n>_exp.npy (the label as a
    unicode string, as the parser's docstring describes) and <n>_lnd.npy (136 values)."""
    for split, n in (("train_set", 3), ("val_set", 2)):
        ann = src / split / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            fx.write_image(src / split / "images" / f"{k}.jpg", 10 + k, fmt="JPEG")
            np.save(ann / f"{k}_exp.npy", np.array(str(k % 7)))
            np.save(ann / f"{k}_lnd.npy", np.arange(136, dtype=np.float64))


def test_affectnet_npy_pickle_and_bad_shapes_are_refused(tmp_path):
    src = tmp_path / "src"
    _affectnet_npy(src)
    e = entry("affectnet", ["train", "test"], release="npy")
    meta = prepare_dataset("affectnet", e, src, tmp_path / "ok")
    assert meta["splits"] == {"train": 3, "test": 2}
    exp = src / "train_set/annotations/1_exp.npy"
    np.save(exp, np.array([{"label": 3}], dtype=object), allow_pickle=True)  # a pickle: never unpickled
    with pytest.raises(SourceFormatError, match=rf"{exp}: not a readable \.npy"):
        prepare_dataset("affectnet", e, src, tmp_path / "raw")
    np.save(exp, np.array([1, 2, 3]))  # wrong shape
    with pytest.raises(SourceFormatError, match=rf"{exp}: expected one expression code"):
        prepare_dataset("affectnet", e, src, tmp_path / "raw")
    exp.write_bytes(b"")  # zero bytes
    with pytest.raises(SourceFormatError, match=rf"{exp}: not a readable \.npy"):
        prepare_dataset("affectnet", e, src, tmp_path / "raw")
    # a header promising 10**12 float64 values on a 100-byte file: refused, not a MemoryError
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    exp.write_bytes(b"\x93NUMPY\x01\x00" + len(header.ljust(118) + "\n").to_bytes(2, "little")
                    + (header.ljust(118) + "\n").encode() + b"\0" * 16)
    with pytest.raises(SourceFormatError, match=rf"{exp}"):
        prepare_dataset("affectnet", e, src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    # a pickled landmark file: the landmarks are dropped (never unpickled), the image kept
    np.save(exp, np.array("3"))
    lnd = src / "train_set/annotations/2_lnd.npy"
    np.save(lnd, np.array([object()], dtype=object), allow_pickle=True)
    meta = prepare_dataset("affectnet", e, src, tmp_path / "raw")
    assert meta["dropped"]["no_landmarks"] == 1


def test_affectnet_npy_fifo_and_dev_zero_annotations(tmp_path):
    src = tmp_path / "src"
    _affectnet_npy(src)
    exp = src / "train_set/annotations/1_exp.npy"
    replace_with_fifo(exp)
    lnd = src / "train_set/annotations/2_lnd.npy"
    replace_with_fifo(lnd)
    e = entry("affectnet", ["train", "test"], release="npy")
    meta = run_bounded(lambda: prepare_dataset("affectnet", e, src, tmp_path / "raw"), fifos=[exp, lnd])
    assert meta["dropped"]["not_regular_file"] == 1 and meta["dropped"]["no_landmarks"] == 1
    exp.unlink()
    exp.symlink_to("/dev/zero")  # outside the release: refused before it is read
    with pytest.raises(UnsafePathError, match="outside"):
        run_bounded(lambda: prepare_dataset("affectnet", e, src, tmp_path / "raw2"), fifos=[lnd])


# ------------------------------------------------------------------------------- non-UTF-8 label files


def _corrupt(path: Path, line_no: int) -> None:
    """Put a non-UTF-8 byte on line ``line_no`` (1-based) of a text file."""
    lines = path.read_bytes().split(b"\n")
    lines[line_no - 1] = lines[line_no - 1] + b" " + LATIN1 if b"," not in lines[line_no - 1] else \
        LATIN1 + lines[line_no - 1]
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("dataset, writer, label, line, splits", [
    ("raf_db", fx.write_raf_db, RAF_LABELS, 2, ["train", "test"]),
    ("affectnet", fx.write_affectnet, "Manually_Annotated_file_lists/training.csv", 3, ["train", "test"]),
    ("fer2013", fx.write_fer2013, "fer2013.csv", 3, ["train", "val", "test"]),
    ("lfw", fx.write_lfw, "downloads/pairs.txt", 2, ["all"]),
    ("cplfw", fx.write_cplfw, "pairs_CPLFW.txt", 2, ["all"]),
    ("disfa", fx.write_disfa, "ActionUnit_Labels/SN013/SN013_au4.txt", 2, ["all"]),
    ("bp4d", fx.write_bp4d, "AUCoding/AU_OCC/F001_T1.csv", 2, ["all"]),
])
def test_non_utf8_label_file_is_a_clear_error(tmp_path, dataset, writer, label, line, splits):
    src, out = tmp_path / "src", tmp_path / "raw"
    writer(src)
    extra = {"frame_base": 1} if dataset == "disfa" else {}
    prepare_dataset(dataset, entry(dataset, splits, **extra), src, out)
    before = snapshot(out)
    path = src / label
    _corrupt(path, line)
    with pytest.raises(SourceFormatError, match=rf"{path}:{line}: .*(UTF-8|utf-8)"):
        prepare_dataset(dataset, entry(dataset, splits, **extra), src, out)
    assert snapshot(out) == before


def test_cli_prepare_non_utf8_and_unsafe_name_exit_cleanly(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_raf_db(src)
    r = cli("prepare", "--dataset", "raf_db", "--source", str(src), "--out", str(out))  # config/config.yaml
    assert r.returncode == 0, r.stderr
    before = snapshot(out)
    labels = src / RAF_LABELS
    good = labels.read_bytes()
    for bad, want in ((good + b"train_\xff.jpg 1\n", f"{labels}:6:"),
                      (good + b"..\\..\\x\\train_1.jpg 1\n", f"{labels}:6:"),
                      (good + b"\\\\server\\share\\train_1.jpg 1\n", f"{labels}:6:"),
                      (good + b"C:\\train_1.jpg 1\n", f"{labels}:6:")):
        labels.write_bytes(bad)
        r = cli("prepare", "--dataset", "raf_db", "--source", str(src), "--out", str(out))
        assert r.returncode == 1 and "Traceback" not in r.stderr and want in r.stderr, r.stderr
        assert snapshot(out) == before


# ------------------------------------------------------------------------------- RAF-DB duplicates, roots


def test_raf_db_same_image_twice_after_normalisation(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_raf_db(src, with_aligned=False)
    labels = src / RAF_LABELS
    labels.write_text(labels.read_text() + "./train_00001.jpg 2\n")
    with pytest.raises(DuplicateImageError, match=rf"{labels}:6: .*listed twice"):
        prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out)
    assert not out.exists()


def test_symlinked_release_root_is_accepted(tmp_path):
    """A release placed as a symlink to other storage is the user's choice, not an escape."""
    real, link = tmp_path / "storage" / "raf", tmp_path / "sources" / "raf_db"
    fx.write_raf_db(real)
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    meta = prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), link, tmp_path / "raw")
    assert meta["splits"] == {"train": 3, "test": 2}


def test_symlinked_image_folder_out_of_the_release(tmp_path):
    src = tmp_path / "src"
    fx.write_raf_db(src, with_aligned=False)
    elsewhere = tmp_path / "elsewhere"
    (src / "basic/Image/original").rename(elsewhere)
    (src / "basic/Image/original").symlink_to(elsewhere, target_is_directory=True)
    # the image folder itself is a link: its files resolve outside the release -- accepted only if the
    # check is made against the image folder's real path; what matters is that nothing outside it is read
    (elsewhere / "sub").mkdir()
    (elsewhere / "sub/train_9.jpg").symlink_to(tmp_path / "secret.jpg")
    fx.write_image(tmp_path / "secret.jpg", 3)
    labels = src / RAF_LABELS
    labels.write_text(labels.read_text() + "sub/train_9.jpg 1\n")
    with pytest.raises(UnsafePathError, match=rf"{labels}:6: .*outside"):
        prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, tmp_path / "raw")


# --------------------------------------------------------------------------------- LFW / CPLFW names


def test_lfw_person_names_with_drive_or_nul(tmp_path):
    src = tmp_path / "src"
    info = fx.write_lfw(src)
    pairs = info["pairs_path"]
    text = pairs.read_text().splitlines()
    for bad in ("C:Ann\t1\t2", "Ann_A\\..\\..\t1\t2"):
        pairs.write_text("\n".join([text[0], bad] + text[2:]) + "\n")
        with pytest.raises(UnsafePathError, match=rf"{pairs}:2:"):
            prepare_dataset("lfw", entry("lfw", ["all"]), src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("bad", ["/etc/hostname", "../x_1.jpg", "C:\\x_1.jpg", "\\\\srv\\s\\x_1.jpg"])
def test_cplfw_unsafe_names(tmp_path, bad):
    src = tmp_path / "src"
    fx.write_cplfw(src)
    pairs = src / "pairs_CPLFW.txt"
    lines = pairs.read_text().splitlines()
    lines[2] = f"{bad} 0"  # line 3: the first image of pair 1 (a different pair, label 0)
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(UnsafePathError, match=rf"{pairs}:3:"):
        prepare_dataset("cplfw", entry("cplfw", ["all"]), src, tmp_path / "raw")


def test_cplfw_fifo_image_is_an_error_not_a_hang(tmp_path):
    src = tmp_path / "src"
    info = fx.write_cplfw(src)
    img = src / "images" / info["names"][0]
    replace_with_fifo(img)
    with pytest.raises(SourceLayoutError, match="not regular files"):
        run_bounded(lambda: prepare_dataset("cplfw", entry("cplfw", ["all"]), src, tmp_path / "raw"), fifos=[img])


# ------------------------------------------------------------------------- head pose: 300W-LP, AFLW2000


def test_aflw2000_image_symlinked_out_of_the_release_is_refused(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_aflw2000(src)
    secret = tmp_path / "secret.jpg"
    fx.write_image(secret, 200, size=(120, 120), fmt="JPEG")
    img = src / "AFLW2000/image00004.jpg"
    img.unlink()
    img.symlink_to(secret)
    with pytest.raises(UnsafePathError, match=r"image00004\.jpg.*outside"):
        prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, out)
    assert not out.exists() and os.stat(secret).st_nlink == 1


def test_aflw2000_mat_symlinked_out_of_the_release_is_refused(tmp_path):
    src = tmp_path / "src"
    fx.write_aflw2000(src)
    mat = src / "AFLW2000/image00004.mat"
    mat.rename(tmp_path / "elsewhere.mat")
    mat.symlink_to(tmp_path / "elsewhere.mat")
    with pytest.raises(UnsafePathError, match=r"image00004\.mat.*outside"):
        prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, tmp_path / "raw")


def test_aflw2000_fifo_image_and_mat_are_skipped_with_a_reason(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw"
    fx.write_aflw2000(src)
    img = src / "AFLW2000/image00004.jpg"
    replace_with_fifo(img)
    meta = run_bounded(lambda: prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, out), fifos=[img])
    assert meta["dropped"]["not_regular_file"] == 1 and meta["splits"] == {"test": 1}
    img.unlink()
    fx.write_image(img, 70, size=(120, 120), fmt="JPEG")
    mat = src / "AFLW2000/image00002.mat"
    replace_with_fifo(mat)
    meta = run_bounded(lambda: prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, tmp_path / "r2"),
                       fifos=[mat])
    assert meta["dropped"]["not_regular_file"] == 1 and meta["splits"] == {"test": 1}


def test_aflw2000_mat_with_wrong_shapes(tmp_path):
    from scipy.io import savemat

    src = tmp_path / "src"
    fx.write_aflw2000(src)
    mat = src / "AFLW2000/image00004.mat"
    savemat(mat, {"Pose_Para": np.zeros((1, 7)), "pt3d_68": np.zeros((3, 5))})
    with pytest.raises(SourceFormatError, match=rf"{mat}"):
        prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, tmp_path / "raw")
    mat.write_bytes(b"")
    with pytest.raises(SourceFormatError, match=rf"{mat}: not a readable \.mat"):
        prepare_dataset("aflw2000", entry("aflw2000", ["test"]), src, tmp_path / "raw")


def test_300w_lp_fifo_flip_image_does_not_hang(tmp_path):
    """A _Flip view without its own landmarks is mirrored from its twin, which needs the view's width:
    a FIFO there must be skipped, not opened."""
    src = tmp_path / "src"
    fx.write_300w_lp(src)
    img = src / "300W_LP/AFW_Flip/AFW_1051618982_1_0.jpg"
    replace_with_fifo(img)
    meta = run_bounded(lambda: prepare_dataset("300w_lp", entry("300w_lp", ["train"]), src, tmp_path / "raw"),
                       fifos=[img])
    assert meta["dropped"]["not_regular_file"] == 1


# -------------------------------------------------------------------------------------------- VoxCeleb


def test_voxceleb_meta_id_leaving_the_folder(tmp_path):
    from pclbench.data.parsers.voxceleb import read_meta

    meta = tmp_path / "vox1_meta.csv"
    meta.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                    "id10001\tA.J._Buckley\tm\tIreland\tdev\n"
                    "..\tB_B\tm\tUSA\ttest\n")
    with pytest.raises(UnsafePathError, match=rf"{meta}:3:"):
        read_meta(meta)
    meta.write_bytes(b"VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid1\t\xff\tm\tX\tdev\n")
    with pytest.raises(SourceFormatError, match=rf"{meta}"):
        read_meta(meta)


# --------------------------------------------------------------------------------------------- align


def _align_cfg(**over) -> AlignConfig:
    return from_dict(AlignConfig, align_cfg_dict(**over), "align")


def _face(scale: float = 30.0, centre=(150.0, 150.0)) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, size=(68, 2))
    base[36:42] += [-0.6, -0.3]  # eyes apart so the five points are not degenerate
    base[42:48] += [0.6, -0.3]
    return base * scale + np.asarray(centre)


def _raw(root: Path, n: int) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        rel = f"img/{i:03d}.png"
        Image.new("RGB", (300, 300), (i * 20, 80, 80)).save(root / rel)
        write_pts((root / rel).with_suffix(".pts"), _face(), index_base=0)
        rels.append(rel)
    pd.DataFrame({"path": rels}).to_csv(root / "train.csv", index=False)
    return rels


@pytest.mark.parametrize("bad", ["../outside.png", "/ABS/outside.png", "img/../../outside.png"])
def test_align_manifest_row_leaving_the_raw_folder_is_refused(tmp_path, bad):
    raw = tmp_path / "raw"
    rels = _raw(raw, 2)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(outside)
    write_pts(outside.with_suffix(".pts"), _face(), index_base=0)
    bad = bad.replace("/ABS", str(tmp_path))
    pd.DataFrame({"path": rels + [bad]}).to_csv(raw / "train.csv", index=False)
    with pytest.raises(UnsafePathError, match=rf"{raw / 'train.csv'}:4:"):
        align_split(raw, "train", tmp_path / "out", _align_cfg(), size=32)
    assert not (tmp_path / "out").exists()


def test_align_non_utf8_manifest_is_a_format_error(tmp_path):
    raw = tmp_path / "raw"
    _raw(raw, 2)
    (raw / "train.csv").write_bytes("path\nimg/caf\u00e9.png\n".encode("latin-1"))
    with pytest.raises(SourceFormatError, match="not a readable UTF-8 manifest"):
        align_split(raw, "train", tmp_path / "out", _align_cfg(), size=32)
    assert not (tmp_path / "out").exists()


def test_align_image_symlinked_to_dev_zero_is_skipped_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    _raw(raw, 3)
    (raw / "img/001.png").unlink()
    (raw / "img/001.png").symlink_to("/dev/zero")
    (raw / "img/002.pts").unlink()
    (raw / "img/002.pts").symlink_to("/dev/zero")
    qc = run_bounded(lambda: align_split(raw, "train", tmp_path / "out", _align_cfg(), size=32))
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert "character device" in reasons["img/001.png"]
    assert "not a regular file" in reasons["img/002.png"]


def test_align_broken_images_fail_with_reasons(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    _raw(raw, 4)
    (raw / "img/000.png").write_bytes(b"")  # zero bytes
    jpg = raw / "img/001.png"
    Image.new("RGB", (100, 100), (9, 9, 9)).save(jpg, format="JPEG")
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated JPEG
    # a decompression bomb: a (small) 16-bit image larger than PIL's MAX_IMAGE_PIXELS allows
    Image.fromarray(np.full((100, 100), 40000, dtype=np.uint16)).save(raw / "img/002.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    qc = align_split(raw, "train", tmp_path / "out", _align_cfg(), size=32)
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert reasons["img/000.png"].startswith("unreadable file")
    assert reasons["img/001.png"].startswith("unreadable file")
    assert "DecompressionBomb" in reasons["img/002.png"]
    # between the limit and twice the limit Pillow only warns: refused all the same
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # the image has 10,000 pixels (1.67x)
    with pytest.raises(Image.DecompressionBombError):
        read_image(raw / "img/002.png")
    monkeypatch.undo()
    grey16 = read_image(raw / "img/002.png")  # 16-bit: scaled to 8 bits, not clipped to white
    assert np.asarray(grey16)[0, 0].tolist() == [round(40000 / 257)] * 3


def test_align_rejects_absurd_landmarks_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    _raw(raw, 4)
    write_pts(raw / "img/000.pts", _face(centre=(1e6, 1e6)), index_base=0)      # far outside
    write_pts(raw / "img/001.pts", _face(scale=1e-3), index_base=0)             # a face of 0.002 px
    write_pts(raw / "img/002.pts", _face(scale=1e7, centre=(0, 0)), index_base=0)  # a face 1e7 px wide
    qc = align_split(raw, "train", tmp_path / "out", _align_cfg(), size=32)
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert reasons["img/000.png"].startswith("landmarks outside the image")
    assert reasons["img/001.png"].split(":")[0] in ("implausible scale", "degenerate transform")
    assert reasons["img/002.png"].split(":")[0] in ("implausible scale", "landmarks outside the image",
                                                    "mostly padding", "degenerate landmarks")
    assert qc["n_kept"] == 1, reasons


# ------------------------------------------------------------------- malformed CSV rows, infinite numbers


def test_affectnet_unclosed_quote_and_infinite_label(tmp_path):
    """An unclosed quote swallows the rest of the file into one field, over the csv module's field
    limit (csv.Error); '1e400' is float inf, whose int() raises OverflowError: both are format errors
    naming the line, not tracebacks."""
    src = tmp_path / "src"
    fx.write_affectnet(src)
    csv_path = src / "Manually_Annotated_file_lists/training.csv"
    rows = csv_path.read_text().splitlines()
    good = list(rows)
    fields = rows[3].split(",")
    fields[-3] = "1e400"
    rows[3] = ",".join(fields)
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(SourceFormatError, match=rf"{csv_path}:4: cannot read"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, tmp_path / "raw")
    csv_path.write_text("\n".join(good[:3]) + '\n1/x.jpg,"' + "9;" * 100_000 + "\n")
    with pytest.raises(SourceFormatError, match=rf"{csv_path}:\d+: not a well-formed CSV row"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_bp4d_infinite_frame_and_huge_field(tmp_path):
    src = tmp_path / "src"
    fx.write_bp4d(src)
    path = src / "AUCoding/AU_OCC/F001_T1.csv"
    lines = path.read_text().splitlines()
    lines[2] = "inf" + lines[2][lines[2].index(","):]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:3: cannot read frame"):
        prepare_dataset("bp4d", entry("bp4d", ["all"]), src, tmp_path / "raw")
    path.write_text(lines[0] + '\n"' + "1" * 200_000 + "\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:\d+: not a well-formed CSV row"):
        prepare_dataset("bp4d", entry("bp4d", ["all"]), src, tmp_path / "raw")


def test_fer2013_huge_field(tmp_path):
    src = tmp_path / "src"
    fx.write_fer2013(src)
    path = src / "fer2013.csv"
    path.write_text(path.read_text() + '0,"' + "1 " * 100_000 + "\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:\d+: not a well-formed CSV row"):
        prepare_dataset("fer2013", entry("fer2013", ["train", "val", "test"]), src, tmp_path / "raw")


def test_disfa_infinite_intensity_and_broken_video(tmp_path):
    src = tmp_path / "src"
    fx.write_disfa(src)
    e = entry("disfa", ["all"], frame_base=1)
    label = src / "ActionUnit_Labels/SN001/SN001_au2.txt"
    good = label.read_text()
    label.write_text("1,inf\n" + good)
    with pytest.raises(SourceFormatError, match=rf"{label}:1: expected"):
        prepare_dataset("disfa", e, src, tmp_path / "raw")
    label.write_text(good)
    video = src / "Videos_LeftCamera/LeftVideoSN001_comp.avi"
    for data in (b"", b"RIFF\x00\x00\x00\x00AVI garbage" * 10):
        video.write_bytes(data)  # zero bytes, then a truncated header
        with pytest.raises(SourceFormatError, match=rf"{video}: not a decodable video"):
            prepare_dataset("disfa", e, src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_cli_align_manifest_leaving_the_raw_folder(tmp_path):
    raw = tmp_path / "raw"
    rels = _raw(raw, 2)
    pd.DataFrame({"path": rels + ["/etc/hostname"]}).to_csv(raw / "train.csv", index=False)
    r = cli("align", "--raw", str(raw), "--split", "train", "--out", str(tmp_path / "out"), "--size", "32",
            "--dataset", "raf_db")
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"{raw / 'train.csv'}:4:" in r.stderr, r.stderr


def test_affectnet_pts_name_that_is_a_folder_of_the_release(tmp_path):
    """``1/img_00.jpg`` (its landmarks -> ``images/1/img_00.pts``) then ``1/img_00.pts/x.jpg`` (a
    folder of the release named like that .pts): a clear error naming the line, not an OSError."""
    src = tmp_path / "src"
    fx.write_affectnet(src)
    fx.write_image(src / "Manually_Annotated_Images/1/img_00.pts/x.jpg", 4, fmt="JPEG")
    csv_path = src / "Manually_Annotated_file_lists/training.csv"
    rows = csv_path.read_text().splitlines()
    rows.insert(2, rows[1].replace("1/img_00.jpg", "1/img_00.pts/x.jpg", 1))  # line 3
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DuplicateImageError, match=rf"{csv_path}:3: cannot write"):
        prepare_dataset("affectnet", entry("affectnet", ["train", "test"]), src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("dataset, writer, label, splits", [
    ("raf_db", fx.write_raf_db, RAF_LABELS, ["train", "test"]),
    ("lfw", fx.write_lfw, "downloads/pairs.txt", ["all"]),
    ("fer2013", fx.write_fer2013, "fer2013.csv", ["train", "val", "test"]),
])
def test_label_file_linked_out_of_the_release_is_not_read(tmp_path, dataset, writer, label, splits):
    """A label file that is a symlink to a file elsewhere (here a 'secret') is refused before it is
    read: its lines would otherwise be quoted in the format errors."""
    src = tmp_path / "src"
    writer(src)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET\n")
    (src / label).unlink()
    (src / label).symlink_to(secret)
    with pytest.raises(UnsafePathError, match="outside") as err:
        prepare_dataset(dataset, entry(dataset, splits), src, tmp_path / "raw")
    assert "SECRET" not in str(err.value)


def test_300w_lp_fifo_landmark_file_is_skipped_with_a_reason(tmp_path):
    src = tmp_path / "src"
    fx.write_300w_lp(src)
    lm = src / "300W_LP/landmarks/HELEN/HELEN_232194_1_0_pts.mat"
    replace_with_fifo(lm)
    meta = run_bounded(lambda: prepare_dataset("300w_lp", entry("300w_lp", ["train"]), src, tmp_path / "raw"),
                       fifos=[lm])
    assert meta["dropped"]["not_regular_file"] == 1
    assert "images/HELEN/HELEN_232194_1_0.jpg" not in set(pd.read_csv(tmp_path / "raw/train.csv")["path"])


def test_output_folder_under_a_symlinked_parent_and_output_link(tmp_path):
    """paths.raw may be a link to other storage: outputs land in its target, a failed rerun keeps the
    previous output, and an output folder that is itself a link is replaced without touching (or
    deleting) the link's target."""
    src = tmp_path / "src"
    fx.write_raf_db(src)
    storage = tmp_path / "storage"
    storage.mkdir()
    (tmp_path / "raw").symlink_to(storage, target_is_directory=True)
    out = tmp_path / "raw" / "raf_db"
    prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out)
    before = snapshot(storage / "raf_db")
    labels = src / RAF_LABELS
    labels.write_text(labels.read_text() + "../../escape.jpg 1\n")
    with pytest.raises(UnsafePathError, match=rf"{labels}:6:"):
        prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out)
    assert snapshot(storage / "raf_db") == before
    assert sorted(p.name for p in storage.iterdir()) == ["raf_db"]  # no temporary folder left
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep/data.txt").write_text("mine\n")
    out2 = storage / "raf_db2"
    out2.symlink_to(victim, target_is_directory=True)
    prepare_dataset("raf_db", entry("raf_db", ["train", "test"]), src, out2)
    assert not out2.is_symlink() and (out2 / "train.csv").is_file()
    assert (victim / "keep/data.txt").read_text() == "mine\n" and not (victim / "train.csv").exists()
