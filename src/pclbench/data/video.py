"""Video frames for pretraining: decode clips, sample frames at a fixed rate, write identity/clip/frame folders.

PCL pretrains on VoxCeleb frames (docs/method.md §3.9 and Appendix A.3). The authors' script kept the
frames whose index modulo 25 is 0, 4, 8, 12, 16 or 20 (6 of every 25 frames, ~6 fps at VoxCeleb's
25 fps, ignoring the video's real rate). Here the rate is explicit and uses the frames' timestamps:
frame ``i`` at time ``t_i`` is kept when ``floor(t_i * fps)`` exceeds that of the last kept frame,
i.e. the first frame of every ``1 / fps`` interval (``fps`` >= the video's rate keeps every frame).
Decoding is PyAV (FFmpeg's libraries; ``pip install av``), in the container's presentation order.

Layout written (Stage 1, docs/architecture.md): ``images/<identity>/<video>/<clip>/<k>.<ext>`` with
``k`` = 0, 1, 2, ... in time order (A.3's layout); the manifest gets one row per frame with
``subject`` = identity, ``clip`` = a running clip index, ``frame`` = ``k``.

The identity exclusion list (``video.exclusion_file``) is a text file, one identity per line (a
VoxCeleb id such as ``id10001`` or a VGGFace1 name such as ``A.J._Buckley``), ``#`` starts a comment.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image

from pclbench.core.config import setting


@dataclass
class VideoConfig:
    """Video frame sampling for pretraining datasets (pclbench.data.video, VoxCeleb parsers)."""

    fps: float = setting("frames kept per second of video, by timestamp (A.3's rule is ~6 fps)", exclusiveMinimum=0)
    max_frames_per_clip: int = setting("at most this many frames per clip, the earliest", minimum=1)
    image_format: Literal["jpg", "png"] = setting("frame file format for decoded videos: jpg (small) or png (lossless)")
    jpeg_quality: int = setting("JPEG quality of decoded frames", minimum=1, maximum=100)
    exclusion_file: str = setting('identities left out (one id or VGGFace1 name per line), relative to the working '
                                  'dir; "" = none')


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded (the message names it)."""


def keep_frame(t: float, fps: float, last_slot: int) -> tuple[bool, int]:
    """Sampling rule: keep a frame at time ``t`` (s) if its ``1/fps`` slot is after ``last_slot``.

    Returns ``(keep, slot)``; start with ``last_slot = -1``. A tiny tolerance absorbs timestamps
    such as 0.19999999 for the frame meant at 0.2 s.
    """
    slot = math.floor(t * fps + 1e-6)
    return slot > last_slot, slot


def sample_frames(path: str | os.PathLike, fps: float, max_frames: int) -> Iterator[tuple[int, float, Image.Image]]:
    """Decode ``path`` and yield ``(source frame index, time in s, RGB image)`` of the kept frames."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency
        raise VideoDecodeError("decoding videos needs PyAV: pip install av") from e
    path = Path(path)
    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoDecodeError(f"{path}: cannot open video ({type(e).__name__}: {e})") from e
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream (audio-only file?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-level threads in FFmpeg's decoder
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        last, kept = -1, 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                # presentation time; streams without timestamps fall back to index / rate
                t = float(frame.time) if frame.time is not None else i / rate
                keep, slot = keep_frame(t, fps, last)
                if not keep:
                    continue
                last = slot
                yield i, t, frame.to_image().convert("RGB")
                kept += 1
                if kept >= max_frames:
                    return
        except VideoDecodeError:
            raise
        except Exception as e:
            raise VideoDecodeError(f"{path}: decoding failed after {kept} kept frame(s) ({type(e).__name__}: {e})") from e


def save_frame(image: Image.Image, path: Path, cfg: VideoConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.image_format == "jpg":
        image.save(path, format="JPEG", quality=cfg.jpeg_quality)
    else:
        image.save(path, format="PNG")


def extract_clip(video: str | os.PathLike, out_dir: Path, cfg: VideoConfig) -> list[dict]:
    """Frames of one clip into ``out_dir/<k>.<ext>``; returns ``[{"k", "source_frame", "time"}]``."""
    rows = []
    for k, (i, t, image) in enumerate(sample_frames(video, cfg.fps, cfg.max_frames_per_clip)):
        save_frame(image, out_dir / f"{k:05d}.{cfg.image_format}", cfg)
        rows.append({"k": k, "source_frame": i, "time": round(t, 6)})
    return rows


def read_exclusion(path: str | os.PathLike | None) -> set[str]:
    """Identities of an exclusion file (one per line, ``#`` comments, blank lines ignored)."""
    if not path:
        return set()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"video.exclusion_file: {path} not found (set it to \"\" to exclude no identity)"
        )
    out = set()
    for line in path.read_text().splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            out.add(token)
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int, codec: str = "mpeg4") -> None:
    """Encode ``frames`` ``(T, H, W, 3)`` uint8 RGB as a video (tests and examples; PyAV)."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}  # near-lossless, so tests can read the content back
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
