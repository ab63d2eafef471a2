"""CPLFW (Cross-Pose LFW, Zheng & Deng 2018) -> stage 1.

Official layout (download page http://www.whdeng.cn/CPLFW/index.html; the archive may add a
``cplfw/`` folder, which is accepted)::

    images/<Person_Name>_<k>.jpg      one flat folder, k = 1-based index without zero padding
    pairs_CPLFW.txt                   two CONSECUTIVE lines per pair: "<file name> <label>"

``label`` is 1 on both lines of a same-person pair and 0 on both lines of a different-person pair
(PCL method doc A.2: "the official CPLFW pair file (two lines per pair, 1/0)"). The 6,000 pairs
(3,000 + 3,000) form 10 folds of 600 consecutive pairs, following the LFW convention (what the
dataset page and public mirrors describe); the parser derives ``fold = pair index // (pairs / 10)``
and records the same-pair count of each fold in meta.json so a different ordering is visible.

Output: ``all.csv`` with every image a pair uses (``subject`` = the name before the last ``_``,
``fold`` = the fold of the pairs it appears in, conflicts counted), ``pairs.csv`` (fold, path_a,
path_b, same) in file order; images keep their release names under ``images/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from . import PARSERS
from .stage1 import SourceFormatError, check_splits, find_first, write_pairs_dataset

LAYOUT = """  <source>/images/<Person_Name>_<k>.jpg        (or <source>/cplfw/images/...)
  <source>/pairs_CPLFW.txt                      two consecutive lines per pair: "<file name> <1|0>\""""

SPLITS = ("all",)
N_FOLDS = 10


def identity(file_name: str) -> str:
    return Path(file_name).stem.rsplit("_", 1)[0]


def read_pairs(path: Path, n_folds: int = N_FOLDS) -> list[tuple[int, str, str, int]]:
    """pairs_CPLFW.txt -> [(fold, file_a, file_b, same)]."""
    lines = [(i, ln.split()) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if not lines or len(lines) % 2:
        raise SourceFormatError(f"{path}: {len(lines)} non-empty lines; expected an even number "
                                "(two consecutive lines '<file name> <label>' per pair)")
    n_pairs = len(lines) // 2
    if n_pairs % n_folds:
        raise SourceFormatError(f"{path}: {n_pairs} pairs cannot form {n_folds} equal folds")
    per_fold = n_pairs // n_folds
    pairs = []
    for k in range(n_pairs):
        (la, fa), (lb, fb) = lines[2 * k], lines[2 * k + 1]
        for ln, f in ((la, fa), (lb, fb)):
            if len(f) != 2 or f[1] not in ("0", "1"):
                raise SourceFormatError(f"{path}:{ln}: expected '<file name> <1|0>', got {' '.join(f)!r}")
        if fa[1] != fb[1]:
            raise SourceFormatError(f"{path}:{la}-{lb}: the two lines of pair {k} carry different labels "
                                    f"({fa[1]} vs {fb[1]}); the file is out of step")
        pairs.append((k // per_fold, fa[0], fb[0], int(fa[1])))
    return pairs


@PARSERS.register("cplfw")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "cplfw", SPLITS)
    source = Path(source)
    pairs_path = find_first(source, ["pairs_CPLFW.txt", "cplfw/pairs_CPLFW.txt"], "CPLFW pairs_CPLFW.txt", LAYOUT)
    img_root = find_first(pairs_path.parent, ["images", "aligned images", "aligned_images"], "CPLFW image folder",
                          LAYOUT, kind="dir")
    pairs = read_pairs(pairs_path)
    per_fold_same = {f: sum(p[3] for p in pairs if p[0] == f) for f in range(N_FOLDS)}
    return write_pairs_dataset(
        out, "cplfw", source, img_root, pairs_path, pairs, identity=identity, layout=LAYOUT,
        protocol=f"{N_FOLDS} folds of {len(pairs) // N_FOLDS} consecutive pairs (LFW convention)",
        counts={"folds": N_FOLDS, "same_pairs_per_fold": per_fold_same})
