"""LFW (Labeled Faces in the Wild, Huang et al. 2007), View 2 verification protocol -> stage 1.

Official layout (public download; ``lfw.tgz`` unpacks to ``lfw/``; ``pairs.txt`` is a separate file,
found at ``<source>/pairs.txt`` or ``<source>/downloads/pairs.txt`` where the acquire step keeps it)::

    lfw/<Person_Name>/<Person_Name>_<NNNN>.jpg    250x250, NNNN = 1-based index, 4 digits
    pairs.txt

pairs.txt (LFW README, "View 2"): the first line is ``<sets> <pairs per set>`` (``10 300``); then for
each of the 10 sets, ``300`` matched lines ``name<TAB>i<TAB>j`` followed by ``300`` mismatched lines
``name1<TAB>i<TAB>name2<TAB>j`` (6,000 pairs). Fields are split on any whitespace.

Output: ``all.csv`` lists every image some pair uses (``subject`` = the person's name, ``fold`` = the
0-based set of the pairs it appears in; the 10 sets are person-disjoint, any conflict is counted in
meta.json and the first set is kept), ``pairs.csv`` = ``fold`` (0-9), ``path_a``, ``path_b``,
``same`` (1 matched / 0 mismatched), in file order. Images keep their release names under
``images/<Person_Name>/``. No landmarks ship with LFW.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from . import PARSERS
from .stage1 import SourceFormatError, check_splits, find_first, write_pairs_dataset

LAYOUT = """  <source>/lfw/<Person_Name>/<Person_Name>_0001.jpg   (lfw.tgz unpacked)
  <source>/pairs.txt  (or <source>/downloads/pairs.txt): "10 300", then per set 300 lines "name i j"
     and 300 lines "name1 i name2 j\""""

SPLITS = ("all",)


def image_rel(name: str, k: int) -> str:
    return f"{name}/{name}_{k:04d}.jpg"


def read_pairs(path: Path) -> tuple[list[tuple[int, str, str, int]], int, int]:
    """pairs.txt -> ([(fold, rel_a, rel_b, same)], n_sets, n_per_set); paths relative to the image root."""
    lines = [(i, ln.split()) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        raise SourceFormatError(f"{path}: empty; expected the header line '10 300'")
    head_no, head = lines[0]
    try:
        n_sets, n_per = (int(x) for x in head)
    except ValueError:
        raise SourceFormatError(f"{path}:{head_no}: header {' '.join(head)!r} is not '<sets> <pairs per set>' "
                                "(e.g. '10 300')") from None
    body = lines[1:]
    if len(body) != 2 * n_sets * n_per:
        raise SourceFormatError(f"{path}: header says {n_sets} sets x {n_per} matched + {n_per} mismatched pairs "
                                f"= {2 * n_sets * n_per} lines, found {len(body)}")
    pairs = []
    for j, (lineno, f) in enumerate(body):
        fold, pos = divmod(j, 2 * n_per)
        matched = pos < n_per
        try:
            if matched:
                if len(f) != 3:
                    raise ValueError
                pairs.append((fold, image_rel(f[0], int(f[1])), image_rel(f[0], int(f[2])), 1))
            else:
                if len(f) != 4:
                    raise ValueError
                pairs.append((fold, image_rel(f[0], int(f[1])), image_rel(f[2], int(f[3])), 0))
        except ValueError:
            want = "'name i j' (matched)" if matched else "'name1 i name2 j' (mismatched)"
            raise SourceFormatError(f"{path}:{lineno}: set {fold}, pair {pos % n_per}: expected {want}, "
                                    f"got {' '.join(f)!r}") from None
    return pairs, n_sets, n_per


@PARSERS.register("lfw")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "lfw", SPLITS)
    source = Path(source)
    pairs_path = find_first(source, ["pairs.txt", "downloads/pairs.txt", "lfw/pairs.txt"], "LFW pairs.txt", LAYOUT)
    img_root = find_first(source, ["lfw", "lfw-deepfunneled", "lfw_funneled"], "LFW image folder", LAYOUT, kind="dir")
    pairs, n_sets, n_per = read_pairs(pairs_path)
    return write_pairs_dataset(
        out, "lfw", source, img_root, pairs_path, pairs, identity=lambda rel: rel.split("/", 1)[0], layout=LAYOUT,
        protocol=f"View 2: {n_sets} person-disjoint sets x ({n_per} matched + {n_per} mismatched)",
        counts={"folds": n_sets})
