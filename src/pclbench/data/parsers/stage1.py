"""The common stage-1 layout every parser writes (docs/architecture.md, "Stage 1: raw datasets").

A parser reads one real dataset in its OFFICIAL release layout (``paths.sources/<name>/``) and writes::

    <out>/images/**           the images (copied or hard-linked, or decoded / re-encoded where the
                              release ships no image files: FER2013 pixels, DISFA videos)
    <out>/images/**/<x>.pts   iBUG 68-point landmarks, 0-based pixel centres (where the release has them)
    <out>/<split>.csv         one manifest per split, columns MANIFEST_BASE (+ the dataset's AU columns)
    <out>/pairs.csv           verification sets only: fold,path_a,path_b,same
    <out>/meta.json           parser, version, source, label names, mappings, counts, drops

Missing-value conventions (the architecture doc's, applied to real data):

* ``subject``  -1 where the release names no identity (RAF-DB, AffectNet, FER2013, AFLW2000-3D);
* ``clip`` / ``frame``  -1 for still images;
* ``yaw, pitch, roll``  ``nan`` where the release has no pose label;
* ``expression``  -1 where the release has no (single) expression label;
* ``fold``  -1 where the dataset has no folds;
* AU columns are written only by AU datasets (DISFA, BP4D) and never hold missing values: frames
  without a valid code for every written AU are dropped and counted in meta.json.

The output folder is written through :func:`pclbench.core.io.atomic_dir`: a crash or a bad source file
leaves the previous output (or nothing) in place, never half a dataset.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pclbench.core.io import atomic_dir
from pclbench.core.progress import Progress
from pclbench.align.pts import write_pts

log = logging.getLogger("pclbench.data.parsers")

#: Bump when a parser's output for the same source changes.
PARSER_VERSION = "1.0"

#: Manifest columns every parser writes, in this order (AU columns follow, in numeric AU order).
MANIFEST_BASE: tuple[str, ...] = ("path", "subject", "clip", "frame", "yaw", "pitch", "roll", "expression", "fold")

#: Expression names, 0-based in RAF-DB order (docs/architecture.md); index 7 = contempt (AffectNet only).
RAF_EXPRESSIONS: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
EXPRESSIONS_8: tuple[str, ...] = RAF_EXPRESSIONS + ("contempt",)

POSE_CONVENTION = ("degrees (yaw, pitch, roll); yaw > 0 face turns to the image left, pitch > 0 looks up, "
                   "roll > 0 counter-clockwise in the image; hflip: (-yaw, pitch, -roll)")
LANDMARK_CONVENTION = "iBUG 68 points, .pts next to each image, 0-based pixel centres (index_base 0)"


class SourceLayoutError(FileNotFoundError):
    """A file or folder of the official release layout is missing (the message names it)."""


class SourceFormatError(ValueError):
    """A file of the release does not have the official format (the message names file and line)."""


def find_first(source: Path, candidates: Sequence[str], what: str, layout: str, kind: str = "file") -> Path:
    """The first of ``candidates`` (relative to ``source``) that exists, else a :class:`SourceLayoutError`
    naming every path tried and the expected official layout. A file found must resolve inside
    ``source`` (:func:`inside`: no symlink out of the release), else :class:`UnsafePathError`."""
    source = Path(source)
    if not source.is_dir():
        raise SourceLayoutError(f"source folder {source} does not exist; expected the official layout:\n{layout}")
    for c in candidates:
        p = source / c
        if kind == "file" and p.is_file():
            # a label file linked out of the release would be read (and its lines quoted in errors)
            return inside(source, c, where=str(p))
        if kind == "dir" and p.is_dir():
            return p
    tried = ", ".join(str(source / c) for c in candidates)
    raise SourceLayoutError(f"{what} not found (tried {tried}); expected the official layout:\n{layout}")


def au_column(k: int) -> str:
    return f"AU{int(k)}"


def fmt_float(x: float, nd: int = 4) -> str:
    x = float(x)
    return "nan" if math.isnan(x) else f"{x:.{nd}f}"


def make_row(path: str, *, subject: str | int = -1, clip: int = -1, frame: int = -1, yaw: float = math.nan,
             pitch: float = math.nan, roll: float = math.nan, expression: int = -1, fold: int = -1,
             aus: Mapping[str, float] | None = None) -> dict:
    """One manifest row with the architecture doc's missing-value conventions."""
    row = {"path": path, "subject": subject, "clip": int(clip), "frame": int(frame), "yaw": fmt_float(yaw),
           "pitch": fmt_float(pitch), "roll": fmt_float(roll), "expression": int(expression), "fold": int(fold)}
    for k, v in (aus or {}).items():
        row[k] = fmt_float(v, 3)
    return row


