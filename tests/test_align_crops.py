"""Crop modes and input QC of alignment (data/align.py): head-pose box crops keep the roll, the
similarity alignment levels it; FIFOs are skipped unopened; QC rejections with named reasons;
16-bit and other image modes.

References are independent of the code under test: closed forms of the box geometry (the margins of
FSA-Net / Hopenet, cited in ``box_transform``), blob centroids measured in the crop's pixels, hand
loops over the pixels, and the PNG specification's 16 -> 8 bit rescaling (round(v * 255 / 65535)).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bounded import replace_with_fifo, run_bounded
from pclbench.core.config import ConfigError, from_dict
from pclbench.align.aligner import AlignConfig, BoxCropOptions, align_chunks, align_split
from pclbench.align.geometry import apply_affine, box_transform, canonical_template, padding_fraction
from pclbench.align.images import read_image, to_rgb
from pclbench.align.warp import align_images
from pclbench.align.landmarks import LEFT_EYE, RIGHT_EYE
from pclbench.align.pts import write_pts
from pclbench.align.shards import open_shard


def _cfg_dict(**over) -> dict:
    d = dict(
        backend="groundtruth", backends={}, points="five", crop_scale=0.8, shift_y=0.0, max_failure_rate=1.0,
        batch_size=3, chunk_size=4, parts=1, qc_samples=6, device="cpu", detectors={},
        groundtruth=dict(index_base=0), dlib=dict(upsample=0),
        face_alignment=dict(detector="sfd", flip_input=True, compile=False, box=[0.1, 0.1, 0.9, 0.9]),
        crop="similarity", crops={}, box=dict(margin=[0.6, 0.6, 0.6, 0.6], shape="square"),
        qc=dict(max_outside=0.5, min_scale=0.01, max_scale=8.0, max_padding=0.75),
    )
    d.update(over)
    return d


def _cfg(**over) -> AlignConfig:
    return from_dict(AlignConfig, _cfg_dict(**over), "align")


# ------------------------------------------------------------------------------------------------
# A 68-point face built by hand (iBUG index layout), rotated by a known roll
# ------------------------------------------------------------------------------------------------


def _unit_face() -> np.ndarray:
    """68 iBUG-ordered points of a frontal face, unit size, centred on (0, 0), y down. The eye contours
    are regular hexagons, so their means (the ArcFace eye points) are exactly the eye centres."""
    pts = np.zeros((68, 2))
    t = np.linspace(np.pi, 0.0, 17)
    pts[0:17] = np.stack([0.5 * np.cos(t), 0.55 * np.sin(t)], 1)  # jaw: ear to ear under the chin
    pts[17:22] = np.stack([np.linspace(-0.4, -0.1, 5), np.full(5, -0.3)], 1)  # brows
    pts[22:27] = np.stack([np.linspace(0.1, 0.4, 5), np.full(5, -0.3)], 1)
    pts[27:31] = np.stack([np.zeros(4), np.linspace(-0.2, 0.1, 4)], 1)  # nose bridge, tip = 30
    pts[31:36] = np.stack([np.linspace(-0.1, 0.1, 5), np.full(5, 0.15)], 1)
    hexagon = 0.06 * np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1)
    pts[36:42] = np.array([-0.2, -0.15]) + hexagon  # image-left eye
    pts[42:48] = np.array([0.2, -0.15]) + hexagon
    u = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    pts[48:60] = np.stack([0.15 * np.cos(u), 0.3 - 0.05 * np.sin(u)], 1)  # 48 = left corner, 54 = right
    v = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    pts[60:68] = np.stack([0.1 * np.cos(v), 0.3 - 0.02 * np.sin(v)], 1)
    return pts


def _place(roll_deg: float, scale: float, centre) -> np.ndarray:
    """The unit face rotated counter-clockwise in the image by ``roll_deg`` (y points down, so the
    image-right eye goes up), scaled and moved to ``centre``."""
    th = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    return _unit_face() @ rot.T * scale + np.asarray(centre, dtype=np.float64)


def _eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[..., LEFT_EYE, :].mean(axis=-2), lm[..., RIGHT_EYE, :].mean(axis=-2)


def _eye_line_deg(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Counter-clockwise angle of the left->right eye line in degrees (image y points down)."""
    d = right - left
    return np.degrees(np.arctan2(-d[..., 1], d[..., 0]))


