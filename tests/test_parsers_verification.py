"""LFW / CPLFW parsers: fold construction against the published protocol, and path safety.

Fixtures are written in the release formats as public evaluation code reads them (cited in the
parsers' docstrings):

* pairs_CPLFW.txt: two consecutive lines "<file name> <label>" per pair, label 1/0 on both lines, the
  same pairs first, then the different pairs (JDAI-CV/FaceX-Zoo test_protocol/lfw/pairs_parser.py,
  CPLFW_PairsParser: positives at indices 0-2999, negatives at 3000-5999).
* LFW pairs.txt: header "<sets> <n>", then per set n matched "name i j" and n mismatched
  "name1 i name2 j" lines (FaceX-Zoo LFW_PairsParser + lfw_evaluator: set = pair index // 600).

The expected folds are computed here by the cited rules, written out independently of the parser:
FaceX-Zoo builds set k by slicing positives [300k, 300k+300) and negatives [3000+300k, 3000+300k+300).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset
from pclbench.data.parsers import cplfw, lfw
from pclbench.data.parsers.stage1 import UnsafePathError


def entry(parser: str, **extra) -> dict:
    return {"source": "manual", "parser": parser, "tasks": [], "licence": "x", "splits": ["all"], "size": 64,
            **extra}


def jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path, format="JPEG")


def facexzoo_sets(n_pos: int, n_neg: int, n_sets: int = 10) -> list[list[int]]:
    """Pair indices (file order) of each set, by FaceX-Zoo's CPLFW slicing generalised to n_pos/n_neg:
    set k = positives [k*p, (k+1)*p) + negatives [n_pos + k*q, n_pos + (k+1)*q)."""
    p, q = n_pos // n_sets, n_neg // n_sets
    return [list(range(k * p, (k + 1) * p)) + list(range(n_pos + k * q, n_pos + (k + 1) * q)) for k in range(n_sets)]


# ---------------------------------------------------------------------------------------------- CPLFW

def write_cplfw_release(root: Path, per_fold: int = 3, images: bool = True) -> list[tuple[str, str, int]]:
    """pairs_CPLFW.txt in the released order: 10*per_fold same pairs, then 10*per_fold different pairs."""
    n = 10 * per_fold
    same = [(f"S{i:03d}_Person_1.jpg", f"S{i:03d}_Person_2.jpg", 1) for i in range(n)]
    diff = [(f"D{i:03d}_Left_1.jpg", f"D{i:03d}_Right_1.jpg", 0) for i in range(n)]
    pairs = same + diff
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs_CPLFW.txt").write_text("".join(f"{a} {s}\n{b} {s}\n" for a, b, s in pairs))
    if images:
        for i, name in enumerate(sorted({x for p in pairs for x in p[:2]})):
            jpeg(root / "images" / name, i % 250)
    return pairs


def test_cplfw_release_order_gives_the_published_folds(tmp_path):
    pairs = write_cplfw_release(tmp_path / "src", per_fold=3)
    out = tmp_path / "raw"
    meta = prepare_dataset("cplfw", entry("cplfw"), tmp_path / "src", out)
    got = pd.read_csv(out / "pairs.csv")
    # file order is kept; the fold of pair j is the FaceX-Zoo set that contains index j
    want_fold = {j: k for k, idx in enumerate(facexzoo_sets(30, 30)) for j in idx}
    assert got["path_a"].tolist() == [f"images/{a}" for a, _, _ in pairs]
    assert got["fold"].tolist() == [want_fold[j] for j in range(len(pairs))]
    for k in range(10):
        f = got[got["fold"] == k]
        assert (f["same"] == 1).sum() == 3 and (f["same"] == 0).sum() == 3
    assert meta["fold_composition"] == {str(k): {"same": 3, "different": 3} for k in range(10)}
    assert meta["fold_rule"] == "blocks" and meta["same_pairs_first"] is True
    # the manifest fold of an image is its person's fold (each person here is in one fold only)
    df = pd.read_csv(out / "all.csv")
    fold_of_path = dict(zip(df["path"], df["fold"]))
    for j, (a, b, _) in enumerate(pairs):
        assert fold_of_path[f"images/{a}"] == want_fold[j] == fold_of_path[f"images/{b}"]
    assert meta["n_identities_in_several_folds"] == 0


def test_cplfw_full_size_file_matches_facexzoo_sets(tmp_path):
    """6,000 pairs (no images needed for the fold rule): every fold = FaceX-Zoo's set, 300 + 300."""
    pairs = write_cplfw_release(tmp_path, per_fold=300, images=False)
    got = cplfw.read_pairs(tmp_path / "pairs_CPLFW.txt")
    assert [(a, b, s) for _, a, b, s in got] == pairs
    for k, idx in enumerate(facexzoo_sets(3000, 3000)):
        assert [j for j, p in enumerate(got) if p[0] == k] == sorted(idx)
        assert sum(got[j][3] for j in idx) == 300


