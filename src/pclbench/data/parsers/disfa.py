"""DISFA (Denver Intensity of Spontaneous Facial Action, Mavadati et al. 2013) -> stage 1.

Official layout (licence from http://mohammadmahoor.com/disfa/)::

    ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt   lines "<frame>,<intensity 0-5>", frame 1-based
    Videos_LeftCamera/LeftVideoSN001_comp.avi                  1024x768, 20 fps; frame k = the k-th decoded frame

Twelve AUs are coded: 1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26 (:data:`AUS`). All twelve intensities
are kept as manifest columns ``AU1 ... AU26`` (FACS 0-5); the benchmark's 8 AUs (1, 2, 4, 6, 9, 12,
25, 26) and occurrence = intensity >= 2 are the AU task's choice, not the parser's.

Frames: decoded from the left-camera videos with PyAV (every labelled frame, written as JPEG
quality 95: ``images/SN001/00001.jpg``; PNG would need ~1.5 MB per frame, ~200 GB for the set).
Alternatively the parser accepts frames you extracted yourself, which skips decoding:
``Frames_LeftCamera/SN001/<k>.jpg`` (or ``.png``; the number is the file name's trailing digits,
zero-padded or not, so ``SN001_0001.png`` works too). Frames without an image, or without a code in
all twelve label files, are dropped and counted in meta.json.

Frame numbering. The label files count frames from 1: lines ``<frame>,<intensity>``, ~4845 per
20 fps video (amogh112/deepFAU datasets.ipynb: "each video has 4845 frames @ 20 fps", rows
"frame_no,intensity"). The evidence for the base is indirect (no public
copy of the DISFA README was found): ihp-lab/LibreFace extracts frames with ffmpeg's default pattern
(extract_frames_DISFA.py, ``%04d``), which starts at 1 (image2 muxer ``start_number`` default 1,
FFmpeg doc/muxers.texi), and then names the image of label frame ``k`` by ``k`` itself
(create_csv.py, ``str(frame).zfill(5) + ".png"``), which only works if labels start at 1. Extracted
frames, however, come numbered either way: ME-GraphAU numbers them from 0 (CVI-SZU/ME-GraphAU
tool/README.md: ``data/DISFA/img/SN001/0.png``; tool/DISFA_image_label_process.py writes image ``t``
for the t-th label line, t from 0). Mixing the two silently shifts every label by one frame (50 ms),
so the base is never guessed from one file: config ``datasets.disfa.frame_base``:

* ``1``: image ``k`` shows label frame ``k``;  ``0``: image ``k`` shows label frame ``k + 1``;
* ``auto`` (default): detected per subject from the folder: image numbers exactly ``0..N-1`` (no
  gap) mean 0, exactly ``1..N`` mean 1; anything else (gaps, another first number) or subjects that
  disagree is refused with a message naming ``datasets.disfa.frame_base``.

``meta.json`` records the base used and how it was decided (``frame_base``). Decoded videos need no
base (frame k = the k-th decoded frame, 1-based, as the labels). Output images are always named by
the 1-based label frame (``images/SN001/00001.jpg``).

Untrusted input: subject folders, frame images and videos come from folder listings; each is checked
to stay inside the release (no symlink out of it, else an error), and entries that are not regular
files (FIFOs, devices) are skipped and counted (``dropped.not_regular_file``) rather than opened. Two
images with the same frame number in one folder (``1.png`` and ``0001.jpg``) are an error.

Folds: the 3 subject-exclusive folds used across the AU-detection literature (the partition
distributed with JAA-Net / ME-GraphAU, :data:`FOLDS`): fold 0 = SN002 SN010 SN001 SN026 SN027 SN032
SN030 SN009 SN016, fold 1 = SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024, fold 2 = SN003
SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004. ``clip`` is 0 (one video per subject), ``frame``
the 1-based label frame number.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from pclbench.core.io import atomic_dir
from pclbench.data.parsers.registry import PARSERS
from pclbench.core.progress import Progress
from pclbench.data.parsers.stage1 import (SourceFormatError, SourceLayoutError, au_column, check_splits, find_first, inside,
                     is_regular_file, log, make_row, place_image, write_manifest, write_meta, read_text)

LAYOUT = """  <source>/ActionUnit_Labels/SN001/SN001_au1.txt ... _au26.txt   lines "<frame>,<intensity>"
  <source>/Videos_LeftCamera/LeftVideoSN001_comp.avi
     (or pre-extracted frames <source>/Frames_LeftCamera/SN001/<k>.jpg, numbered from 0 or 1: see
      datasets.disfa.frame_base)"""

AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
BENCHMARK_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
FOLDS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
FOLD_OF = {s: k for k, subjects in enumerate(FOLDS) for s in subjects}
SPLITS = ("all",)
JPEG_QUALITY = 95
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FRAME_BASES = ("auto", 0, 1)


def read_au_file(path: Path) -> dict[int, int]:
    """``SNxxx_auK.txt`` -> {frame (1-based): intensity 0-5}. A frame listed twice with the same
    intensity is kept once; with different intensities it is an error naming both lines."""
    out: dict[int, int] = {}
    line_of: dict[int, int] = {}
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            frame, value = int(parts[0]), int(float(parts[1]))
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError, OverflowError):  # OverflowError: int(float("inf"))
            raise SourceFormatError(f"{path}:{i}: expected '<frame>,<intensity>', got {line!r}") from None
        if not 0 <= value <= 5:
            raise SourceFormatError(f"{path}:{i}: intensity {value} outside the FACS 0-5 scale")
        if frame in out and out[frame] != value:
            raise SourceFormatError(f"{path}:{i}: frame {frame} coded {value}, but line {line_of[frame]} "
                                    f"codes it {out[frame]}")
        out[frame] = value
        line_of.setdefault(frame, i)
    if not out:
        raise SourceFormatError(f"{path}: no labels")
    return out


def read_subject_labels(label_dir: Path, subject: str) -> tuple[dict[int, dict[str, float]], int]:
    """All twelve AU files of one subject -> ({frame: {AUk: intensity}} for the frames coded in every
    file, number of frames coded in only some files)."""
    per_au = {}
    for au in AUS:
        path = inside(label_dir, f"{subject}/{subject}_au{au}.txt", where=str(label_dir / subject))
        if not is_regular_file(path):
            what = "is missing" if not os.path.lexists(path) else "is not a regular file (a FIFO or a device?)"
            raise SourceLayoutError(f"DISFA label file {path} {what}; expected the official layout:\n{LAYOUT}")
        per_au[au] = read_au_file(path)
    frames = sorted(set.intersection(*(set(d) for d in per_au.values())))
    labels = {f: {au_column(au): float(per_au[au][f]) for au in AUS} for f in frames}
    return labels, len(set.union(*(set(d) for d in per_au.values()))) - len(frames)


def _frame_number(p: Path) -> int | None:
    """The trailing digits of the file name's stem (``0001`` -> 1, ``SN001_0042`` -> 42)."""
    m = re.search(r"(\d+)$", p.stem)
    return int(m.group(1)) if m else None


