"""VoxCeleb1 / VoxCeleb2 (Nagrani et al. 2017; Chung et al. 2018) -> stage-1 identity/clip/frame layout.

PCL pretrains on VoxCeleb frames (docs/method.md §3.9, Appendix A.3). Two official release forms are read
(https://www.robots.ox.ac.uk/~vgg/data/voxceleb/; licence-gated, placed by the user under
``paths.sources/<dataset>/``):

* **videos** (VoxCeleb2 ``vox2_dev_mp4`` / ``vox2_test_mp4``; the layout A.3's script reads)::

      <source>/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4      identity / YouTube id / utterance
      <source>/test/mp4/id00017/.../00001.mp4

  Frames are sampled at ``video.fps`` (:mod:`pclbench.data.video`). ``.m4a`` files (the audio
  release) hold no video and are not read. The partition is the folder (dev / test); the identity
  is the folder name (``id#####``), so ``vox2_meta.csv`` is not needed and not read.

* **face-crop frames** (VoxCeleb1 ``unzippedIntervalFaces``, the distributed face tracks, which
  FaceCycle used: JiaRenChang/FaceCycle ``dataloader/listvox.py`` lists
  ``unzippedIntervalFaces/data/<identity dir>/1.6/<youtube id>/<utterance>/`` image folders)::

      <source>/unzippedIntervalFaces/data/A.J._Buckley/1.6/1zcIwhmdeo4/1/*.jpg   name / 1.6 / YouTube id / utterance
      <source>/vox1_meta.csv

  The frames are placed unchanged (hard links); at most ``video.max_frames_per_clip`` per clip, the
  first ones in file-name order.

``vox1_meta.csv`` (the official meta data, http://www.openslr.org/resources/49/vox1_meta.csv, also
https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/vox1_meta.csv): TAB-separated, one header line
whose names contain spaces -- ``VoxCeleb1 ID``, ``VGGFace1 ID``, ``Gender``, ``Nationality``, ``Set``
-- then one row per identity, e.g. ``id10001<TAB>A.J._Buckley<TAB>m<TAB>Ireland<TAB>dev``. Sources:
kaldi-asr/kaldi ``egs/voxceleb/v1/local/make_voxceleb1.pl`` (fetches the file from openslr and
splits each row into id, VGGFace1 name, gender, nationality, set; its comment: newer VoxCeleb1
releases name folders by id, older ones by name, hence the mapping); public readers that call
``pd.read_csv(..., sep='\\t')`` and index the face folders by the VGGFace1 name column
(``unzippedIntervalFaces/data/<VGGFace1 ID>/1.6/*/*/*.jpg``). ``vox2_meta.csv`` (same sources) is
comma-separated with the columns ``VoxCeleb2 ID``, ``VGGFace2 ID``, ``Gender``, ``Set``, fields
padded with spaces; :func:`read_meta` reads both (header names are compared with spaces and
underscores removed, case-insensitively, and every field is stripped).

Matching a face-frame folder to its meta row (the folder names of some copies differ from the meta
names in punctuation or case, and some copies are renamed to ids): (1) the folder name equals a
``VoxCeleb1 ID`` (``id10001``), (2) it equals a ``VGGFace1 ID``, (3) it equals one after
normalisation (Unicode compatibility decomposition, accents dropped, case folded, every character
that is not a letter or digit removed) and that normalised name is unique in the meta file. A folder
that matches no row, or matches ambiguously, or a row already taken by another folder, is left out
(its partition is unknown) and listed BY NAME with the reason in meta.json
(``identity_matching.unmatched``) and in the log; folders matched by normalisation are listed too,
as are meta rows with no folder. With ``vox1_meta.csv``, ``subject`` is the VoxCeleb1 id and the
``Set`` column (dev / test) gives the split; without it the folder name is the subject and every
identity is in ``train``.

Splits: ``train`` = the dev partition, ``test`` = the test partition (identity-disjoint in both
releases); the config entry's ``splits`` says which are written. Identities in
``video.exclusion_file`` (ids or VGGFace1 names; see config/voxceleb_exclusion.txt) are left out and
listed in meta.json. Output: ``images/<subject>/<youtube id>/<utterance>/<k>.<ext>``, manifest
columns ``subject`` (identity), ``clip`` (running index of the (identity, video, utterance) clips),
``frame`` (k, time order). A clip whose video cannot be decoded is skipped and listed in meta.json.

The parser reads no configuration itself: the ``video`` section is passed in by the caller
(:func:`pclbench.data.parsers.prepare_dataset` passes the sections of ``PARSER_SECTIONS``). Every
path taken from the release (folder names, meta ids) is checked with :func:`.stage1.inside` /
:func:`.stage1.safe_relpath`; errors name ``file:line``.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import re
import unicodedata
from pathlib import Path
from typing import Mapping

from pclbench.core.config import from_dict
from pclbench.core.resources import resource_path
from pclbench.core.io import atomic_dir
from pclbench.data.video import VideoConfig, VideoDecodeError, extract_clip, read_exclusion
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (SourceFormatError, SourceLayoutError, UnsafePathError, inside, is_regular_file,
                     make_row, place_image, safe_relpath, write_manifest, write_meta, csv_records)

log = logging.getLogger("pclbench.data.parsers")

LAYOUT = """  videos (VoxCeleb2):  <source>/dev/mp4/<id>/<youtube id>/<utterance>.mp4   (train)
                       <source>/test/mp4/<id>/<youtube id>/<utterance>.mp4  (test)
  or face frames (VoxCeleb1): <source>/unzippedIntervalFaces/data/<name>/1.6/<youtube id>/<utterance>/*.jpg
                       + <source>/vox1_meta.csv (tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set)"""

VIDEO_DIRS = {"train": ("dev/mp4", "dev"), "test": ("test/mp4", "test")}
PARTITION = {"dev": "train", "test": "test"}
FRAME_EXT = (".jpg", ".jpeg", ".png")
_ID_COLUMN = re.compile(r"^voxceleb\d+id$")
_NAME_COLUMN = re.compile(r"^vggface\d+id$")


def _header_key(name: str) -> str:
    """'VoxCeleb1 ID' / 'VoxCeleb1_ID' / ' voxceleb1id ' -> 'voxceleb1id'."""
    return re.sub(r"[\s_]+", "", name or "").lower()


def normalise_name(name: str) -> str:
    """Name key for matching folder and meta names that differ in punctuation, case or accents:
    NFKD, combining marks dropped, casefolded, only letters and digits kept ('A.J._Buckley' -> 'ajbuckley')."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return "".join(c for c in plain if c.isalnum())


def read_meta(path: Path) -> dict[str, dict[str, str]]:
    """``vox1_meta.csv`` / ``vox2_meta.csv`` -> ``{VGGFace name: {"id", "set", "line"}}`` (file order).

    Tab-separated when the header line holds a tab, else comma-separated; header names are matched
    without spaces/underscores and case; fields are stripped. A row with another column count, a
    ``Set`` other than dev/test, an id that is not a single folder name, or a repeated id or name
    raises :class:`SourceFormatError` naming ``file:line``."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceFormatError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise SourceFormatError(f"{path}:1: empty; expected the header 'VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender"
                                "<TAB>Nationality<TAB>Set'")
    delim = "\t" if "\t" in lines[0] else ","
    rows = list(csv_records(csv.reader(lines, delimiter=delim), path))  # csv.Error -> file:line
    keys = [_header_key(c) for c in rows[0]]
    col_id = next((i for i, k in enumerate(keys) if _ID_COLUMN.match(k)), None)
    col_name = next((i for i, k in enumerate(keys) if _NAME_COLUMN.match(k)), None)
    col_set = next((i for i, k in enumerate(keys) if k == "set"), None)
    if col_id is None or col_name is None or col_set is None:
        raise SourceFormatError(f"{path}:1: expected the columns 'VoxCeleb<n> ID', 'VGGFace<n> ID' and 'Set' "
                                f"(separator {'TAB' if delim == chr(9) else 'comma'}), got {rows[0]}")
    out: dict[str, dict[str, str]] = {}
    ids: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], 2):
        row = [c.strip() for c in row]
        if not any(row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != len(keys):
            raise SourceFormatError(f"{where}: {len(row)} fields, the header has {len(keys)}: {row}")
        ident, name, part = row[col_id], row[col_name], row[col_set]
        if part not in PARTITION:
            raise SourceFormatError(f"{where}: Set {part!r} is neither dev nor test")
        if safe_relpath(ident, where=where) != ident or "/" in ident:
            raise UnsafePathError(f"{where}: identity id {ident!r} is not a single folder name")
        if not name:
            raise SourceFormatError(f"{where}: empty VGGFace name")
        if ident in ids:
            raise SourceFormatError(f"{where}: id {ident} already on line {ids[ident]}")
        if name in out:
            raise SourceFormatError(f"{where}: name {name!r} already on line {out[name]['line']}")
        ids[ident] = lineno
        out[name] = {"id": ident, "set": part, "line": str(lineno)}
    return out


def match_identities(folders: list[str], meta: Mapping[str, Mapping[str, str]]) -> tuple[dict, list, list, list]:
    """Face-frame folder names -> meta rows (rules (1)-(3) of the module docstring).

    Returns ``(matched, by_normalisation, unmatched, rows_without_folder)``: ``matched`` =
    {folder: (meta name, row)}; ``by_normalisation`` = [{"folder", "meta_name", "id"}];
    ``unmatched`` = [{"folder", "reason"}]; ``rows_without_folder`` = [meta name] (file order)."""
    by_id = {row["id"]: name for name, row in meta.items()}
    by_norm: dict[str, list[str]] = {}
    for name in meta:
        by_norm.setdefault(normalise_name(name), []).append(name)
    matched: dict[str, tuple[str, Mapping[str, str]]] = {}
    taken: dict[str, str] = {}  # meta name -> folder
    by_normalisation, unmatched = [], []
    for folder in folders:
        how = None
        if folder in by_id:
            name, how = by_id[folder], "id"
        elif folder in meta:
            name, how = folder, "name"
        else:
            cands = by_norm.get(normalise_name(folder), [])
            if len(cands) == 1:
                name, how = cands[0], "normalised"
            elif len(cands) > 1:
                unmatched.append({"folder": folder, "reason": f"ambiguous: normalised name matches the meta rows "
                                                              f"{sorted(cands)}"})
                continue
            else:
                unmatched.append({"folder": folder, "reason": "no meta row with this id or (normalised) name"})
                continue
        if name in taken:
            unmatched.append({"folder": folder, "reason": f"meta row {name!r} ({meta[name]['id']}) already matched "
                                                          f"by folder {taken[name]!r}"})
            continue
        taken[name] = folder
        matched[folder] = (name, meta[name])
        if how == "normalised":
            by_normalisation.append({"folder": folder, "meta_name": name, "id": meta[name]["id"]})
    rows_without_folder = [name for name in meta if name not in taken]
    return matched, by_normalisation, unmatched, rows_without_folder


def _resolve(path_str: str) -> Path | None:
    """A config path: as given (relative to the working directory), else the repository's file of that
    name (the documented meaning of ``video.exclusion_file``; no configuration is read here), which an
    installed wheel carries as package data (:func:`pclbench.core.resources.resource_path`)."""
    if not path_str:
        return None
    p = Path(path_str)
    if p.is_absolute() or p.exists():
        return p
    return resource_path(p.as_posix())


def _clips_from_videos(root: Path) -> list[tuple[str, str, str, Path]]:
    """(identity, youtube id, utterance, video file) under ``<root>/<id>/<yt>/<utt>.mp4``, sorted;
    a path that leaves ``root`` through a symlink is refused."""
    out = []
    for p in sorted(root.glob("*/*/*.mp4")):
        inside(root, p.relative_to(root).as_posix(), where=str(p))
        out.append((p.parent.parent.name, p.parent.name, p.stem, p))
    return out


def _video_rows(source: Path, splits, cfg: VideoConfig, excluded: set[str], tmp: Path, stats: dict) -> dict:
    rows: dict[str, list[dict]] = {}
    clip_index = 0
    for split in splits:
        root = next((source / d for d in VIDEO_DIRS[split] if (source / d).is_dir()), None)
        if root is None:
            tried = ", ".join(str(source / d) for d in VIDEO_DIRS[split])
            raise SourceLayoutError(f"VoxCeleb videos of split {split!r} not found (tried {tried}); "
                                    f"expected the official layout:\n{LAYOUT}")
        clips = _clips_from_videos(root)
        if not clips:
            raise SourceLayoutError(f"{root}: no <id>/<youtube id>/<utterance>.mp4 files; expected:\n{LAYOUT}")
        rows[split] = []
        progress = Progress(f"voxceleb frames {split}", len(clips), unit="clip", logger=log)
        for ident, yt, utt, video in clips:
            progress.update()
            if ident in excluded:
                stats["excluded"].add(ident)
                continue
            if not is_regular_file(video):
                stats["failed_videos"].append({"path": str(video.relative_to(source)), "reason": "not a regular file"})
                continue
            rel = Path("images") / ident / yt / utt
            try:
                frames = extract_clip(video, tmp / rel, cfg)
            except VideoDecodeError as e:
                stats["failed_videos"].append({"path": str(video.relative_to(source)), "reason": str(e)})
                continue
            for f in frames:
                rows[split].append(make_row(f"{rel.as_posix()}/{f['k']:05d}.{cfg.image_format}", subject=ident,
                                            clip=clip_index, frame=f["k"]))
            clip_index += 1
        progress.close()
    return rows


def _frame_rows(source: Path, splits, cfg: VideoConfig, excluded: set[str], tmp: Path, stats: dict) -> dict:
    data = source / "unzippedIntervalFaces" / "data"
    meta_path = source / "vox1_meta.csv"
    meta = read_meta(meta_path) if meta_path.is_file() else None
    if meta is None and "test" in splits:
        raise SourceLayoutError(f"{meta_path} not found: the test split of the face-frame release needs the "
                                f"official meta data (its Set column); expected:\n{LAYOUT}")
    stats["meta"] = str(meta_path) if meta is not None else None
    rows: dict[str, list[dict]] = {s: [] for s in splits}
    clip_index = 0
    folders = sorted(p.name for p in data.iterdir() if p.is_dir())
    if meta is not None:
        matched, by_norm, unmatched, without = match_identities(folders, meta)
        stats["matching"] = {"matched": len(matched), "matched_by_normalised_name": by_norm,
                             "unmatched": unmatched, "meta_rows_without_folder": without}
        for u in unmatched:
            log.warning("voxceleb: identity folder %r left out (%s)", u["folder"], u["reason"])
        for m in by_norm:
            log.info("voxceleb: folder %r matched meta name %r (%s) after normalisation", m["folder"],
                     m["meta_name"], m["id"])
        if without:
            log.info("voxceleb: %d meta rows have no identity folder (first: %s)", len(without), without[:5])
    progress = Progress("voxceleb face frames", len(folders), unit="identity", logger=log)
    for folder in folders:
        progress.update()
        where = f"{data}/{folder}"
        if meta is not None:
            if folder not in matched:
                continue
            meta_name, info = matched[folder]
            ident, split = info["id"], PARTITION[info["set"]]
            names = {ident, folder, meta_name}
        else:
            ident, split, names = safe_relpath(folder, where=where), "train", {folder}
        if names & excluded:
            stats["excluded"].add(ident)
            continue
        if split not in rows:
            continue
        id_dir = inside(data, folder, where=where)
        for utt_dir in sorted(p for p in id_dir.glob("*/*/*") if p.is_dir()):  # 1.6/<yt>/<utt>
            inside(data, utt_dir.relative_to(data).as_posix(), where=str(utt_dir))
            files = sorted(p for p in utt_dir.iterdir() if p.suffix.lower() in FRAME_EXT)
            frames = []
            for f in files:
                if is_regular_file(f):
                    frames.append(f)
                else:
                    stats["skipped_files"].append({"path": str(f.relative_to(source)), "reason": "not a regular file"})
            frames = frames[: cfg.max_frames_per_clip]
            if not frames:
                continue
            yt, utt = utt_dir.parent.name, utt_dir.name
            rel = Path("images") / ident / yt / utt
            for k, f in enumerate(frames):
                dst = f"{rel.as_posix()}/{k:05d}{f.suffix.lower()}"
                place_image(inside(data, f.relative_to(data).as_posix(), where=str(f)), tmp / dst, where=str(f))
                rows[split].append(make_row(dst, subject=ident, clip=clip_index, frame=k))
            clip_index += 1
    progress.close()
    return rows


def prepare(entry: Mapping, source: Path, out: Path, video: Mapping | VideoConfig | None = None,
            dataset: str = "voxceleb") -> dict:
    """VoxCeleb release at ``source`` -> stage-1 layout at ``out``; returns meta.json's dict.

    ``video`` is the config section ``video`` (required: the parser reads no configuration file)."""
    if video is None:
        raise ValueError(f"parser {dataset}: the config section `video` must be passed (prepare_dataset passes "
                         "it; see PARSER_SECTIONS)")
    cfg = video if isinstance(video, VideoConfig) else from_dict(VideoConfig, video, "video")
    splits = list(entry.get("splits") or [])
    bad = [s for s in splits if s not in VIDEO_DIRS]
    if not splits or bad:
        raise ValueError(f"datasets.{dataset}.splits is {splits}: the VoxCeleb parser writes train (dev "
                         f"partition) and/or test (test partition); set datasets.{dataset}.splits to a subset")
    source = Path(source)
    if not source.is_dir():
        raise SourceLayoutError(f"source folder {source} does not exist; expected the official layout:\n{LAYOUT}")
    excl_path = _resolve(cfg.exclusion_file)
    excluded = read_exclusion(excl_path)
    stats: dict = {"excluded": set(), "failed_videos": [], "skipped_files": []}
    with atomic_dir(out) as tmp:
        if (source / "unzippedIntervalFaces" / "data").is_dir():
            variant = "face_frames"
            rows = _frame_rows(source, splits, cfg, excluded, tmp, stats)
        elif any((source / d).is_dir() for s in splits for d in VIDEO_DIRS[s]):
            variant = "videos"
            rows = _video_rows(source, splits, cfg, excluded, tmp, stats)
        else:
            raise SourceLayoutError(f"{source}: neither VoxCeleb videos nor face-crop frames found; expected "
                                    f"the official layout:\n{LAYOUT}")
        counts = {}
        for split in splits:
            counts[split] = write_manifest(tmp, split, rows[split])
        meta = write_meta(
            tmp, dataset, source,
            variant=variant,
            splits=splits,
            counts={s: {"frames": counts[s], "identities": len({r["subject"] for r in rows[s]}),
                        "clips": len({r["clip"] for r in rows[s]})} for s in splits},
            sampling={"fps": cfg.fps, "max_frames_per_clip": cfg.max_frames_per_clip,
                      "image_format": cfg.image_format if variant == "videos" else "as released"},
            exclusion={"file": str(excl_path) if excl_path else None,
                       "sha256": hashlib.sha256(excl_path.read_bytes()).hexdigest() if excl_path else None,
                       "n_listed": len(excluded), "excluded": sorted(stats["excluded"])},
            failed_videos=stats["failed_videos"],
            skipped_files=stats["skipped_files"],
            meta_file=stats.get("meta"),
            identity_matching=stats.get("matching"),
            columns={"subject": "VoxCeleb identity (id#####; the folder name without vox1_meta.csv)",
                     "clip": "running clip index over (identity, YouTube video, utterance)",
                     "frame": "k-th kept frame of the clip, time order"},
        )
    log.info("voxceleb (%s): %s", variant, counts)
    return meta


@PARSERS.register("voxceleb1")
def prepare_voxceleb1(entry: Mapping, source: Path, out: Path, video: Mapping | None = None) -> dict:
    return prepare(entry, source, out, video, dataset="voxceleb1")


@PARSERS.register("voxceleb2")
def prepare_voxceleb2(entry: Mapping, source: Path, out: Path, video: Mapping | None = None) -> dict:
    return prepare(entry, source, out, video, dataset="voxceleb2")


def overlapping_identities(meta: Mapping[str, Mapping[str, str]], names) -> list[str]:
    """VoxCeleb1 ids whose VGGFace1 name (``vox1_meta.csv``) is one of ``names`` (e.g. LFW's person
    folder names, which use the same ``First_Last`` spelling); exact matches, sorted by id. Used to
    fill config/voxceleb_exclusion.txt from the user's own copies of both releases."""
    wanted = set(names)
    return sorted(info["id"] for name, info in meta.items() if name in wanted)