def _blob_image(centres, size=(200, 200), sigma=2.5) -> Image.Image:
    """Black RGB image with a Gaussian blob at each (x, y) (sub-pixel exact centres)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for cx, cy in centres:
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    grey = np.clip(np.rint(255 * img), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def _blob_centroids(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity centroids (x, y) of the crop's left and right halves (one eye blob in each)."""
    g = crop.astype(np.float64).mean(axis=0)  # (S, S)
    s = g.shape[1]
    yy, xx = np.mgrid[0 : g.shape[0], 0:s].astype(np.float64)
    out = []
    for half in (xx < s / 2, xx >= s / 2):
        w = g * half
        out.append(np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()]))
    return out[0], out[1]


BOX = BoxCropOptions(margin=[0.6, 0.6, 0.6, 0.6], shape="square")


@pytest.mark.parametrize("roll", [-20.0, 0.0, 20.0])
def test_box_crop_keeps_the_roll_and_similarity_levels_it(roll):
    """Closed form: eyes drawn as blobs on a face rolled by +-20 deg. In the box crop the eye line (from
    the blobs' pixels and from the moved landmarks) is at the input roll; in the similarity crop it is
    at the template's own eye-line angle whatever the roll."""
    lm = _place(roll, 70.0, (100.0, 95.0))
    left, right = _eye_centres(lm)
    image = _blob_image([left, right])
    size = 128
    template = canonical_template(size, 0.8, 0.0)
    crops, lm_crop = align_images([image], lm[None], size, template, "five", mode="box", box=BOX)
    bl, br = _blob_centroids(crops[0])
    assert _eye_line_deg(bl, br) == pytest.approx(roll, abs=0.3)  # pixels
    assert _eye_line_deg(*_eye_centres(lm_crop[0].astype(np.float64))) == pytest.approx(roll, abs=1e-3)
    # the moved landmarks sit where the pixels are
    np.testing.assert_allclose(np.stack([bl, br]), np.stack(_eye_centres(lm_crop[0].astype(np.float64))), atol=0.15)

    crops_s, lm_s = align_images([image], lm[None], size, template, "five", mode="similarity")
    level = _eye_line_deg(template[0], template[1])  # 0.32 deg: the ArcFace eyes are not exactly level
    sl, sr = _blob_centroids(crops_s[0])
    assert _eye_line_deg(sl, sr) == pytest.approx(level, abs=0.3)
    assert _eye_line_deg(*_eye_centres(lm_s[0].astype(np.float64))) == pytest.approx(level, abs=0.05)


def _box_edges(lm: np.ndarray, margin) -> tuple[float, float, float, float]:
    """Hand computation of the enlarged box [x0 - L w, x1 + R w] x [y0 - T h, y1 + B h]."""
    x0, x1, y0, y1 = lm[:, 0].min(), lm[:, 0].max(), lm[:, 1].min(), lm[:, 1].max()
    w, h = x1 - x0, y1 - y0
    left, top, right, bottom = margin
    return x0 - left * w, y0 - top * h, x1 + right * w, y1 + bottom * h