def frame_files(folder: Path, root: Path, dropped: dict) -> dict[int, Path]:
    """{image number: file} of one subject's pre-extracted frames (``root`` = the release folder the
    files must stay in). Non-regular files are skipped and counted; a number used twice is an error."""
    files: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS or (n := _frame_number(p)) is None:
            continue
        inside(root, str(p.relative_to(root)), where=str(p))  # no symlink out of the release
        if not is_regular_file(p):
            dropped["not_regular_file"] += 1  # a FIFO would block forever: never opened
            log.warning("disfa: %s is not a regular file (FIFO, device or dangling link); skipped", p)
            continue
        if n in files:
            raise SourceFormatError(f"{folder}: {files[n].name} and {p.name} are both frame {n}; keep one")
        files[n] = p
    return files


def detect_frame_base(numbers: Mapping[str, Sequence[int]]) -> tuple[int | None, dict[str, int]]:
    """Numbering base of pre-extracted frames, per subject: 0 when the image numbers are exactly
    0..N-1, 1 when exactly 1..N. Anything else, or subjects that disagree, raises a
    :class:`SourceLayoutError` naming ``datasets.disfa.frame_base``. Subjects without images are
    left out; (None, {}) when there are none."""
    per: dict[str, int] = {}
    unclear: list[str] = []
    for subject, nums in sorted(numbers.items()):
        nums = sorted(nums)
        if not nums:
            continue
        if nums == list(range(0, len(nums))):
            per[subject] = 0
        elif nums == list(range(1, len(nums) + 1)):
            per[subject] = 1
        else:
            holes = (nums[-1] - nums[0] + 1) - len(nums)  # numbers missing between the first and the last
            unclear.append(f"{subject} ({len(nums)} images numbered {nums[0]}..{nums[-1]}"
                           + (f", {holes} missing in between" if holes else "") + ")")
    hint = ("set datasets.disfa.frame_base: 0 (image k shows label frame k+1, e.g. ME-GraphAU's SN001/0.png) "
            "or 1 (image k shows label frame k, e.g. ffmpeg's default numbering)")
    if unclear:
        raise SourceLayoutError(f"cannot tell whether the pre-extracted DISFA frames are numbered from 0 or 1: "
                                f"{', '.join(unclear[:5])} are not a gap-free run 0..N-1 or 1..N; {hint}")
    bases = sorted(set(per.values()))
    if len(bases) > 1:
        by = {b: [s for s, v in per.items() if v == b] for b in bases}
        raise SourceLayoutError(f"pre-extracted DISFA frames disagree on their first number: subjects {by[0][:5]} "
                                f"start at 0, subjects {by[1][:5]} at 1; renumber one group, or {hint}")
    return (bases[0] if bases else None), per


