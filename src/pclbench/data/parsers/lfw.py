"""LFW (Labeled Faces in the Wild, Huang et al. 2007), View 2 verification protocol -> stage 1.

Official layout (LFW README, http://vis-www.cs.umass.edu/lfw/README.txt, section 1: ``lfw.tgz``
unpacks to ``lfw/``, each image is ``lfw/name/name_xxxx.jpg`` with the 1-based image number padded
to four digits; ``pairs.txt`` is a separate file, found at ``<source>/pairs.txt`` or
``<source>/downloads/pairs.txt`` where the acquire step keeps it)::

    lfw/<Person_Name>/<Person_Name>_<NNNN>.jpg    250x250
    pairs.txt

pairs.txt (View 2; the README's section 3c "pairs.txt file format", as public readers of the file
apply it): the first line is ``<sets> <pairs per set>`` (``10 300``); then for each of the 10 sets,
``300`` matched lines ``name<TAB>i<TAB>j`` followed by ``300`` mismatched lines
``name1<TAB>i<TAB>name2<TAB>j`` (6,000 pairs). Sources: whwu95/FaceDetRecog
``centerLossMatlabtest/matlab_1:1/getPairs.m`` (reads the two header numbers, then per set n matched
'%s %d %d' lines and n mismatched '%s %d %s %d' lines); JDAI-CV/FaceX-Zoo
``test_protocol/lfw/pairs_parser.py`` (``LFW_PairsParser``: skip the first line, 3 tab-separated
fields = matched, 4 = mismatched, image ``name/name_%04d.jpg``) and
``test_protocol/lfw/lfw_evaluator.py`` (set = pair index // 600 in file order, i.e. the line's set;
each set's threshold is chosen on the other 9 sets). Fields are split on any whitespace here.

Folds: ``fold`` = the 0-based set of the line (header-driven, so every fold holds exactly ``n``
matched + ``n`` mismatched pairs by construction; meta.json's ``fold_composition`` records it).
Person-disjointness of the 10 sets is NOT assumed: it is measured, and persons found in several
sets are counted in meta.json (an image's manifest ``fold`` is its person's first set).

Output: ``all.csv`` lists every image some pair uses (``subject`` = the person's name),
``pairs.csv`` = ``fold`` (0-9), ``path_a``, ``path_b``, ``same`` (1 matched / 0 mismatched), in file
order. Images keep their release names under ``images/<Person_Name>/``. No landmarks ship with LFW.
Names read from pairs.txt must be single folder names (no separator); every image path goes through
:func:`.stage1.safe_relpath` / :func:`.stage1.inside` and errors name ``pairs.txt:<line>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pclbench.data.parsers.registry import PARSERS
from pclbench.data.parsers.stage1 import SourceFormatError, UnsafePathError, check_splits, find_first, write_pairs_dataset, read_text

LAYOUT = """  <source>/lfw/<Person_Name>/<Person_Name>_0001.jpg   (lfw.tgz unpacked)
  <source>/pairs.txt  (or <source>/downloads/pairs.txt): "10 300", then per set 300 lines "name i j"
     and 300 lines "name1 i name2 j\""""

SPLITS = ("all",)


def image_rel(name: str, k: int) -> str:
    return f"{name}/{name}_{k:04d}.jpg"


def _name(name: str, where: str) -> str:
    if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise UnsafePathError(f"{where}: person name {name!r} is not a single folder name")
    return name


def _index(x: str) -> int:
    k = int(x)
    if k < 1:
        raise ValueError
    return k


def read_pairs_with_lines(path: Path) -> tuple[list[tuple[int, str, str, int]], list[str], int, int]:
    """pairs.txt -> ([(fold, rel_a, rel_b, same)], ["pairs.txt:<line>" per pair], n_sets, n_per_set);
    paths relative to the image root."""
    lines = [(i, ln.split()) for i, ln in enumerate(read_text(path).splitlines(), 1) if ln.strip()]
    if not lines:
        raise SourceFormatError(f"{path}: empty; expected the header line '10 300'")
    head_no, head = lines[0]
    try:
        n_sets, n_per = (int(x) for x in head)
        if n_sets < 1 or n_per < 1:
            raise ValueError
    except ValueError:
        raise SourceFormatError(f"{path}:{head_no}: header {' '.join(head)!r} is not '<sets> <pairs per set>' "
                                "(e.g. '10 300')") from None
    body = lines[1:]
    if len(body) != 2 * n_sets * n_per:
        raise SourceFormatError(f"{path}: header says {n_sets} sets x {n_per} matched + {n_per} mismatched pairs "
                                f"= {2 * n_sets * n_per} lines, found {len(body)}")
    pairs, where = [], []
    for j, (lineno, f) in enumerate(body):
        fold, pos = divmod(j, 2 * n_per)
        matched = pos < n_per
        at = f"{path}:{lineno}"
        try:
            if matched:
                if len(f) != 3:
                    raise ValueError
                name = _name(f[0], at)
                pairs.append((fold, image_rel(name, _index(f[1])), image_rel(name, _index(f[2])), 1))
            else:
                if len(f) != 4:
                    raise ValueError
                pairs.append((fold, image_rel(_name(f[0], at), _index(f[1])),
                              image_rel(_name(f[2], at), _index(f[3])), 0))
        except UnsafePathError:
            raise
        except ValueError:
            want = "'name i j' (matched)" if matched else "'name1 i name2 j' (mismatched)"
            raise SourceFormatError(f"{at}: set {fold}, pair {pos % n_per}: expected {want} with 1-based image "
                                    f"numbers, got {' '.join(f)!r}") from None
        where.append(at)
    return pairs, where, n_sets, n_per


def read_pairs(path: Path) -> tuple[list[tuple[int, str, str, int]], int, int]:
    """pairs.txt -> ([(fold, rel_a, rel_b, same)], n_sets, n_per_set); paths relative to the image root."""
    pairs, _, n_sets, n_per = read_pairs_with_lines(path)
    return pairs, n_sets, n_per


@PARSERS.register("lfw")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "lfw", SPLITS)
    source = Path(source)
    pairs_path = find_first(source, ["pairs.txt", "downloads/pairs.txt", "lfw/pairs.txt"], "LFW pairs.txt", LAYOUT)
    img_root = find_first(source, ["lfw", "lfw-deepfunneled", "lfw_funneled"], "LFW image folder", LAYOUT, kind="dir")
    pairs, lines, n_sets, n_per = read_pairs_with_lines(pairs_path)
    where: dict[str, str] = {}
    for (_, a, b, _), at in zip(pairs, lines):
        where.setdefault(a, at)
        where.setdefault(b, at)
    return write_pairs_dataset(
        out, "lfw", source, img_root, pairs_path, pairs, identity=lambda rel: rel.split("/", 1)[0], layout=LAYOUT,
        where=where, protocol=f"View 2: {n_sets} sets x ({n_per} matched + {n_per} mismatched), fold = set",
        counts={"folds": n_sets})
