"""Benchmark one PCL training iteration (3 optimiser steps, method doc 2.7) and each step alone.

Writes JSON: seconds per full iteration and per step (pfe / face / pose), images and encoder passes
per second, peak memory. Sizes come from config files (default config/config.yaml) with command-line
overrides, so the paper's sizes (config/paper.yaml) run on a GPU and reduced ones on a CPU:

    python benchmarks/train_step.py --config config/config.yaml --width 16 --batch 32 \
        --pose-batch 4 --negatives 16 --device cpu --out results/bench/train_step_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pclbench.config import DEFAULT_CONFIG, deep_merge  # noqa: E402
from pclbench.methods import METHODS  # noqa: E402
from pclbench.models import ModelConfig  # noqa: E402
from pclbench.train import PretrainConfig, resolve_device  # noqa: E402


def load_config(files: list[str]) -> dict:
    cfg: dict = {}
    for f in files or [str(DEFAULT_CONFIG)]:
        with open(f) as fh:
            cfg = deep_merge(cfg, yaml.safe_load(fh) or {})
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="config YAML(s), merged in order")
    ap.add_argument("--width", type=int, help="override model.width")
    ap.add_argument("--batch", type=int, help="override pretrain.batch_size (pfe and face batches)")
    ap.add_argument("--pose-batch", type=int, help="override pcl.pose_batch")
    ap.add_argument("--negatives", type=int, help="override pcl.n_negatives")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override pretrain.device")
    ap.add_argument("--amp", choices=["on", "off"], help="override pretrain.amp (bf16 autocast, CUDA only)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: pretrain.num_threads)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each measurement")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default: stdout only)")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    if args.width is not None:
        cfg["model"]["width"] = args.width
    if args.batch is not None:
        cfg["pretrain"]["batch_size"] = args.batch
    if args.pose_batch is not None:
        cfg["pcl"]["pose_batch"] = args.pose_batch
    if args.negatives is not None:
        cfg["pcl"]["n_negatives"] = args.negatives
    if args.device is not None:
        cfg["pretrain"]["device"] = args.device
    if args.amp is not None:
        cfg["pretrain"]["amp"] = args.amp == "on"
    pcfg = PretrainConfig.from_config(cfg["pretrain"])
    threads = args.threads if args.threads is not None else pcfg.num_threads
    if threads > 0:
        torch.set_num_threads(threads)
    device = resolve_device(pcfg.device)

    torch.manual_seed(pcfg.seed)
    method = METHODS.get("pcl")(cfg, ModelConfig.from_config(cfg["model"]), pcfg.img_size).to(device)
    method.amp_dtype = torch.bfloat16 if (pcfg.amp and device.type == "cuda") else None
    method.train()
    opt = torch.optim.Adam(method.parameters(), lr=pcfg.lr, betas=tuple(pcfg.betas), weight_decay=pcfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    gen = torch.Generator(device=device).manual_seed(0)
    b, p, k, s = pcfg.batch_size, method.cfg.pose_batch, method.cfg.n_negatives, pcfg.img_size
    batches = {"pfe": torch.rand(b, 3, s, s, device=device), "face": torch.rand(b, 3, s, s, device=device),
               "pose": torch.rand(p, 3, s, s, device=device)}

    def iteration():
        method.train_iteration(batches, opt, scaler, 1, gen)

    for _ in range(args.warmup):
        iteration()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = timed(iteration, device, args.repeats)
    steps = {
        "pfe": timed(lambda: method.pfe_step(batches["pfe"], opt, scaler, gen), device, args.repeats),
        "face": timed(lambda: method.face_step(batches["face"], 1.0, opt, scaler, gen), device, args.repeats),
        "pose": timed(lambda: method.pose_step(batches["pose"], 1.0, opt, scaler, gen), device, args.repeats),
    }
    med = statistics.median(it)
    images = 2 * b + p  # images drawn from the shard per iteration
    passes = 2 * b + 2 * b + p * (2 + k)  # encoder forward passes per iteration
    result = {
        "benchmark": "train_step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "amp_dtype": str(method.amp_dtype) if method.amp_dtype else None,
        "sizes": {"width": cfg["model"]["width"], "batch_size": b, "pose_batch": p, "n_negatives": k, "img_size": s,
                  "parameters": sum(q.numel() for q in method.parameters())},
        "seconds_per_iteration": {"median": med, "all": it},
        "seconds_per_step": {name: {"median": statistics.median(v), "all": v} for name, v in steps.items()},
        "images_per_second": images / med,
        "encoder_passes_per_second": passes / med,
        "peak_memory_bytes": (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "load_average": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    return result


if __name__ == "__main__":
    main()