@pytest.mark.parametrize("shape", ["square", "center_crop", "stretch"])
def test_box_transform_closed_form(shape):
    """The crop's edges (-0.5 and S - 0.5 in crop coordinates) land on the box edges of each shape."""
    lm = _place(15.0, 60.0, (35.0, 70.0))  # near the left edge of a 150 x 120 image: stretch clips
    margin = [0.3, 0.5, 0.1, 0.2]
    size = 50
    bx0, by0, bx1, by1 = _box_edges(lm, margin)
    if shape == "stretch":  # clipped to the image's pixel edges [-0.5, W - 0.5] x [-0.5, H - 0.5]
        bx0, by0, bx1, by1 = max(bx0, -0.5), max(by0, -0.5), min(bx1, 149.5), min(by1, 119.5)
    else:
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        side = (max if shape == "square" else min)(bx1 - bx0, by1 - by0)
        bx0, bx1, by0, by1 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    m = box_transform(lm, (150, 120), size, BoxCropOptions(margin=margin, shape=shape))
    assert m[0, 1] == 0 and m[1, 0] == 0  # no rotation
    corners = apply_affine(m, np.array([[bx0, by0], [bx1, by1]]))
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-9)
    if shape == "stretch":
        assert bx0 == -0.5 and m[0, 0] != m[1, 1]  # the box was clipped and x, y scale differently


def test_stretch_crop_pixels_match_a_hand_box_average():
    """A stretch crop of a 2S x S box (x shrunk 2x, y kept) samples, at each crop pixel, the mean of
    the two source pixels 2p, 2p + 1 of row p: bilinear at the midpoint, by hand."""
    rng = np.random.default_rng(3)
    size = 16
    src = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)  # (H, W, 3)
    image = Image.fromarray(src)
    # landmarks spanning exactly the pixel centres 0 .. W - 1, 0 .. H - 1; margins of half a pixel
    # reach the image edges (-0.5 and W - 0.5), so the box is the whole image
    lm = np.zeros((68, 2))
    lm[:, 0] = np.linspace(0, 2 * size - 1, 68)
    lm[:, 1] = np.linspace(0, size - 1, 68)
    margin = [0.5 / (2 * size - 1), 0.5 / (size - 1), 0.5 / (2 * size - 1), 0.5 / (size - 1)]
    crops, _ = align_images([image], lm[None], size, canonical_template(size, 1.0, 0.0), "five", mode="box",
                            box=BoxCropOptions(margin=margin, shape="stretch"))
    by_hand = (src[:, 0::2].astype(np.float64) + src[:, 1::2]) / 2  # (S, S, 3)
    assert np.abs(crops[0].transpose(1, 2, 0).astype(np.float64) - by_hand).max() <= 1.0


def test_padding_fraction_closed_form():
    """An axis-aligned crop half outside the image on x and a quarter on y: 1 - 0.5 * 0.75 outside."""
    size = 40
    # crop covers x in [-50, 50], y in [-25, 75] (edges) of a 100 x 100 image (edges -0.5 .. 99.5)
    m = np.array([[size / 100.0, 0, 50 * size / 100.0 - 0.5], [0, size / 100.0, 25 * size / 100.0 - 0.5]])
    # crop pixel centre p samples source x = -50 + (p + 0.5) * 2.5: inside iff x >= -0.5
    xs = -50 + (np.arange(size) + 0.5) * 2.5
    ys = -25 + (np.arange(size) + 0.5) * 2.5
    by_hand = 1 - np.mean((xs >= -0.5) & (xs <= 99.5)) * np.mean((ys >= -0.5) & (ys <= 99.5))
    assert padding_fraction(m, (100, 100), size) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(1 - 0.5 * 0.75, abs=0.03)


# ------------------------------------------------------------------------------------------------
# Which datasets get which crop
# ------------------------------------------------------------------------------------------------


def test_default_config_box_crops_exactly_the_head_pose_datasets(default_config):
    cfg = from_dict(AlignConfig, default_config["align"], "align")
    for name, entry in default_config["datasets"].items():
        expected = "box" if "pose" in entry["tasks"] else "similarity"
        assert cfg.crop_for(name) == expected, name
    assert {cfg.crop_for(d) for d in ("300w_lp", "aflw2000", "synth_pose")} == {"box"}