def write_csv(path: Path, columns: Sequence[str], rows: Iterable) -> int:
    """Write a CSV (``\\n`` line ends); rows are dicts keyed by column or sequences. Returns the row count."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns))
    n = 0
    for r in rows:
        w.writerow([r[c] for c in columns] if isinstance(r, Mapping) else list(r))
        n += 1
    Path(path).write_text(buf.getvalue())
    return n


def write_manifest(out: Path, split: str, rows: Sequence[dict], au_names: Sequence[str] = ()) -> int:
    if not rows:
        raise SourceFormatError(f"split {split!r} would be empty: no usable sample found in the source")
    return write_csv(Path(out) / f"{split}.csv", MANIFEST_BASE + tuple(au_names), rows)


def write_pairs(out: Path, pairs: Sequence[tuple[int, str, str, int]]) -> int:
    return write_csv(Path(out) / "pairs.csv", ("fold", "path_a", "path_b", "same"), pairs)


def write_meta(out: Path, dataset: str, source: Path, **fields) -> dict:
    meta = {"generator": f"pclbench.data.parsers.{dataset}", "version": PARSER_VERSION, "dataset": dataset,
            "source": str(source), **fields}
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
    (Path(out) / "meta.json").write_text(text + "\n")
    return json.loads(text)  # exactly what meta.json holds (integer keys become strings)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


class UnsafePathError(SourceFormatError):
    """A file name read from the release (a label file, a CSV) would leave its folder: absolute,
    ``..``, a drive or a NUL byte, or a symlink out of the release. Refused, naming file and line."""


def _where(where: str | None) -> str:
    return f"{where}: " if where else ""


def safe_relpath(name: str, *, where: str | None = None) -> str:
    """``name`` (read from untrusted data) as a normalised relative POSIX path that cannot leave the
    folder it is joined to, else :class:`UnsafePathError` naming ``where`` ("file:line").

    Refused: empty names, absolute paths (``/x``, ``\\x``, ``C:...``), any ``..`` component, NUL
    bytes. Backslashes count as separators (releases made on Windows). ``.`` components are dropped.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{_where(where)}empty file name")
    if "\x00" in name:
        raise UnsafePathError(f"{_where(where)}file name contains a NUL byte: {name!r}")
    posix = name.strip().replace("\\", "/")
    if posix.startswith("/") or (len(posix) >= 2 and posix[1] == ":"):
        raise UnsafePathError(f"{_where(where)}absolute file name {name!r} refused: names in a release "
                              "are relative to its folder")
    parts = [c for c in posix.split("/") if c not in ("", ".")]
    if any(c == ".." for c in parts):
        raise UnsafePathError(f"{_where(where)}file name {name!r} refused: '..' would leave the release folder")
    if not parts:
        raise UnsafePathError(f"{_where(where)}file name {name!r} names no file")
    return "/".join(parts)


def inside(root: Path, name: str, *, where: str | None = None) -> Path:
    """``root / name`` for an untrusted ``name``, checked twice: lexically (:func:`safe_relpath`)
    and physically (the resolved path, symlinks followed, must stay under the resolved ``root``)."""
    rel = safe_relpath(name, where=where)
    path = Path(root) / rel
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafePathError(f"{_where(where)}{name!r} resolves to {real}, outside {real_root} "
                              "(a symlink out of the release?); refused")
    return path