def _video_frames(video: Path, wanted: set[int]):
    """Yield (1-based frame number, RGB array) for the wanted frames, decoding sequentially."""
    import av

    try:
        with av.open(str(video)) as container:
            if not container.streams.video:  # decode(video=0) would raise a bare IndexError
                raise SourceFormatError(f"{video}: not a decodable video (no video stream)")
            for k, frame in enumerate(container.decode(video=0), 1):
                if k in wanted:
                    yield k, frame.to_ndarray(format="rgb24")
                if k >= max(wanted):
                    break
    except av.error.FFmpegError as e:  # empty, truncated or not a video: name the file, no traceback
        raise SourceFormatError(f"{video}: not a decodable video ({e})") from None


@PARSERS.register("disfa")
def prepare(entry: Mapping, source: Path, out: Path) -> dict:
    check_splits(entry, "disfa", SPLITS)
    source = Path(source)
    label_dir = find_first(source, ["ActionUnit_Labels"], "DISFA ActionUnit_Labels folder", LAYOUT, kind="dir")
    subjects = sorted(p.name for p in label_dir.iterdir() if p.is_dir() and re.fullmatch(r"SN\d{3}", p.name))
    if not subjects:
        raise SourceLayoutError(f"no SNxxx subject folders in {label_dir}; expected the official layout:\n{LAYOUT}")
    unknown = [s for s in subjects if s not in FOLD_OF]
    if unknown:
        raise SourceFormatError(f"DISFA subjects {unknown} are not in the 3-fold partition {FOLDS}; "
                                "is this the DISFA release (27 subjects SN001-SN032)?")
    frame_base = entry.get("frame_base", "auto")
    if isinstance(frame_base, bool) or frame_base not in FRAME_BASES:
        raise ValueError(f"datasets.disfa.frame_base is {frame_base!r}; expected auto, 0 or 1")
    for subject in subjects:  # no subject folder may be a symlink out of the release
        inside(label_dir, subject, where=str(label_dir))
    frames_root = source / "Frames_LeftCamera"
    video_root = source / "Videos_LeftCamera"
    if not frames_root.is_dir() and not video_root.is_dir():
        raise SourceLayoutError(f"neither {video_root} nor {frames_root} exists; "
                                f"expected the official layout:\n{LAYOUT}")
    dropped = {"frame_not_in_all_label_files": 0, "frame_without_image": 0, "not_regular_file": 0}
    # Pre-extracted frames: list every subject's images and settle the numbering base before writing.
    frame_sets: dict[str, dict[int, Path]] = {}
    if frames_root.is_dir():
        for subject in subjects:
            if (frames_root / subject).is_dir():
                inside(frames_root, subject, where=str(frames_root))
                frame_sets[subject] = frame_files(frames_root / subject, source, dropped)
    if not frame_sets:
        base, base_info = None, {"value": None, "decided_by": "no pre-extracted frames: frame k = the k-th decoded "
                                                              "video frame, 1-based like the labels"}
    elif frame_base == "auto":
        base, per_subject = detect_frame_base({s: list(f) for s, f in frame_sets.items()})
        base_info = {"value": base, "decided_by": "auto: image numbers 0..N-1 -> 0, 1..N -> 1 (datasets.disfa."
                                                  "frame_base: auto)", "per_subject": per_subject}
    else:
        base = int(frame_base)
        base_info = {"value": base, "decided_by": "config datasets.disfa.frame_base"}
    if base is not None:
        base_info["rule"] = f"label frame f (1-based) = image number {'k + 1' if base == 0 else 'k'}"
    rows: list[dict] = []
    with atomic_dir(out) as tmp:
        for subject in subjects:
            labels, partial = read_subject_labels(label_dir, subject)
            dropped["frame_not_in_all_label_files"] += partial
            fold = FOLD_OF[subject]
            (tmp / "images" / subject).mkdir(parents=True)
            progress = Progress(f"prepare disfa/{subject}", len(labels), unit="img", logger=log)
            written = set()
            sub_frames = frames_root / subject
            if subject in frame_sets:
                files = frame_sets[subject]
                for f in labels:
                    k = f - 1 + (base if base is not None else 1)  # image number of label frame f
                    if k in files:
                        rel = f"images/{subject}/{f:05d}{files[k].suffix.lower()}"
                        place_image(files[k], tmp / rel, where=str(files[k]))
                        written.add((f, rel))
                    progress.update()
            else:
                videos = sorted(video_root.glob(f"*{subject}*.avi")) if video_root.is_dir() else []
                if not videos:
                    raise SourceLayoutError(f"no left-camera video for {subject} (looked for "
                                            f"{video_root}/*{subject}*.avi "
                                            f"and {sub_frames}/); expected the official layout:\n{LAYOUT}")
                video = inside(video_root, videos[0].name, where=str(video_root))
                if not is_regular_file(video):  # a FIFO would block the decoder forever
                    dropped["not_regular_file"] += 1
                    log.warning("disfa: %s is not a regular file (FIFO, device or dangling link); skipped", video)
                elif labels:
                    for f, rgb in _video_frames(video, set(labels)):
                        rel = f"images/{subject}/{f:05d}.jpg"
                        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp / rel, quality=JPEG_QUALITY)
                        written.add((f, rel))
                        progress.update()
            progress.close()
            dropped["frame_without_image"] += len(labels) - len(written)
            for f, rel in sorted(written):
                rows.append(make_row(rel, subject=subject, clip=0, frame=f, fold=fold, aus=labels[f]))
        au_names = [au_column(a) for a in AUS]
        write_manifest(tmp, "all", rows, au_names)
        meta = write_meta(
            tmp, "disfa", source, aus=au_names, benchmark_aus=[au_column(a) for a in BENCHMARK_AUS],
            au_scale="FACS intensity 0-5 as coded by DISFA; occurrence = intensity >= 2",
            folds={k: list(s) for k, s in enumerate(FOLDS)},
            fold_source="3-fold subject partition of JAA-Net / ME-GraphAU (DISFA AU-detection literature)",
            frames="Frames_LeftCamera (pre-extracted)" if frames_root.is_dir() else "decoded from Videos_LeftCamera",
            frame_base=base_info, label_frame_base=1,
            splits={"all": len(rows)}, n_images=len(rows),
            counts={"subjects": len(subjects),
                    "per_fold": {k: sum(1 for r in rows if r["fold"] == k) for k in range(len(FOLDS))}},
            dropped=dropped)
    log.info("prepared disfa: %d frames of %d subjects (dropped %s)", len(rows), len(subjects), dropped)
    return meta