def test_crop_config_is_checked():
    with pytest.raises(ConfigError, match="align.crops.aflw2000"):
        _cfg(crops={"aflw2000": "rotate"})
    with pytest.raises(ConfigError, match="align.box.shape"):
        _cfg(box=dict(margin=[0.6] * 4, shape="circle"))
    with pytest.raises(ConfigError, match="align.box.margin"):
        _cfg(box=dict(margin=[0.6] * 3, shape="square"))
    with pytest.raises(ConfigError, match="align.qc"):
        _cfg(qc=dict(max_outside=0.5, min_scale=2.0, max_scale=1.0, max_padding=0.5))


# ------------------------------------------------------------------------------------------------
# SynthFaces renders: the roll label survives box crops only
# ------------------------------------------------------------------------------------------------


def _synth_raw(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """A synth_pose-like raw split rendered by SynthFaces' renderer (pose uniform, 112 px frames)."""
    from pclbench.data.synth_render import render_face, sample_identity, sample_scene

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        idt = sample_identity(rng)
        scene = sample_scene(rng, (0.4, 0.6), 0.06)
        yaw, pitch, roll = rng.uniform(-40, 40), rng.uniform(-20, 20), rng.uniform(-25, 25)
        img, lm = render_face(idt, {}, float(yaw), float(pitch), float(roll), scene, 112, 1)
        rel = f"img/{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        write_pts((root / rel).with_suffix(".pts"), lm, index_base=0)
        rows.append({"path": rel, "yaw": yaw, "pitch": pitch, "roll": roll})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "train.csv", index=False)
    return manifest


def test_synth_pose_roll_survives_box_crops_only(tmp_path):
    """Aligned through align_split on rendered faces: with the box crop (the default for synth_pose)
    the crop's eye-line angle tracks the roll label (slope ~1); with the similarity crop it does not."""
    raw = tmp_path / "raw" / "synth_pose"
    manifest = _synth_raw(raw, 30)
    roll = manifest["roll"].to_numpy()
    angles = {}
    for mode in ("box", "similarity"):
        out = tmp_path / mode / "train"
        qc = align_split(raw, "train", out, _cfg(crops={"synth_pose": mode}), size=64, dataset="synth_pose")
        assert qc["crop"] == mode and qc["n_kept"] == 30, qc["failures"]
        shard = open_shard(out)
        angles[mode] = _eye_line_deg(*_eye_centres(shard.landmarks.astype(np.float64)))
    box, sim = angles["box"], angles["similarity"]
    assert np.corrcoef(box, roll)[0, 1] > 0.95
    assert np.polyfit(roll, box, 1)[0] == pytest.approx(1.0, abs=0.2)
    assert abs(np.corrcoef(sim, roll)[0, 1]) < 0.5 and sim.std() < 0.35 * roll.std()


def test_changing_the_crop_mode_recomputes_the_chunks(tmp_path):
    raw = tmp_path / "raw"
    _synth_raw(raw, 3)
    out = tmp_path / "out" / "train"
    first = align_chunks(raw, "train", out, _cfg(), size=32, dataset="d")
    again = align_chunks(raw, "train", out, _cfg(), size=32, dataset="d")
    other = align_chunks(raw, "train", out, _cfg(crops={"d": "box"}), size=32, dataset="d")
    assert first["computed"] == [0] and again["reused"] == [0] and other["computed"] == [0]


# ------------------------------------------------------------------------------------------------
# Input QC: FIFOs, rejections with reasons, the worst-case sheet
# ------------------------------------------------------------------------------------------------