def test_cplfw_consecutive_rule_is_the_old_unbalanced_one(tmp_path):
    write_cplfw_release(tmp_path / "src", per_fold=3)
    meta = prepare_dataset("cplfw", entry("cplfw", fold_rule="consecutive"), tmp_path / "src", tmp_path / "raw")
    got = pd.read_csv(tmp_path / "raw" / "pairs.csv")
    assert got["fold"].tolist() == [j // 6 for j in range(60)]
    # folds 0-4 hold only same pairs, 5-9 only different pairs on the released order
    assert meta["fold_composition"] == {str(k): ({"same": 6, "different": 0} if k < 5 else
                                                 {"same": 0, "different": 6}) for k in range(10)}
    with pytest.raises(ValueError, match="fold_rule"):
        prepare_dataset("cplfw", entry("cplfw", fold_rule="random"), tmp_path / "src", tmp_path / "raw2")


def test_cplfw_blocks_rule_needs_equal_shares(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    # 11 same + 9 different pairs cannot be cut into 10 folds with equal shares of each
    lines = [f"A{i}_1.jpg 1\nA{i}_2.jpg 1\n" for i in range(11)] + [f"B{i}_1.jpg 0\nC{i}_1.jpg 0\n" for i in range(9)]
    (root / "pairs_CPLFW.txt").write_text("".join(lines))
    with pytest.raises(SourceFormatError, match="11 same and 9 different"):
        cplfw.read_pairs(root / "pairs_CPLFW.txt")


@pytest.mark.parametrize("bad, kind", [("../outside.jpg", "'..'"), ("/etc/passwd", "absolute"),
                                       ("C:\\x.jpg", "absolute")])
def test_cplfw_names_cannot_leave_the_image_folder(tmp_path, bad, kind):
    pairs = write_cplfw_release(tmp_path / "src", per_fold=1)
    p = tmp_path / "src" / "pairs_CPLFW.txt"
    lines = p.read_text().splitlines()
    lines[2] = f"{bad} 1"  # first line of the second pair
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UnsafePathError, match=rf"pairs_CPLFW\.txt:3: .*{kind}"):
        prepare_dataset("cplfw", entry("cplfw"), tmp_path / "src", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert len(pairs) == 20


def test_cplfw_symlink_out_of_the_release_is_refused(tmp_path):
    write_cplfw_release(tmp_path / "src", per_fold=1)
    secret = tmp_path / "secret.jpg"
    jpeg(secret, 7)
    target = tmp_path / "src" / "images" / "S000_Person_1.jpg"
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(UnsafePathError, match=r"pairs_CPLFW\.txt:1: .*outside"):
        prepare_dataset("cplfw", entry("cplfw"), tmp_path / "src", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_cplfw_missing_image_names_file_and_line(tmp_path):
    write_cplfw_release(tmp_path / "src", per_fold=1)
    (tmp_path / "src" / "images" / "D000_Right_1.jpg").unlink()
    # the different pairs start after 10 same pairs = 20 lines; D000_Right_1 is on line 22
    with pytest.raises(SourceLayoutError, match=r"pairs_CPLFW\.txt:22: D000_Right_1\.jpg"):
        prepare_dataset("cplfw", entry("cplfw"), tmp_path / "src", tmp_path / "raw")


def test_cplfw_fifo_image_is_not_read(tmp_path):
    write_cplfw_release(tmp_path / "src", per_fold=1)
    fifo = tmp_path / "src" / "images" / "S001_Person_2.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(SourceLayoutError, match=r"pairs_CPLFW\.txt:4: S001_Person_2\.jpg"):
        prepare_dataset("cplfw", entry("cplfw"), tmp_path / "src", tmp_path / "raw")


# ---------------------------------------------------------------------------------------------- LFW

def lfw_pairs_text(n_sets: int, n: int) -> tuple[str, list[tuple[int, str, str, int]]]:
    """A pairs.txt body in View-2 format; person names carry their set so folds are person-disjoint."""
    lines, want = [f"{n_sets}\t{n}"], []
    for s in range(n_sets):
        for i in range(n):
            name = f"M{s}_{i}"
            lines.append(f"{name}\t1\t2")
            want.append((s, f"{name}/{name}_0001.jpg", f"{name}/{name}_0002.jpg", 1))
        for i in range(n):
            a, b = f"M{s}_{i}", f"N{s}_{i}"
            lines.append(f"{a}\t3\t{b}\t1")
            want.append((s, f"{a}/{a}_0003.jpg", f"{b}/{b}_0001.jpg", 0))
    return "\n".join(lines) + "\n", want


def test_lfw_full_size_folds_are_the_views_sets(tmp_path):
    text, want = lfw_pairs_text(10, 300)
    (tmp_path / "pairs.txt").write_text(text)
    got, n_sets, n_per = lfw.read_pairs(tmp_path / "pairs.txt")
    assert (n_sets, n_per) == (10, 300) and got == want
    # FaceX-Zoo lfw_evaluator: set of pair j = j // 600; 300 matched then 300 mismatched per set
    assert [p[0] for p in got] == [j // 600 for j in range(6000)]
    assert [p[3] for p in got] == [int(j % 600 < 300) for j in range(6000)]


def test_lfw_prepare_records_fold_composition_and_shared_persons(tmp_path):
    src = tmp_path / "src"
    text, want = lfw_pairs_text(2, 2)
    # make one person appear in both sets: set 1's first mismatched pair uses M0_0 (set 0's person)
    text = text.replace("M1_0\t3\tN1_0\t1", "M0_0\t3\tN1_0\t1")
    (src / "downloads").mkdir(parents=True)
    (src / "downloads" / "pairs.txt").write_text(text)
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        for name, k in ([(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]):
            p = src / "lfw" / name / f"{name}_{int(k):04d}.jpg"
            if not p.exists():
                jpeg(p, 50)
    meta = prepare_dataset("lfw", entry("lfw"), src, tmp_path / "raw")
    assert meta["fold_composition"] == {"0": {"same": 2, "different": 2}, "1": {"same": 2, "different": 2}}
    assert meta["identities_in_several_folds"] == ["M0_0"] and meta["n_identities_in_several_folds"] == 1
    df = pd.read_csv(tmp_path / "raw" / "all.csv")
    assert set(df.loc[df["subject"] == "M0_0", "fold"]) == {0}  # the person's first set
    assert json.loads((tmp_path / "raw" / "meta.json").read_text())["counts"]["folds"] == 2


@pytest.mark.parametrize("line, err, msg", [
    ("../etc\t1\t2", UnsafePathError, r"pairs\.txt:2: person name '\.\./etc'"),
    ("a/b\t1\t2", UnsafePathError, r"pairs\.txt:2: person name 'a/b'"),
    ("Ann\t0\t2", SourceFormatError, r"pairs\.txt:2: set 0, pair 0: expected 'name i j' \(matched\) with 1-based"),
])
def test_lfw_bad_names_name_file_and_line(tmp_path, line, err, msg):
    text, _ = lfw_pairs_text(1, 1)
    lines = text.splitlines()
    lines[1] = line
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(err, match=msg):
        lfw.read_pairs(tmp_path / "pairs.txt")
