"""On-device PCL views (docs/method.md §2.1, 3.2-3.4) against independent references."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage

from pclbench.core.config import ConfigError
from pclbench.pretrain.views import (ViewConfig, add_noise, adjust_brightness, adjust_contrast, adjust_hue,
                            adjust_saturation, distance_crop, face_views, gaussian_blur, hsv_to_rgb,
                            patch_half_size, photometric, pose_views, rgb_to_hsv, sample_distance_boxes,
                            sobel)

torch.set_num_threads(2)

PAPER = {"crop_ratio": 0.4, "jitter_p": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2,
         "grayscale_p": 0.2, "blur_p": 0.8, "blur_kernel_fraction": 0.1, "blur_sigma": [0.1, 2.0],
         "sobel_p": 0.6, "sobel_overflow": "fixed"}
OFF = {**PAPER, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "sobel_p": 0.0}


def cfg(**over) -> ViewConfig:
    return ViewConfig.from_config({**PAPER, **over})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_image(b: int, h: int, w: int) -> torch.Tensor:
    """Pixel (y, x) of image i holds (y / h, x / w, i / b): its content tells where it came from."""
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    img = torch.stack([yy, xx, torch.zeros_like(yy)])[None].repeat(b, 1, 1, 1)
    img[:, 2] = (torch.arange(b) / b)[:, None, None]
    return img


# --------------------------------------------------------------------------------------------- DistanceCrop


def quadrant(box, h, w):
    x0, y0, x1, y1 = box
    qy = 0 if y1 <= h // 2 else (1 if y0 >= h // 2 else None)
    qx = 0 if x1 <= w // 2 else (1 if x0 >= w // 2 else None)
    assert qy is not None and qx is not None, f"box {box} straddles a quadrant border"
    return qy, qx


@pytest.mark.parametrize("h, w", [(40, 40), (37, 50)])
def test_distance_crop_boxes_in_distinct_quadrants_without_overlap(h, w):
    boxes = sample_distance_boxes(3000, h, w, 0.4, gen(0), "cpu").numpy()
    ph, pw = 2 * int(0.2 * h), 2 * int(0.2 * w)  # docs/method.md §3.2: half-size floor(0.2 H)
    pairs, tops = set(), set()
    for b1, b2 in boxes:
        for box in (b1, b2):
            assert box[2] - box[0] == pw and box[3] - box[1] == ph
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h
        q1, q2 = quadrant(b1, h, w), quadrant(b2, h, w)
        assert q1 != q2
        overlap_x = min(b1[2], b2[2]) - max(b1[0], b2[0])
        overlap_y = min(b1[3], b2[3]) - max(b1[1], b2[1])
        assert overlap_x <= 0 or overlap_y <= 0
        pairs.add((q1, q2))
        if q1 == (0, 0):
            tops.add(int(b1[1]))
    assert len(pairs) == 12  # every ordered pair of distinct quadrants occurs
    assert tops == set(range(0, h // 2 - ph + 1))  # every admissible position in the quadrant occurs


def test_distance_crop_pixels_come_from_the_boxes():
    b, h, w = 8, 40, 40
    x = coordinate_image(b, h, w)
    v1, v2, boxes = distance_crop(x, 0.4, 16, gen(3), return_boxes=True)  # patch = 16 px: no resampling
    assert torch.equal(boxes, sample_distance_boxes(b, h, w, 0.4, gen(3), "cpu"))
    for i in range(b):
        for v, (x0, y0, x1, y1) in ((v1[i], boxes[i, 0]), (v2[i], boxes[i, 1])):
            rows = torch.round(v[0] * h).long()
            cols = torch.round(v[1] * w).long()
            assert torch.equal(rows[:, 0], torch.arange(y0, y1))
            assert torch.equal(cols[0], torch.arange(x0, x1))
            assert torch.allclose(v[2], torch.full_like(v[2], i / b))  # from its own image
        # the two views share no pixel
        def pixels(v):
            rows, cols = torch.round(v[0] * h).long().flatten(), torch.round(v[1] * w).long().flatten()
            return set(zip(rows.tolist(), cols.tolist()))

        assert len(pixels(v1[i])) == 16 * 16 and not pixels(v1[i]) & pixels(v2[i])


def test_distance_crop_resize_matches_crop_then_interpolate():
    x = torch.rand(3, 3, 80, 80)
    v1, v2, boxes = distance_crop(x, 0.4, 24, gen(4), return_boxes=True)  # 32 px patches -> 24 px
    for i in range(3):
        for v, (x0, y0, x1, y1) in ((v1[i], boxes[i, 0]), (v2[i], boxes[i, 1])):
            ref = torch.nn.functional.interpolate(x[i:i + 1, :, y0:y1, x0:x1], size=(24, 24), mode="bilinear",
                                                  antialias=True, align_corners=False)[0]
            torch.testing.assert_close(v, ref)


def test_patch_size_is_floored_exactly():
    assert [patch_half_size(0.4, s) for s in (64, 40, 37, 256)] == [12, 8, 7, 51]
    assert patch_half_size(0.3, 20) == 3  # 0.3 / 2 * 20 = 2.9999999999999996 in floating point


def test_distance_crop_rejects_bad_ratio():
    with pytest.raises(ValueError, match="quadrant"):
        distance_crop(torch.rand(1, 3, 20, 20), 0.6, 8, gen(0))


# --------------------------------------------------------------------------------------------- photometric pieces


def test_jitter_ops_match_torchvision():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 9, 11)
    f = torch.tensor([0.3, 0.9, 1.4, 1.8])
    h = torch.tensor([-0.2, -0.05, 0.1, 0.2])
    for i in range(4):
        torch.testing.assert_close(adjust_brightness(x, f)[i], TF.adjust_brightness(x[i], f[i].item()))
        # torchvision's luma weights are 0.2989/0.587/0.114, ours the exact ITU-R 601 0.299
        torch.testing.assert_close(adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], f[i].item()), atol=1e-3, rtol=0)
        torch.testing.assert_close(adjust_saturation(x, f)[i], TF.adjust_saturation(x[i], f[i].item()),
                                   atol=1e-3, rtol=0)
        torch.testing.assert_close(adjust_hue(x, h)[i], TF.adjust_hue(x[i], h[i].item()), atol=1e-5, rtol=0)


def test_hsv_round_trip():
    x = torch.rand(2, 3, 8, 8)
    x[0, :, 0, 0] = 0.5  # grey pixel
    x[0, :, 0, 1] = 0.0  # black pixel
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)


def test_gaussian_blur_matches_scipy_per_sample_sigma():
    torch.manual_seed(1)
    x = torch.rand(3, 3, 12, 10)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    got = gaussian_blur(x, 3, sigma)
    for i in range(3):
        t = np.arange(-3, 4)
        k = np.exp(-t ** 2 / (2 * sigma[i].item() ** 2))
        k /= k.sum()
        # torch's 'reflect' padding (edge not repeated) is scipy's 'mirror'
        ref = ndimage.convolve1d(x[i].double().numpy(), k, axis=2, mode="mirror")
        ref = ndimage.convolve1d(ref, k, axis=1, mode="mirror")
        np.testing.assert_allclose(got[i].numpy(), ref, atol=1e-6)


def ramp(slope: float) -> torch.Tensor:
    col = torch.arange(12, dtype=torch.float32) * slope  # R = G = B = slope * x
    return col.expand(1, 3, 10, 12).clone()


def test_sobel_on_a_known_ramp():
    gray_weight = (65.738 + 129.057 + 25.064) / 256
    out = sobel(ramp(0.02), "fixed")
    expected = np.sqrt((2 * 0.02 * gray_weight) ** 2 + 1e-6)  # central difference spans 2 px, gy = 0
    inner = out[0, :, 1:-1, 1:-1]
    torch.testing.assert_close(inner, torch.full_like(inner, expected), atol=1e-6, rtol=0)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])


def test_sobel_overflow_modes():
    gray_weight = (65.738 + 129.057 + 25.064) / 256
    img = torch.zeros(1, 3, 5, 5)
    img[..., 3:] = 1.0  # a vertical step edge 0 -> 1 at column 3 ...
    img[..., 3:, :] = 1.0  # ... and a horizontal one at row 3
    fixed, faithful = sobel(img, "fixed"), sobel(img, "faithful")
    # at (2, 2): gx = gy = gray_weight -> magnitude sqrt(2) * 0.8588 = 1.2146 > 1
    mag = float(np.sqrt(2 * gray_weight ** 2 + 1e-6))
    assert mag > 1.2
    assert fixed[0, 0, 2, 2].item() == pytest.approx(1.0)
    assert faithful[0, 0, 2, 2].item() == pytest.approx((np.floor(mag * 255) % 256) / 255, abs=1e-6)
    # below 1 the faithful mode is the uint8 quantisation of the magnitude
    assert faithful[0, 0, 2, 3].item() == pytest.approx(np.floor(float(fixed[0, 0, 2, 3]) * 255) / 255, abs=1e-6)


# --------------------------------------------------------------------------------------------- photometric pipeline


@pytest.mark.parametrize("overflow", ["fixed", "faithful"])
def test_photometric_stays_in_unit_range(overflow):
    torch.manual_seed(2)
    x = torch.rand(16, 3, 32, 32)
    x[:4] = (x[:4] > 0.5).float()  # hard edges and saturated pixels
    y = photometric(x, cfg(sobel_overflow=overflow), gen(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_photometric_identity_when_all_probabilities_are_zero():
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(photometric(x, ViewConfig.from_config(OFF), gen(0)), x)


def test_per_sample_parameters_differ():
    img = torch.rand(1, 3, 64, 64).repeat(8, 1, 1, 1)  # the same image 8 times (64 px: 7-tap blur)
    y = photometric(img, ViewConfig.from_config({**OFF, "jitter_p": 1.0}), gen(1))
    assert len({round(float(v), 6) for v in y.mean(dim=(1, 2, 3))}) == 8
    y = photometric(img, ViewConfig.from_config({**OFF, "blur_p": 1.0}), gen(1))
    assert len({round(float(v), 6) for v in y[:, 0, 5, 5]}) == 8  # per-image sigma


def test_hue_jitter_rotates_hue_per_image():
    # Jitter with only hue active: each image's hue is rotated by one shift in [-0.2, 0.2], its own.
    torch.manual_seed(4)
    x = 0.1 + 0.8 * torch.rand(6, 3, 8, 8)
    c = ViewConfig.from_config({**OFF, "jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0})
    y = photometric(x, c, gen(3))
    h_in, h_out = rgb_to_hsv(x)[:, 0], rgb_to_hsv(y)[:, 0]
    shift = torch.remainder(h_out - h_in + 0.5, 1.0) - 0.5  # circular difference in (-0.5, 0.5]
    per_image = shift.flatten(1).median(dim=1).values
    torch.testing.assert_close(shift, per_image[:, None, None].expand_as(shift), atol=1e-4, rtol=0)
    assert per_image.abs().max() <= 0.2 + 1e-6
    assert len({round(float(v), 4) for v in per_image}) == 6
    torch.testing.assert_close(rgb_to_hsv(y)[:, 1:], rgb_to_hsv(x)[:, 1:], atol=1e-5, rtol=0)


def test_grayscale_rows_have_equal_channels():
    x = torch.rand(200, 3, 8, 8)
    y = photometric(x, ViewConfig.from_config({**OFF, "grayscale_p": 0.5}), gen(2))
    grey = (y[:, 0] == y[:, 1]).all(dim=(1, 2)) & (y[:, 1] == y[:, 2]).all(dim=(1, 2))
    assert 60 < int(grey.sum()) < 140  # about half, per image
    ref = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(y[grey, 0], ref[grey])
    assert torch.equal(y[~grey], x[~grey])


def test_same_seed_same_views():
    x = torch.rand(3, 3, 48, 48)
    a = face_views(x, cfg(), 32, gen(9))
    b = face_views(x, cfg(), 32, gen(9))
    c = face_views(x, cfg(), 32, gen(10))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


# --------------------------------------------------------------------------------------------- step views


def test_face_views_shapes_and_crops():
    x = torch.rand(5, 3, 48, 48)
    v1, v2 = face_views(x, ViewConfig.from_config(OFF), 32, gen(5))
    c1, c2 = distance_crop(x, 0.4, 32, gen(5))  # photometric off: exactly the crops
    assert v1.shape == v2.shape == (5, 3, 32, 32)
    assert torch.equal(v1, c1) and torch.equal(v2, c2)


def test_pose_views_layout():
    x = torch.rand(3, 3, 32, 32)
    pos, neg = pose_views(x, 4, ViewConfig.from_config(OFF), 32, gen(0))
    assert pos.shape == (3, 2, 3, 32, 32) and neg.shape == (3, 4, 3, 32, 32)
    for i in range(3):
        for v in range(2):
            assert torch.equal(pos[i, v], x[i])
        for k in range(4):
            assert torch.equal(neg[i, k], torch.flip(x[i], dims=[-1]))  # its own flipped image
    pos, neg = pose_views(x, 4, cfg(), 16, gen(0))
    assert pos.shape == (3, 2, 3, 16, 16) and neg.shape == (3, 4, 3, 16, 16)
    assert not torch.equal(neg[0, 0], neg[0, 1])  # independent augmentations


def test_add_noise():
    x = torch.zeros(4, 3, 64, 64)
    y = add_noise(x, 0.4, gen(0))
    assert y.std().item() == pytest.approx(0.4, rel=0.03) and abs(y.mean().item()) < 0.01
    assert torch.equal(y, add_noise(x, 0.4, gen(0)))
    assert y.min() < 0  # no clamping: the noisy input leaves [0, 1]


def test_uint8_input_accepted():
    x = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    v1, _ = face_views(x, ViewConfig.from_config(OFF), 16, gen(0))
    assert v1.dtype == torch.float32 and v1.max() <= 1


def test_view_config_validation():
    with pytest.raises(ConfigError, match="views.crop_ratio"):
        cfg(crop_ratio=0.7)
    with pytest.raises(ConfigError, match="views.sobel_overflow"):
        cfg(sobel_overflow="clip")
    with pytest.raises(ConfigError, match="views.blur_sigma"):
        cfg(blur_sigma=[2.0, 1.0])
    with pytest.raises(ConfigError, match="views.grayscale_p"):
        cfg(grayscale_p=1.5)
    with pytest.raises(ConfigError, match="missing key views.hue"):
        ViewConfig.from_config({k: v for k, v in PAPER.items() if k != "hue"})
    assert dataclasses.asdict(cfg())["sobel_overflow"] == "fixed"


def test_views_ignore_autocast():
    x = torch.rand(2, 3, 64, 64)
    ref = face_views(x, cfg(), 64, gen(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = face_views(x, cfg(), 64, gen(1))
    assert all(g.dtype == torch.float32 and torch.equal(g, r) for g, r in zip(got, ref))
