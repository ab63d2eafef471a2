"""VoxCeleb1 / VoxCeleb2 (Nagrani et al. 2017; Chung et al. 2018) -> stage-1 identity/clip/frame layout.

PCL pretrains on VoxCeleb frames (method doc 3.9, Appendix A.3). Two official release forms are read
(https://www.robots.ox.ac.uk/~vgg/data/voxceleb/; licence-gated, placed by the user under
``paths.sources/<dataset>/``):

* **videos** (VoxCeleb2 ``vox2_dev_mp4`` / ``vox2_test_mp4``; the layout A.3's script reads)::

      <source>/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4      identity / YouTube id / utterance
      <source>/test/mp4/id00017/.../00001.mp4

  Frames are sampled at ``video.fps`` (:mod:`pclbench.data.video`). ``.m4a`` files (the audio
  release) hold no video and are not read.

* **face-crop frames** (VoxCeleb1 ``unzippedIntervalFaces``, the distributed face tracks, which
  FaceCycle used)::

      <source>/unzippedIntervalFaces/data/A.J._Buckley/1.6/1zcIwhmdeo4/1/*.jpg   name / 1.6 / YouTube id / utterance
      <source>/vox1_meta.csv     official meta data: VoxCeleb1_ID, VGGFace1_ID (the name), Gender, Nationality, Set

  The frames are placed unchanged (hard links); at most ``video.max_frames_per_clip`` per clip.
  With ``vox1_meta.csv``, ``subject`` is the VoxCeleb1 id and the ``Set`` column (dev / test) gives the
  split; without it the folder name is the subject and every identity is in ``train``.

Splits: ``train`` = the dev partition, ``test`` = the test partition (identity-disjoint in both
releases); the config entry's ``splits`` says which are written. Identities in
``video.exclusion_file`` (ids or VGGFace1 names; see config/voxceleb_exclusion.txt) are left out and
listed in meta.json. Output: ``images/<subject>/<youtube id>/<utterance>/<k>.<ext>``, manifest
columns ``subject`` (identity), ``clip`` (running index of the (identity, video, utterance) clips),
``frame`` (k, time order). A clip whose video cannot be decoded is skipped and listed in meta.json.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path
from typing import Mapping

from ...config import REPO_ROOT, from_dict
from ...io import atomic_dir
from ..video import VideoConfig, VideoDecodeError, extract_clip, read_exclusion
from . import PARSERS
from .stage1 import Progress, SourceFormatError, SourceLayoutError, make_row, place_image, write_manifest, write_meta

log = logging.getLogger("pclbench.data.parsers")

LAYOUT = """  videos (VoxCeleb2):  <source>/dev/mp4/<id>/<youtube id>/<utterance>.mp4   (train)
                       <source>/test/mp4/<id>/<youtube id>/<utterance>.mp4  (test)
  or face frames (VoxCeleb1): <source>/unzippedIntervalFaces/data/<name>/1.6/<youtube id>/<utterance>/*.jpg
                       + <source>/vox1_meta.csv (VoxCeleb1_ID, VGGFace1_ID, Gender, Nationality, Set)"""

VIDEO_DIRS = {"train": ("dev/mp4", "dev"), "test": ("test/mp4", "test")}
PARTITION = {"dev": "train", "test": "test"}
FRAME_EXT = (".jpg", ".jpeg", ".png")


def read_meta(path: Path) -> dict[str, dict[str, str]]:
    """``vox1_meta.csv`` (tab- or comma-separated) -> {VGGFace1 name: {"id", "set"}}."""
    text = path.read_text()
    delim = "\t" if text.split("\n", 1)[0].count("\t") > 0 else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delim)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    need = ("VoxCeleb1_ID", "VGGFace1_ID", "Set")
    if not all(c in cols for c in need):
        raise SourceFormatError(f"{path}:1: expected the columns {', '.join(need)}, got {cols}")
    out = {}
    for i, row in enumerate(reader, 2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if row["Set"] not in PARTITION:
            raise SourceFormatError(f"{path}:{i}: Set {row['Set']!r} is neither dev nor test")
        out[row["VGGFace1_ID"]] = {"id": row["VoxCeleb1_ID"], "set": row["Set"]}
    return out


def _resolve(path_str: str) -> Path | None:
    """A config path: as given (relative to the working directory), else relative to the repository."""
    if not path_str:
        return None
    p = Path(path_str)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def _clips_from_videos(root: Path) -> list[tuple[str, str, str, Path]]:
    """(identity, youtube id, utterance, video file) under ``<root>/<id>/<yt>/<utt>.mp4``, sorted."""
    return [(p.parent.parent.name, p.parent.name, p.stem, p) for p in sorted(root.glob("*/*/*.mp4"))]


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
        progress = Progress(len(clips), f"voxceleb frames {split}", unit="clip")
        for ident, yt, utt, video in clips:
            progress.update()
            if ident in excluded:
                stats["excluded"].add(ident)
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
    stats["meta"] = str(meta_path) if meta else None
    rows: dict[str, list[dict]] = {s: [] for s in splits}
    clip_index = 0
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    progress = Progress(len(names), "voxceleb face frames", unit="identity")
    for name in names:
        progress.update()
        info = (meta or {}).get(name)
        if meta is not None and info is None:
            raise SourceFormatError(f"{meta_path}: identity folder {name!r} of {data} has no row")
        ident = info["id"] if info else name
        split = PARTITION[info["set"]] if info else "train"
        if ident in excluded or name in excluded:
            stats["excluded"].add(ident)
            continue
        if split not in rows:
            continue
        for utt_dir in sorted(p for p in (data / name).glob("*/*/*") if p.is_dir()):  # 1.6/<yt>/<utt>
            frames = sorted(p for p in utt_dir.iterdir() if p.suffix.lower() in FRAME_EXT)
            frames = frames[: cfg.max_frames_per_clip]
            if not frames:
                continue
            yt, utt = utt_dir.parent.name, utt_dir.name
            rel = Path("images") / ident / yt / utt
            for k, f in enumerate(frames):
                dst = f"{rel.as_posix()}/{k:05d}{f.suffix.lower()}"
                place_image(f, tmp / dst)
                rows[split].append(make_row(dst, subject=ident, clip=clip_index, frame=k))
            clip_index += 1
    progress.close()
    return rows


def prepare(entry: Mapping, source: Path, out: Path, video: Mapping | VideoConfig | None = None,
            dataset: str = "voxceleb") -> dict:
    """VoxCeleb release at ``source`` -> stage-1 layout at ``out``; returns meta.json's dict.

    ``video`` is the config section ``video``; when the caller passes none it is read from the
    repository's config/config.yaml (logged).
    """
    if video is None:
        from ...cli import load_config

        log.info("voxceleb: no `video` section passed; reading it from config/config.yaml")
        video = load_config()["video"]
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
    stats: dict = {"excluded": set(), "failed_videos": []}
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
            meta_file=stats.get("meta"),
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
