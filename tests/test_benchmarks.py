"""The benchmark scripts run at CI sizes and write the JSON they document; the reference (authors')
data path of benchmarks/reference_loader.py computes the views docs/method.md describes (3.1-3.4).
No timing is asserted: only keys, shapes and the arithmetic between reported numbers."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import reference_loader as ref  # noqa: E402

from pclbench.pretrain import views as V  # noqa: E402


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob(".*.tmp")), "the JSON must be written atomically (tmp + os.replace)"
    return json.loads(out.read_text())


def _check_path(d: dict, repeats: int, images: int, views: int) -> None:
    for key in ("seconds_per_iteration", "data_wait_seconds"):
        assert len(d[key]["all"]) == repeats
        assert d[key]["median"] == float(np.median(d[key]["all"]))
    med = d["seconds_per_iteration"]["median"]
    assert d["images_per_second"] == pytest.approx(images / med)
    assert d["views_per_second"] == pytest.approx(views / med)
    assert isinstance(d["peak_memory_bytes"], int) and d["peak_memory_bytes"] > 0
    assert all(w <= t for w, t in zip(d["data_wait_seconds"]["all"], d["seconds_per_iteration"]["all"]))


def test_train_step_ci_json(tmp_path):
    d = _run("train_step.py", "--ci", tmp_path=tmp_path)
    assert d["benchmark"] == "train_step" and d["ci"] is True
    assert d["device"] == "cpu" and d["threads"] == 1 and d["repeats"] == 1
    assert d["amp"] is False and d["compile"] == "off" and d["channels_last"] is False
    for key in ("device_name", "torch", "python", "platform", "cpu_count", "peak_memory_kind", "date"):
        assert key in d
    s = d["sizes"]
    assert (s["width"], s["batch_size"], s["pose_batch"], s["n_negatives"], s["img_size"]) == (4, 4, 2, 3, 64)
    # pfe + face read B frames each, pose P; encoder inputs: 2B (s, s^) + 2B (v1, v2) + P (2 + K)
    assert s["images_per_iteration"] == 2 * 4 + 2
    assert s["views_per_iteration"] == 4 * 4 + 2 * (2 + 3)
    _check_path(d["ours"], 1, s["images_per_iteration"], s["views_per_iteration"])
    r = d["reference"]
    _check_path(r, 1, s["images_per_iteration"], s["views_per_iteration"])
    assert set(d["ours"]["seconds_per_step"]) == set(r["seconds_per_step_model_only"]) == {"pfe", "face", "pose"}
    assert (r["workers"], r["loaders"], r["workers_total"]) == (1, 3, 3)
    # the warm-up drains what the loaders prepared ahead (prefetch_factor x workers batches)
    assert r["warmup"] >= r["prefetch_factor"] * r["workers"] + 1
    assert d["ratio_reference_over_ours"] == pytest.approx(
        r["seconds_per_iteration"]["median"] / d["ours"]["seconds_per_iteration"]["median"])


def test_probe_ci_json(tmp_path):
    d = _run("probe.py", "--n", "64", "--width", "4", "--epochs", "1", "--batch-size", "32", "--threads", "1",
             tmp_path=tmp_path)
    assert (d["n_images"], d["epochs_timed"], d["device"]) == (64, 1, "cpu")
    assert d["feature_dim"] == 2 * 4 * 4 * 4  # 2w channels x (64 / 16)^2
    # the cached-feature probe and the re-encoding probe are the same computation
    assert d["final_weight_max_abs_diff"] < 1e-5
    assert d["speedup_per_epoch"] == pytest.approx(d["reencode"]["per_epoch_s"] / d["cached"]["per_epoch_s"])


# --------------------------------------------------------------------------------------------------
# the reference (authors') augmentations


def _coord_image(h: int, w: int) -> Image.Image:
    """R = column, G = row: every pixel says where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8))


