"""CPLFW (Cross-Pose LFW, Zheng & Deng 2018) -> stage 1.

Official layout (download page http://www.whdeng.cn/CPLFW/index.html; the archive may add a
``cplfw/`` folder, which is accepted)::

    images/<Person_Name>_<k>.jpg      one flat folder, k = 1-based index without zero padding
    pairs_CPLFW.txt                   two CONSECUTIVE lines per pair: "<file name> <label>"

Sources for the format (public evaluation code that reads the released file):

* JDAI-CV/FaceX-Zoo ``test_protocol/lfw/pairs_parser.py`` (``CPLFW_PairsParser``): a pair is two
  consecutive lines, the file name is the first space-separated field of each line, the label the
  second field of the first line; it asserts 6,000 pairs.
  The label is 1 (same person) or 0 (different persons); the two lines carry the same label (checked
  here: a file whose two lines disagree is out of step).
* Image folder: public evaluation scripts point at ``cplfw/images`` or ``cplfw/aligned images``;
  both (and ``aligned_images``) are accepted, next to pairs_CPLFW.txt.

Folds (``datasets.cplfw.fold_rule``). The released file lists the 3,000 same pairs first (pairs
0-2999) and the 3,000 different pairs after them (3000-5999); FaceX-Zoo's ``CPLFW_PairsParser``
(same file) builds set ``k`` (k = 0..9) from same pairs ``300k .. 300k+299`` and different pairs
``3000+300k .. 3000+300k+299``, and its ``test_protocol/lfw/lfw_evaluator.py`` then runs the LFW
10-fold threshold protocol on these sets (300 same + 300 different each).

* ``blocks`` (default, the published protocol): fold ``k`` = the k-th tenth of the same pairs plus
  the k-th tenth of the different pairs, each in file order. On the released file (same pairs first)
  this is exactly FaceX-Zoo's index rule; on a reordered file it still gives 10 balanced folds.
* ``consecutive``: fold = pair index // (pairs / 10), i.e. 10 runs of 600 consecutive pairs (what a
  re-packaged copy, huggingface.co/datasets/marcelohaps/cplfw README, describes as "following the LFW
  convention"). On the released file folds 0-4 then hold only same pairs and 5-9 only different
  pairs, so the per-fold threshold search is not the published protocol; kept only to reproduce
  numbers computed that way. meta.json's ``fold_composition`` shows the result either way.

Output: ``all.csv`` with every image a pair uses (``subject`` = the name before the last ``_``,
``fold`` = its person's first fold; persons in several folds are counted in meta.json -- CPLFW's
folds are not documented as person-disjoint), ``pairs.csv`` (fold, path_a, path_b, same) in file
order; images keep their release names under ``images/``. Every file name read from the pairs file
is checked by :func:`.stage1.safe_relpath` / :func:`.stage1.inside` (errors name ``file:line``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pclbench.data.parsers.registry import PARSERS
from pclbench.data.parsers.stage1 import SourceFormatError, check_splits, find_first, write_pairs_dataset, read_text

LAYOUT = """  <source>/images/<Person_Name>_<k>.jpg        (or <source>/cplfw/images/..., or "aligned images/")
  <source>/pairs_CPLFW.txt                      two consecutive lines per pair: "<file name> <1|0>\""""

SPLITS = ("all",)
N_FOLDS = 10  # the published protocol: 10 sets (FaceX-Zoo CPLFW_PairsParser, range(10))
FOLD_RULES = ("blocks", "consecutive")


def identity(file_name: str) -> str:
    return Path(file_name).stem.rsplit("_", 1)[0]