def _face_raw(root: Path, landmarks: list[np.ndarray], size=(100, 100)) -> None:
    """Raw split of blob images (a blob on each landmark) with their .pts files."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, lm in enumerate(landmarks):
        rel = f"img/{i:03d}.png"
        inside = [p for p in lm if 0 <= p[0] < size[0] and 0 <= p[1] < size[1]]
        _blob_image(inside, size=size, sigma=1.5).save(root / rel)
        write_pts((root / rel).with_suffix(".pts"), lm, index_base=0)
        rows.append({"path": rel})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)


def test_fifo_image_and_pts_are_skipped_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    _face_raw(raw, [_place(0.0, 40.0, (50, 50))] * 4)
    fifos = [replace_with_fifo(raw / "img/001.png"),  # a FIFO where an image is expected
             replace_with_fifo(raw / "img/002.pts")]  # and where landmarks are expected
    # a hang guard, not a timing assertion: a regression blocks in open() forever
    qc = run_bounded(lambda: align_split(raw, "train", tmp_path / "out", _cfg(), size=32), fifos=fifos)
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert reasons["img/001.png"].startswith("not a regular file:") and "FIFO" in reasons["img/001.png"]
    assert reasons["img/002.png"].startswith("landmark file missing or malformed:")
    assert "002.pts is not a regular file" in reasons["img/002.png"]
    assert qc["n_kept"] == 2


def test_read_image_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="x.png is a FIFO"):
        read_image(fifo)  # would block forever if it opened the path


def test_qc_rejections_have_named_reasons_and_appear_on_the_worst_sheet(tmp_path):
    raw = tmp_path / "raw"
    good = _place(5.0, 15.0, (50, 50))  # its 5x box (75 px) fits the image
    far = good + 1000.0  # 10 image sizes away from a 100 px image
    corner = _place(0.0, 12.0, (6, 7))  # inside, but most of its 5x box is beyond the image corner
    tiny = _place(0.0, 0.02, (50, 50))  # a face of 0.02 px: absurd magnification
    _face_raw(raw, [good, far, corner, tiny, good])
    cfg = _cfg(crops={"toy": "box"}, box=dict(margin=[2.0, 2.0, 2.0, 2.0], shape="square"), qc_samples=4,
               qc=dict(max_outside=0.5, min_scale=0.01, max_scale=8.0, max_padding=0.5))
    out = tmp_path / "out"
    size = 48  # = the contact sheet's cell, so a tile is the crop itself
    qc = align_split(raw, "train", out, cfg, size=size, dataset="toy")
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert reasons["img/001.png"].startswith("landmarks outside the image:")
    assert reasons["img/002.png"].startswith("mostly padding:")
    assert reasons["img/003.png"].startswith("implausible scale:")
    assert qc["failures_by_reason"] == {"implausible scale": 1, "landmarks outside the image": 1, "mostly padding": 1}
    assert qc["n_kept"] == 2 and qc["padding"]["max"] == 0.0
    # the corner face's padding by hand: a square box of side 5 * face size about the face centre
    x0, y0, x1, y1 = _box_edges(corner, [2.0] * 4)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    p = cx - side / 2 + (np.arange(size) + 0.5) * side / size  # crop pixel centres in the image, x
    q = cy - side / 2 + (np.arange(size) + 0.5) * side / size
    inside = np.mean((p >= -0.5) & (p <= 99.5)) * np.mean((q >= -0.5) & (q <= 99.5))
    assert f"{1 - inside:.0%} of the crop" in reasons["img/002.png"]
    # qc_worst.png: the rejected crops (first, with their reasons in qc.json), then the kept ones
    shown = qc["rejected_shown"]
    assert [s["path"] for s in shown] == ["img/001.png", "img/002.png", "img/003.png"]
    assert all(s["reason"] == reasons[s["path"]] for s in shown)
    sheet = np.asarray(Image.open(out / "qc_worst.png").convert("RGB"))
    assert sheet.shape == (48 + 12, 5 * 48, 3)  # 3 rejected + 2 kept tiles, caption row
    expected, _ = align_images([Image.open(raw / "img/002.png")], corner[None], size, None, "five", mode="box",
                               box=cfg.box)
    np.testing.assert_array_equal(sheet[:48, 48:96], expected[0].transpose(1, 2, 0))
    assert json.loads((out / "qc.json").read_text())["rejected_shown"] == shown


def test_similarity_crops_are_rejected_too(tmp_path):
    raw = tmp_path / "raw"
    good = _place(0.0, 30.0, (50, 50))
    _face_raw(raw, [good, good * 10.0])  # landmarks around (500, 500), beyond a 100 px image
    qc = align_split(raw, "train", tmp_path / "out", _cfg(), size=32)
    (fail,) = qc["failures"]
    assert fail["path"] == "img/001.png" and fail["reason"].startswith("landmarks outside the image:")


# ------------------------------------------------------------------------------------------------
# Image modes
# ------------------------------------------------------------------------------------------------


def test_16_bit_png_crop_matches_the_8_bit_crop(tmp_path):
    """A real 16-bit greyscale PNG (values v * 257) aligns to the crop of the 8-bit PNG (values v)
    within one grey level; Image.convert('RGB') alone clamps it to near-white."""
    rng = np.random.default_rng(0)
    lm = _place(10.0, 40.0, (50, 50))
    yy, xx = np.mgrid[0:100, 0:100]
    grey8 = np.clip(60 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 20, (100, 100)), 0, 255)
    grey8 = grey8.astype(np.uint8)
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    Image.fromarray(grey8).save(raw / "img/8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(raw / "img/16.png")
    assert (raw / "img/16.png").read_bytes()[24] == 16  # IHDR bit depth: a real 16-bit PNG
    for name in ("8", "16"):
        write_pts(raw / f"img/{name}.pts", lm, index_base=0)
    pd.DataFrame({"path": ["img/8.png", "img/16.png"]}).to_csv(raw / "train.csv", index=False)
    for mode in ("similarity", "box"):
        out = tmp_path / mode
        align_split(raw, "train", out, _cfg(crop=mode), size=40)
        crops = np.asarray(open_shard(out).images).astype(int)
        assert np.abs(crops[0] - crops[1]).max() <= 1
        assert crops[0].mean() < 200  # not the clamped, all-white version


def test_to_rgb_scales_high_bit_depth_modes():
    v8 = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
    rgb = lambda im: np.asarray(to_rgb(im))  # noqa: E731
    expected = np.repeat(v8[:, :, None], 3, axis=2)
    # 16-bit, both byte orders: round(v * 255 / 65535)
    v16 = v8.astype(np.uint16) * 257 + np.array([[0, 128, 0], [0, 0, 129]], dtype=np.uint16)  # off the grid too
    for mode in ("I;16", "I;16B"):
        im = Image.frombytes(mode, (3, 2), v16.astype("<u2" if mode == "I;16" else ">u2").tobytes())
        by_hand = np.rint(v16 * 255.0 / 65535.0).astype(np.uint8)
        np.testing.assert_array_equal(rgb(im), np.repeat(by_hand[:, :, None], 3, axis=2))
    # 32-bit integer holding 16-bit data; holding 8-bit data
    i32 = Image.fromarray(v8.astype(np.int32) * 257)
    assert i32.mode == "I"
    np.testing.assert_array_equal(rgb(i32), expected)
    np.testing.assert_array_equal(rgb(Image.fromarray(v8.astype(np.int32))), expected)
    # float in [0, 1]
    f32 = Image.fromarray(v8.astype(np.float32) / 255.0)
    assert f32.mode == "F"
    np.testing.assert_array_equal(rgb(f32), expected)
    # 8-bit modes: L, LA (alpha dropped), P (palette lookup), RGBA (alpha dropped)
    np.testing.assert_array_equal(rgb(Image.fromarray(v8)), expected)
    la = Image.frombytes("LA", (3, 2), np.stack([v8, np.full_like(v8, 7)], axis=2).tobytes())
    np.testing.assert_array_equal(rgb(la), expected)
    palette = np.arange(768)[::-1].astype(np.uint8)  # any fixed table
    index = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    p = Image.frombytes("P", (3, 2), index.tobytes())
    p.putpalette(palette.tobytes())
    np.testing.assert_array_equal(rgb(p), palette.reshape(256, 3)[index])
    rgba = Image.frombytes("RGBA", (3, 2), np.dstack([expected, np.zeros_like(v8)]).tobytes())
    np.testing.assert_array_equal(rgb(rgba), expected)
