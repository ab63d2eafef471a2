"""Reading a raw image file as 8-bit RGB, safely (Stage 2 input; docs/architecture.md, "Stage 2").

A path that is a FIFO or a device is skipped without being opened (opening a FIFO blocks forever):
:class:`NotRegularFileError`, counted as ``not a regular file``. High-bit-depth images are scaled, not
clipped (:func:`to_rgb`), and decompression bombs are refused (:func:`read_image`).
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# Failure category of an input path that is not a regular file (the part of a reason before the colon).
FAIL_NOT_REGULAR = "not a regular file"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class NotRegularFileError(OSError):
    """An input path is a FIFO, device, socket or directory: it is skipped without being opened."""


def _file_kind(path: Path) -> str:
    """What a non-regular path is, from ``os.stat`` (which never blocks, unlike ``open`` on a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"not statable ({type(e).__name__})"
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One-band 16-bit / 32-bit integer / float pixels ``(H, W)`` -> uint8 (see :func:`to_rgb`)."""
    if mode in _SIXTEEN_BIT_MODES:
        return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)  # v * 255 / 65535
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        out = a * 255.0  # a [0, 1] intensity image
    elif lo >= 0.0 and hi <= 255.0:
        out = a  # 8-bit data in a wider container
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        out = a / 257.0  # 16-bit data (older Pillow opened 16-bit PNGs as "I")
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)  # no nominal range: stretch
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling high-bit-depth pixels instead of clipping them.

    Pillow's modes (Pillow handbook, "Concepts", Modes:
    https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes): ``I;16``/``I;16L``/
    ``I;16B``/``I;16N`` = 16-bit unsigned, ``I`` = 32-bit signed integer, ``F`` = 32-bit float.
    ``Image.convert`` clamps such values to 0..255 instead of scaling them (python-pillow/Pillow
    issues #2574 and #1108: a 16-bit greyscale image converts to near-white), which gave all-white
    crops. So these one-band modes are scaled here:

    * 16-bit: ``round(v * 255 / 65535) = round(v / 257)``, the linear sample-depth rescaling of the
      PNG specification (RFC 2083 2.2: samples range over 0 .. 2^depth - 1; "sample depth
      rescaling": output = round(input * MAXOUTSAMPLE / MAXINSAMPLE)). The nominal range, not the
      image's own maximum, so a dark 16-bit image stays as dark as its 8-bit version.
    * ``I``: values within 0..255 are taken as 8-bit, within 0..65535 as 16-bit (/257); otherwise,
      and for ``F`` outside [0, 1] / [0, 255], there is no nominal range and min..max is stretched to
      0..255 (a choice: such files are not expected in face datasets). ``F`` in [0, 1] is scaled by 255.

    Every other mode (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) goes
    through ``Image.convert("RGB")``; for alpha modes that drops the alpha band, as the head-pose
    reference loaders do (Hopenet's ``img.convert('RGB')``, FSA-Net's ``cv2.imread``). A mode Pillow
    cannot convert raises ``ValueError`` (the image then fails as unreadable).
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _grey_to_uint8(np.asarray(image), mode)  # (H, W) uint8
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB (:func:`to_rgb`).

    Raises :class:`NotRegularFileError` without opening the path when it exists but is not a regular
    file (``stage1.is_regular_file``: a FIFO would block ``open`` forever, a device could stream
    without end); other errors (missing, undecodable) propagate from Pillow. Pillow only *warns*
    (``DecompressionBombWarning``) for an image between ``Image.MAX_IMAGE_PIXELS`` and twice that and
    raises ``DecompressionBombError`` above (Pillow docs, reference/Image.html, ``Image.open``:
    "Warns: DecompressionBombWarning"); here both raise ``DecompressionBombError``, so a placed image of
    90-180 megapixels is refused like a bigger one instead of being decoded.
    """
    from pclbench.data.parsers.stage1 import is_regular_file

    path = Path(path)
    if os.path.lexists(path) and not is_regular_file(path):
        raise NotRegularFileError(f"{path.name} is {_file_kind(path)}; skipped without opening it")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from None