def read_lines(path: Path) -> list[tuple[int, int, str, str, int]]:
    """pairs_CPLFW.txt -> ``[(line a, line b, file a, file b, same)]`` in file order (pairs of
    consecutive non-empty lines; both lines of a pair must carry the same 0/1 label)."""
    lines = [(i, ln.split()) for i, ln in enumerate(read_text(path).splitlines(), 1) if ln.strip()]
    if not lines or len(lines) % 2:
        raise SourceFormatError(f"{path}: {len(lines)} non-empty lines; expected an even number "
                                "(two consecutive lines '<file name> <label>' per pair)")
    out = []
    for k in range(len(lines) // 2):
        (la, fa), (lb, fb) = lines[2 * k], lines[2 * k + 1]
        for ln, f in ((la, fa), (lb, fb)):
            if len(f) != 2 or f[1] not in ("0", "1"):
                raise SourceFormatError(f"{path}:{ln}: expected '<file name> <1|0>', got {' '.join(f)!r}")
        if fa[1] != fb[1]:
            raise SourceFormatError(f"{path}:{la}-{lb}: the two lines of pair {k} carry different labels "
                                    f"({fa[1]} vs {fb[1]}); the file is out of step")
        out.append((la, lb, fa[0], fb[0], int(fa[1])))
    return out


def assign_folds(same: list[int], rule: str, n_folds: int = N_FOLDS, path: Path | str = "pairs") -> list[int]:
    """Fold of each pair (0-based) from the pairs' same/different labels in file order.

    ``blocks``: the i-th same pair goes to fold ``i // (n_same / n_folds)``, the i-th different pair
    to fold ``i // (n_diff / n_folds)``. ``consecutive``: pair ``j`` goes to ``j // (n / n_folds)``."""
    if rule not in FOLD_RULES:
        raise ValueError(f"datasets.cplfw.fold_rule must be one of {FOLD_RULES}, got {rule!r}")
    n = len(same)
    if rule == "consecutive":
        if n % n_folds:
            raise SourceFormatError(f"{path}: {n} pairs cannot form {n_folds} equal folds of consecutive pairs")
        return [j // (n // n_folds) for j in range(n)]
    n_same = sum(1 for s in same if s)
    n_diff = n - n_same
    if n_same % n_folds or n_diff % n_folds:
        raise SourceFormatError(f"{path}: {n_same} same and {n_diff} different pairs cannot form {n_folds} folds "
                                f"with equal shares of each (fold_rule blocks; the release has 3000 + 3000)")
    seen = {1: 0, 0: 0}
    size = {1: n_same // n_folds, 0: n_diff // n_folds}
    folds = []
    for s in same:
        s = 1 if s else 0
        folds.append(seen[s] // size[s])
        seen[s] += 1
    return folds


def read_pairs(path: Path, rule: str = "blocks", n_folds: int = N_FOLDS) -> list[tuple[int, str, str, int]]:
    """pairs_CPLFW.txt -> ``[(fold, file_a, file_b, same)]`` in file order."""
    return [p for p, _ in _read(path, rule, n_folds)]


def _read(path: Path, rule: str, n_folds: int):
    raw = read_lines(path)
    folds = assign_folds([r[4] for r in raw], rule, n_folds, path)
    return [((f, a, b, s), (f"{path}:{la}", f"{path}:{lb}")) for f, (la, lb, a, b, s) in zip(folds, raw)]


def _same_first(same: list[int]) -> bool:
    """True if every same pair comes before every different pair (the released order)."""
    k = sum(1 for s in same if s)
    return all(same[:k]) and not any(same[k:])


@PARSERS.register("cplfw")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "cplfw", SPLITS)
    rule = entry.get("fold_rule", "blocks")
    if rule not in FOLD_RULES:
        raise ValueError(f"datasets.cplfw.fold_rule must be one of {list(FOLD_RULES)}, got {rule!r}")
    source = Path(source)
    pairs_path = find_first(source, ["pairs_CPLFW.txt", "cplfw/pairs_CPLFW.txt"], "CPLFW pairs_CPLFW.txt", LAYOUT)
    img_root = find_first(pairs_path.parent, ["images", "aligned images", "aligned_images"], "CPLFW image folder",
                          LAYOUT, kind="dir")
    read = _read(pairs_path, rule, N_FOLDS)
    pairs = [p for p, _ in read]
    where: dict[str, str] = {}
    for (_, a, b, _), (wa, wb) in read:
        where.setdefault(a, wa)
        where.setdefault(b, wb)
    same = [p[3] for p in pairs]
    return write_pairs_dataset(
        out, "cplfw", source, img_root, pairs_path, pairs, identity=identity, layout=LAYOUT, where=where,
        protocol=(f"{N_FOLDS} folds; fold_rule {rule}: " +
                  ("fold k = k-th tenth of the same pairs + k-th tenth of the different pairs, file order "
                   "(FaceX-Zoo CPLFW_PairsParser)" if rule == "blocks" else
                   f"{len(pairs) // N_FOLDS} consecutive pairs per fold")),
        fold_rule=rule, same_pairs_first=_same_first(same),
        counts={"folds": N_FOLDS, "same_pairs_per_fold": {f: sum(p[3] for p in pairs if p[0] == f)
                                                          for f in range(N_FOLDS)}})