def read_text(path: Path) -> str:
    """A release's text file (label list, CSV) decoded as UTF-8 (a leading byte-order mark dropped,
    line ends as read); bytes that are not UTF-8 raise :class:`SourceFormatError` naming ``file:line``
    instead of a bare ``UnicodeDecodeError``. Callers check :func:`is_regular_file` first."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceFormatError(f"{path}:{line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} at offset "
                                f"{e.start}); save the file as UTF-8") from None


def csv_records(reader, path: Path):
    """Iterate a ``csv.reader`` over a release file, turning :class:`csv.Error` (a field over the
    csv module's size limit, e.g. from an unclosed quote that swallows the rest of the file) into
    :class:`SourceFormatError` naming ``file:line``."""
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise SourceFormatError(f"{path}:{reader.line_num}: not a well-formed CSV row ({e})") from None
        yield rec


def is_regular_file(path: Path) -> bool:
    """True for a regular file (symlinks followed). FIFOs, devices and sockets are False: opening a
    FIFO blocks forever, so callers skip such entries with a reason instead of reading them."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class DuplicateImageError(SourceFormatError):
    """The same output image would be written twice (an image listed twice in the release)."""


def _make_parent(dst: Path, where: str | None) -> None:
    """``dst``'s folder, created; a file already written where a folder is needed (an image or a
    ``.pts`` named like a folder of the release) is a :class:`DuplicateImageError`, not an OSError."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DuplicateImageError(f"{_where(where)}cannot write {dst}: a file of the output already has the name of "
                                  f"one of its folders (a name listed both as a file and as a folder)") from None


def place_image(src: Path, dst: Path, *, where: str | None = None) -> None:
    """Put the release's image file at ``dst`` unchanged: a hard link where the file system allows
    (no extra disk for 300k-image sets), else a copy. Image bytes are never re-encoded.

    ``src`` must be a regular file (not a FIFO or device). ``dst`` must not exist: an existing
    destination means the release lists one image twice, and nothing is ever overwritten (the link
    is made with ``O_EXCL`` semantics; the copy fallback opens ``dst`` with ``O_EXCL`` too)."""
    if not is_regular_file(src):
        raise SourceFormatError(f"{_where(where)}{src} is not a regular file (missing, a FIFO or a device)")
    _make_parent(dst, where)
    if os.path.lexists(dst):
        raise DuplicateImageError(f"{_where(where)}{dst.name} is listed twice (output {dst} already written)")
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise DuplicateImageError(f"{_where(where)}{dst.name} is listed twice (output {dst} already written)") from None
    except OSError:
        pass  # cross-device, no hard links on this file system, ...: copy instead
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def save_pts(path: Path, points: np.ndarray, *, where: str | None = None) -> None:
    """Write (68, 2) 0-based (x, y) landmarks next to an image as an iBUG ``.pts`` (index_base 0).

    ``path`` must not exist, as for :func:`place_image`: a release may list an image whose own name
    ends in ``.pts`` (then ``path`` is that image, a hard link to the release's file, and writing
    would edit the release) or two images sharing a stem (``a.jpg``, ``a.png``: the second's points
    would replace the first's). Either is refused with a :class:`DuplicateImageError` naming ``where``."""
    _make_parent(path, where)
    if os.path.lexists(path):
        raise DuplicateImageError(f"{_where(where)}{path.name} would be written twice (an image of that name, or "
                                  f"another image with the same stem, is already at {path}); one name, one file")
    tmp = path.with_name(f".{path.name}.tmp")
    write_pts(tmp, np.asarray(points, dtype=np.float64), index_base=0)
    try:
        try:
            os.link(tmp, path)  # fails if path appeared meanwhile: never replaces a file
        except FileExistsError:
            raise DuplicateImageError(f"{_where(where)}{path.name} would be written twice "
                                      f"(already at {path})") from None
        except OSError:  # no hard links here: exclusive create instead
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(tmp.read_bytes())
    finally:
        os.unlink(tmp)


def check_splits(entry: Mapping, dataset: str, produced: Sequence[str]) -> None:
    """The config entry's ``splits`` must be exactly what the parser writes (else alignment would look
    for manifests that never appear, or skip ones that do)."""
    want = list(entry.get("splits") or [])
    if sorted(want) != sorted(produced):
        raise ValueError(f"datasets.{dataset}.splits is {want} but the {dataset} parser writes the splits "
                         f"{list(produced)}; set datasets.{dataset}.splits: {list(produced)}")


def write_pairs_dataset(out: Path, dataset: str, source: Path, img_root: Path, pairs_path: Path,
                        pairs: Sequence[tuple[int, str, str, int]], identity, layout: str, *,
                        where: Mapping[str, str] | None = None, **meta_fields) -> dict:
    """Stage-1 layout of a verification set (LFW, CPLFW): split ``all`` = every image a pair names,
    ``pairs.csv`` and meta.json, written atomically into ``out``.

    ``pairs``: ``(fold, image a, image b, same)`` with image names relative to ``img_root`` AS READ
    from the release's pairs file (untrusted): each name is normalised by :func:`safe_relpath` and
    resolved by :func:`inside` (no absolute path, no ``..``, no symlink out of ``img_root``), and the
    image is placed with :func:`place_image`; ``where`` maps a name to the ``"file:line"`` that first
    names it, for the error messages. ``pairs.csv`` holds the normalised names.
    ``identity(image) -> person``. An image's ``fold`` is its person's first fold; persons found in
    several folds are counted in meta.json (whether a protocol's folds are person-disjoint is
    measured here, not assumed). meta.json's ``fold_composition`` gives the same / different pair
    count of every fold, so a fold rule that yields unbalanced folds is visible.
    """
    where = dict(where or {})

    def at(name: str) -> str:
        return where.get(name, str(pairs_path))

    rel_of: dict[str, str] = {}  # name as read -> normalised relative path
    for _, a, b, _ in pairs:
        for name in (a, b):
            if name not in rel_of:
                rel_of[name] = safe_relpath(name, where=at(name))
    pairs = [(int(f), rel_of[a], rel_of[b], int(same)) for f, a, b, same in pairs]
    first_where = {}
    for name, rel in rel_of.items():
        first_where.setdefault(rel, at(name))
    fold_of: dict[str, int] = {}  # image -> fold of its identity
    person_fold: dict[str, int] = {}
    conflicts = set()
    composition: dict[int, dict[str, int]] = {}
    for fold, a, b, same in pairs:
        c = composition.setdefault(fold, {"same": 0, "different": 0})
        c["same" if same else "different"] += 1
        for name in (a, b):
            person = identity(name)
            if person_fold.setdefault(person, fold) != fold:
                conflicts.add(person)
            fold_of.setdefault(name, person_fold[person])
    src_of = {name: inside(img_root, name, where=first_where[name]) for name in fold_of}
    missing = [n for n in fold_of if not is_regular_file(src_of[n])]
    if missing:
        first = "; ".join(f"{first_where[n]}: {n}" for n in missing[:3])
        raise SourceLayoutError(f"{len(missing)} images named in {pairs_path} are missing (or not regular files) "
                                f"under {img_root} (first: {first}); expected the official layout:\n{layout}")
    rows = []
    with atomic_dir(out) as tmp:
        progress = Progress(f"prepare {dataset}", len(fold_of), unit="img", logger=log)
        for name in sorted(fold_of):
            place_image(src_of[name], tmp / "images" / name, where=first_where[name])
            rows.append(make_row(f"images/{name}", subject=identity(name), fold=fold_of[name]))
            progress.update()
        progress.close()
        write_manifest(tmp, "all", rows)
        write_pairs(tmp, [(f, f"images/{a}", f"images/{b}", same) for f, a, b, same in pairs])
        counts = {"pairs": len(pairs), "same_pairs": sum(p[3] for p in pairs), "identities": len(person_fold),
                  **meta_fields.pop("counts", {})}
        meta = write_meta(tmp, dataset, source, image_folder=img_root.name, pairs_file=str(pairs_path),
                          splits={"all": len(rows)}, n_images=len(rows), counts=counts,
                          fold_composition={f: composition[f] for f in sorted(composition)},
                          identities_in_several_folds=sorted(conflicts)[:20],
                          n_identities_in_several_folds=len(conflicts), **meta_fields)
    if conflicts:
        log.warning("%s: %d identities appear in several folds (kept their first fold)", dataset, len(conflicts))
    log.info("prepared %s: %d images, %d pairs", dataset, len(rows), len(pairs))
    return meta