def test_distance_crop_patches_lie_in_two_different_quadrants():
    random.seed(0)
    h, w = 60, 80
    crop = ref.DistanceCrop(0.4)
    seen = set()
    for _ in range(50):
        quads = []
        for patch in crop(_coord_image(h, w)):
            a = np.asarray(patch)
            assert a.shape == (2 * 12, 2 * 16, 3)  # floor(0.2 * 60) = 12, floor(0.2 * 80) = 16
            x0, y0 = int(a[0, 0, 0]), int(a[0, 0, 1])
            # a contiguous window of the source
            assert np.array_equal(a[..., 0], np.broadcast_to(np.arange(x0, x0 + 32), (24, 32)))
            assert np.array_equal(a[..., 1], np.broadcast_to(np.arange(y0, y0 + 24)[:, None], (24, 32)))
            qy, qx = int(y0 >= h // 2), int(x0 >= w // 2)
            # fully inside its quadrant
            assert y0 + 24 <= (h // 2 if qy == 0 else h) and x0 + 32 <= (w // 2 if qx == 0 else w)
            quads.append((qy, qx))
        assert quads[0] != quads[1]
        seen.add(tuple(sorted(quads)))
    assert len(seen) == 6  # all C(4, 2) quadrant pairs occur


def test_sobel_matches_closed_form_and_wraps_like_to_pil():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    x = a.astype(np.float64) / 255.0
    gray = (65.738 * x[..., 0] + 129.057 * x[..., 1] + 25.064 * x[..., 2]) / 256.0
    pad = np.pad(gray, 1)  # zero padding
    gx = pad[1:-1, 2:] - pad[1:-1, :-2]
    gy = pad[2:, 1:-1] - pad[:-2, 1:-1]
    mag = np.sqrt(gx ** 2 + gy ** 2 + 1e-6)
    want_fixed = np.floor(np.clip(mag, 0, 1) * 255)
    want_faithful = np.floor(mag * 255) % 256
    got_fixed = np.asarray(ref.Sobel("fixed")(Image.fromarray(a))).astype(np.float64)
    got_faithful = np.asarray(ref.Sobel("faithful")(Image.fromarray(a))).astype(np.float64)
    for got, want in ((got_fixed, want_fixed), (got_faithful, want_faithful)):
        assert got.shape == (9, 11, 3) and np.array_equal(got[..., 0], got[..., 2])
        # float32 vs float64 can move a value across an integer boundary
        assert np.abs(got[..., 0] - want).max() <= 1


def test_gaussian_blur_matches_the_on_device_blur():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.random.seed(3)
    sigma = np.random.uniform(0.1, 2.0)
    np.random.seed(3)  # the transform draws the same sigma
    got = np.asarray(ref.GaussianBlur(6, (0.1, 2.0))(Image.fromarray(a))).astype(np.float64)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255.0
    want = V.gaussian_blur(x, 3, torch.tensor([sigma], dtype=torch.float64))[0].permute(1, 2, 0).numpy()
    assert np.abs(got - np.floor(want * 255)).max() <= 1


def test_reference_loader_batches(tmp_path):
    torch.manual_seed(0)
    cfg = V.ViewConfig(crop_ratio=0.4, jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                       grayscale_p=0.2, blur_p=0.8, blur_kernel_fraction=0.1, blur_sigma=[0.1, 2.0], sobel_p=0.6,
                       sobel_overflow="faithful")
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 40, 40), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    index = {"pfe": torch.tensor([[0, 1, 2], [3, 4, 5]]), "face": torch.tensor([[5, 4, 3], [2, 1, 0]]),
             "pose": torch.tensor([[1, 2], [3, 4]])}
    loader = ref.ReferenceLoader(tmp_path / "images.npy", index, cfg, 16, n_neg=3, workers=0, pin_memory=False)
    got = list(loader)
    assert len(got) == len(loader) == 2
    for it, batch in enumerate(got):
        normal, flip = batch["pfe"]
        assert normal.shape == flip.shape == (3, 3, 16, 16)
        # PfeDB: resized frame and its flip (3.1), independent of any random draw
        src = torch.from_numpy(images[index["pfe"][it].numpy()])
        want = torch.stack([ref.T.ToTensor()(ref.T.Resize((16, 16))(Image.fromarray(i.permute(1, 2, 0).numpy())))
                            for i in src])
        assert torch.equal(normal, want) and torch.equal(flip, want.flip(-1))
        v1, v2 = batch["face"]
        assert v1.shape == v2.shape == (3, 3, 16, 16)
        pos, neg = batch["pose"]
        assert pos.shape == (2, 2, 3, 16, 16) and neg.shape == (2, 3, 3, 16, 16)
        for t in (v1, v2, pos, neg):
            assert t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    with pytest.raises(ValueError, match="lacks stream"):
        ref.ReferenceLoader(tmp_path / "images.npy", {"pfe": index["pfe"]}, cfg, 16, 3, 0, False)


def test_align_fan_ci_json(tmp_path):
    """benchmarks/align.py --mode fan --ci: our batched FAN path and face-alignment's per-image API on the
    same random-weight network, faces and boxes; only the arithmetic between reported numbers is checked."""
    pytest.importorskip("face_alignment")
    pytest.importorskip("menpo")
    d = _run("align.py", "--mode", "fan", "--ci", "--fan-random-weights", tmp_path=tmp_path)
    assert d["benchmark"] == "align_fan" and d["ci"] is True and d["device"] == "cpu" and d["threads"] == 1
    assert (d["n_faces"], d["batch_size"], d["flip_input"]) == (4, 4, False)
    for path in ("ours", "reference"):
        assert d[path]["faces_per_s"] == pytest.approx(d["n_faces"] / d[path]["seconds"], rel=1e-2)
    assert d["speedup"] == pytest.approx(d["reference"]["seconds"] / d["ours"]["seconds"], rel=1e-2)
    # same crops and network: the two paths differ by the package's integer truncation / crop-centre
    # convention only (1.5 px + size/128 at most; the 224 px frames have ~125 px face boxes)
    assert d["max_abs_landmark_diff_px"] < 1.5 + 2 * 125 / 128
    assert "random" in d["weights"]
