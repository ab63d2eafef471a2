"""Cached-feature linear probe vs the authors' re-encode-every-epoch probe -> benchmarks/probe.json.

The authors' probes (method doc 4.1, A.1) run the frozen backbone over the whole training set in
EVERY epoch. Without augmentation the backbone outputs are identical each epoch, so pclbench encodes
once (stage 4) and trains on the cached features. This script times both on the same random images,
the same probe, the same mini-batch order and initialisation, and checks that the two final probes
are the same (max |weight difference|), then times pclbench's full validation-selected probe
(:func:`pclbench.evaluate.linear.fit_probe`, grid + refit) on the cached features.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/probe.py [--n 1000] [--width 16] [--img-size 64]
       [--epochs 3] [--batch-size 256] [--threads 0] [--device cpu] [--config config/config.yaml]
       [--out benchmarks/probe.json]
The encoder comes from ``pclbench.models.build_encoder("facecycle", width=...)``; :func:`benchmark`
takes any factory returning a module with ``forward_features(x) -> {"trunk": (B, D), ...}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import yaml

from pclbench.core.config import DEFAULT_CONFIG, from_dict
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe


@torch.no_grad()
def _encode(encoder: torch.nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    feats = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float().div_(255.0)  # (B, 3, S, S) in [0, 1]
        feats.append(encoder.forward_features(x)["trunk"])  # (B, D)
    return torch.cat(feats)


def _probe_epoch(head: torch.nn.Linear, opt: torch.optim.Optimizer, feats: torch.Tensor, y: torch.Tensor,
                 batch: int) -> None:
    # the authors' loaders are not shuffled in eval mode (4.1, A.1): fixed order
    for i in range(0, len(feats), batch):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(feats[i:i + batch]), y[i:i + batch]).backward()
        opt.step()


def benchmark(encoder_factory: Callable[[], torch.nn.Module], n: int, img_size: int, epochs: int,
              batch_size: int, device: str, probe: ProbeConfig, train: TrainConfig, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    dev = torch.device(device)
    encoder = encoder_factory().to(dev).eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, img_size, img_size), dtype=torch.uint8, generator=g).to(dev)
    y = torch.randint(0, 7, (n,), generator=g).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # pclbench: encode once, then train on the cache
    sync()
    t0 = time.perf_counter()
    cached = _encode(encoder, images, batch_size)  # (N, D)
    sync()
    t_extract = time.perf_counter() - t0
    dim = cached.shape[1]

    def new_head() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
        head = torch.nn.Linear(dim, 7).to(dev)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return head, torch.optim.Adam(head.parameters(), lr=1e-2)

    head_c, opt_c = new_head()
    t0 = time.perf_counter()
    for _ in range(epochs):
        _probe_epoch(head_c, opt_c, cached, y, batch_size)
    sync()
    t_cached_train = time.perf_counter() - t0

    # the authors: re-encode every epoch
    head_r, opt_r = new_head()
    t0 = time.perf_counter()
    for _ in range(epochs):
        feats = _encode(encoder, images, batch_size)
        _probe_epoch(head_r, opt_r, feats, y, batch_size)
    sync()
    t_reencode = time.perf_counter() - t0
    max_diff = float((head_c.weight - head_r.weight).abs().max().detach())

    # pclbench's full probe (the config's expression setting): validation grid + refit, cached features
    x_np, y_np = cached.cpu().numpy(), y.cpu().numpy()
    t0 = time.perf_counter()
    fit_probe(x_np, y_np, x_np[: n // 4], loss="ce", out_dim=7, probe=probe, train=train,
              score=lambda o, t: float((o.argmax(1) == t).mean()), higher_is_better=True, seed=seed)
    t_fit = time.perf_counter() - t0

    per_epoch_cached = t_cached_train / epochs
    per_epoch_re = t_reencode / epochs
    return {
        "n_images": n, "img_size": img_size, "feature_dim": dim, "epochs_timed": epochs,
        "batch_size": batch_size, "device": str(dev),
        "cached": {"extract_s": t_extract, "train_s": t_cached_train, "per_epoch_s": per_epoch_cached},
        "reencode": {"train_s": t_reencode, "per_epoch_s": per_epoch_re},
        "speedup_per_epoch": per_epoch_re / per_epoch_cached,
        "extrapolated_300_epochs_s": {"cached": t_extract + 300 * per_epoch_cached, "reencode": 300 * per_epoch_re},
        "final_weight_max_abs_diff": max_diff,
        "fit_probe_s": t_fit,
        "fit_probe_setting": {"probe": dataclasses.asdict(probe), "train": dataclasses.asdict(train)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="config with sections probe and tasks.expression (the probe setting timed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("probe.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pclbench.models import build_encoder

    cfg = yaml.safe_load(args.config.read_text())
    probe = from_dict(ProbeConfig, {**cfg["probe"], "device": args.device}, "probe")
    train = from_dict(TrainConfig, cfg["tasks"]["expression"]["train"], "tasks.expression.train").check(
        "tasks.expression.train")
    res = benchmark(lambda: build_encoder("facecycle", width=args.width), args.n, args.img_size, args.epochs,
                    args.batch_size, args.device, probe, train)
    res.update({"encoder": {"name": "facecycle", "width": args.width}, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "platform": platform.platform(),
                "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    text = json.dumps(res, indent=2) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
