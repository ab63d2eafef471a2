"""Benchmark one PCL training iteration (3 optimiser steps, method doc 2.7), fed by two data paths.

- ``ours``: pclbench's path: a uint8 memmap shard read by :class:`pclbench.pretrain.stream.BatchLoader` (one
  background thread), views computed on the training device by ``pclbench.pretrain.views`` inside the steps.
- ``reference``: the authors' path (method doc 3.1-3.4): per-image PIL augmentation in torch
  DataLoader workers (``benchmarks/reference_loader.py``), three loaders with ``--workers`` workers
  each, reading the SAME shard rows; the finished views are copied to the device and fed to the same
  steps (the on-device view functions are swapped for the precomputed views, nothing else changes).

Writes JSON: seconds per full iteration (both paths) and their ratio reference / ours, seconds per
step (pfe / face / pose; ours with on-device views, and the model alone with precomputed views),
images/s, views/s, time waiting for data, peak memory (CUDA max allocated on a GPU, process max RSS
on a CPU), and the settings (device, torch, sizes, threads, amp, channels_last, compile, repeats,
loader workers). Sizes come from config files (default config/config.yaml) with command-line
overrides. The paper's shapes (64 px; pfe and face steps on 256 images; pose step on 10 x (2 + 100)):

    python benchmarks/train_step.py --config config/config.yaml --config config/paper.yaml \
        --device cuda --channels-last --workers 6 --out $OUT/train_step.json

Reduced sizes on a CPU:

    python benchmarks/train_step.py --width 16 --batch 32 --pose-batch 4 --negatives 16 --device cpu \
        --workers 2 --out /tmp/train_step_cpu.json

``--ci``: tiny sizes and 1 repeat, to check that the script runs (tests/test_benchmarks.py).
Timed regions are bracketed by ``torch.cuda.synchronize``; nothing syncs inside a step.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pclbench.pretrain.methods.pcl as pcl_module  # noqa: E402
from pclbench.core.config import DEFAULT_CONFIG, deep_merge  # noqa: E402
from pclbench.pretrain.methods import METHODS  # noqa: E402
from pclbench.models import ModelConfig  # noqa: E402
from pclbench.core.device import resolve_device  # noqa: E402
from pclbench.pretrain.stream import BatchLoader, VideoShard  # noqa: E402
from pclbench.pretrain.trainer import PretrainConfig  # noqa: E402
from reference_loader import ReferenceLoader  # noqa: E402

# --ci: every size as small as the model allows (img_size stays 64: the decoder's output, 1.5)
CI_SIZES = {"width": 4, "batch": 4, "pose_batch": 2, "negatives": 3, "workers": 1, "threads": 1,
            "repeats": 1, "warmup": 1, "device": "cpu", "shard_videos": 8}


def load_config(files: list[str]) -> dict:
    cfg: dict = {}
    for f in files or [str(DEFAULT_CONFIG)]:
        with open(f) as fh:
            cfg = deep_merge(cfg, yaml.safe_load(fh) or {})
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "all": values}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """CUDA max allocated since the last reset, or this process's max RSS (monotonic: a CPU phase's
    figure includes the phases before it)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_shard(out: Path, n_videos: int, frames: int, size: int, seed: int) -> Path:
    """A shard in pclbench's aligned format (``images.npy`` uint8 (N, 3, S, S), ``landmarks.npy`` + ``manifest.csv``)
    with ``n_videos`` videos of ``frames`` frames of random pixels (augmentation cost does not depend
    on the content)."""
    out.mkdir(parents=True, exist_ok=True)
    n = n_videos * frames
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    images[:] = rng.integers(0, 256, size=images.shape, dtype=np.uint8)
    images.flush()
    del images
    np.save(out / "landmarks.npy", np.zeros((n, 68, 2), dtype=np.float32))  # open_shard checks it; unused here
    rows = np.arange(n)
    pd.DataFrame({"subject": rows // frames, "clip": 0, "row": rows}).to_csv(out / "manifest.csv", index=False)
    return out


class PrecomputedViews:
    """Feeds precomputed views to PCL's steps: while active, ``pclbench.pretrain.methods.pcl.apply_face_views`` /
    ``apply_pose_views`` return ``self.face`` / ``self.pose`` instead of computing views on the device
    (the steps still draw the views' random parameters: a few (N,) vectors, negligible).
    ``calls`` counts the swaps, so a change in pcl.py that bypasses them is detected, not mis-timed."""

    def __init__(self):
        self.face: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pose: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = {"face": 0, "pose": 0}

    def _face(self, x, draws, cfg, out_size):
        self.calls["face"] += 1
        return self.face

    def _pose(self, x, n_neg, draws, cfg, out_size):
        self.calls["pose"] += 1
        return self.pose

    @contextlib.contextmanager
    def active(self) -> Iterator["PrecomputedViews"]:
        with mock.patch.object(pcl_module, "apply_face_views", self._face), \
                mock.patch.object(pcl_module, "apply_pose_views", self._pose):
            yield self

    def check(self, expected: int) -> None:
        if self.calls != {"face": expected, "pose": expected}:
            raise RuntimeError(f"reference path: PCL's steps called the view functions {self.calls} times, "
                               f"expected {expected} each: pclbench.pretrain.methods.pcl no longer calls apply_face_views / "
                               "apply_pose_views by module name; update PrecomputedViews in benchmarks/train_step.py")


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def reference_batches(raw: dict, device: torch.device, channels_last: bool) -> tuple[dict, tuple, tuple]:
    """A ReferenceLoader item on the device -> (train_iteration batches, face views, pose views).
    The pfe batch is the normal image; pfe_step flips it on the device (the authors' loader also
    delivers the flip: it is copied to the device too, so the transfer is counted)."""
    normal, flip = (to_device(t, device, channels_last) for t in raw["pfe"])
    v1, v2 = (to_device(t, device, channels_last) for t in raw["face"])
    pos, neg = (t.to(device, non_blocking=True) for t in raw["pose"])
    del flip
    return {"pfe": normal, "face": v1, "pose": pos[:, 0]}, (v1, v2), (pos, neg)


def profile_iterations(method, batches: dict, opt, scaler, gen, device: torch.device, out: Path,
                       n: int = 2, top: int = 25) -> list[dict]:
    """torch.profiler over ``n`` full iterations on fixed batches (not timed: the profiler adds
    overhead). Writes the operator table to ``out``; returns the ``top`` operators by self time on
    the device (CPU time on a CPU), in ms per iteration."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            with record_function("step_pfe"):
                method.pfe_step(batches["pfe"], opt, scaler, gen)
            with record_function("step_face"):
                method.face_step(batches["face"], 1.0, opt, scaler, gen)
            with record_function("step_pose"):
                method.pose_step(batches["pose"], 1.0, opt, scaler, gen)
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=60)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_iteration": getattr(e, key) / 1e3 / n, "calls_per_iteration": e.count / n}
            for e in rows]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="config YAML(s), merged in order")
    ap.add_argument("--ci", action="store_true", help=f"tiny sizes, 1 repeat, CPU: {CI_SIZES}")
    ap.add_argument("--width", type=int, help="override model.width")
    ap.add_argument("--batch", type=int, help="override pretrain.batch_size (pfe and face batches)")
    ap.add_argument("--pose-batch", type=int, help="override pcl.pose_batch")
    ap.add_argument("--negatives", type=int, help="override pcl.n_negatives")
    ap.add_argument("--shard-size", type=int, help="side of the shard's images in px (default pretrain.img_size)")
    ap.add_argument("--shard-videos", type=int, help="videos in the temporary shard (default 2 x batch)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override pretrain.device")
    ap.add_argument("--amp", choices=["on", "off"], help="override pretrain.amp (bf16 autocast, CUDA only)")
    ap.add_argument("--channels-last", action="store_true", help="model and 4-d inputs in channels_last")
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="torch.compile the networks the steps call (Method.compile_modules) with this mode "
                         "(default: 'default'; e.g. reduce-overhead for CUDA graphs)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: pretrain.num_threads)")
    ap.add_argument("--workers", type=int, help="DataLoader workers per reference loader (default 6: the "
                                                "authors' num_workers = num_threads, 2.10, 3.4)")
    ap.add_argument("--no-reference", action="store_true", help="time pclbench's data path only")
    ap.add_argument("--warmup", type=int, help="untimed iterations first (default 1)")
    ap.add_argument("--repeats", type=int, help="timed repetitions of each measurement (default 3)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default: stdout only)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also run torch.profiler over 2 iterations of our path and write its operator table "
                         "(sorted by device self time) to this text file; the top operators go into the JSON")
    args = ap.parse_args(argv)
    if args.ci:
        for key, value in CI_SIZES.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    warmup = 1 if args.warmup is None else args.warmup
    repeats = 3 if args.repeats is None else args.repeats
    workers = 6 if args.workers is None else args.workers
    if repeats < 1 or warmup < 0 or workers < 0:
        raise SystemExit(f"train_step: need --repeats >= 1, --warmup >= 0, --workers >= 0 "
                         f"(got {repeats}, {warmup}, {workers})")

    cfg = load_config(args.config)
    for arg, (section, key) in {"width": ("model", "width"), "batch": ("pretrain", "batch_size"),
                                "pose_batch": ("pcl", "pose_batch"), "negatives": ("pcl", "n_negatives"),
                                "device": ("pretrain", "device")}.items():
        if getattr(args, arg) is not None:
            cfg[section][key] = getattr(args, arg)
    if args.amp is not None:
        cfg["pretrain"]["amp"] = args.amp == "on"
    pcfg = PretrainConfig.from_config(cfg["pretrain"])
    threads = args.threads if args.threads is not None else pcfg.num_threads
    if threads > 0:
        torch.set_num_threads(threads)
    device = resolve_device(pcfg.device, "pretrain.device")
    shard_size = args.shard_size or pcfg.img_size

    torch.manual_seed(pcfg.seed)
    method = METHODS.get("pcl")(cfg, ModelConfig.from_config(cfg["model"]), pcfg.img_size).to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    method.amp_dtype = torch.bfloat16 if (pcfg.amp and device.type == "cuda") else None
    if args.compile:
        method.compile_modules(mode=args.compile)
    method.train()
    # as pclbench.pretrain.trainer: the fused (single-kernel) Adam on CUDA
    opt = torch.optim.Adam(method.parameters(), lr=pcfg.lr, betas=tuple(pcfg.betas), weight_decay=pcfg.weight_decay,
                           fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    gen = torch.Generator(device=device).manual_seed(0)
    if set(method.batch_sizes(pcfg.batch_size)) != {"pfe", "face", "pose"}:
        raise SystemExit("train_step: times the full PCL iteration (pfe, face, pose steps); the config's "
                         f"pcl.ablation switches a step off ({method.batch_sizes(pcfg.batch_size)})")
    b, p, k, s = pcfg.batch_size, method.cfg.pose_batch, method.cfg.n_negatives, pcfg.img_size
    images_per_it = 2 * b + p  # frames read from the shard per iteration
    views_per_it = 2 * b + 2 * b + p * (2 + k)  # encoder inputs per iteration (pfe s, s^; face v1, v2; pose)

    def iteration(batches: dict) -> None:
        method.train_iteration(batches, opt, scaler, 1, gen)

    def run_path(loader, prepare: Callable[[dict], dict], n_warm: int, after_first=None) -> dict:
        """Iterations fed by ``loader``: ``n_warm`` untimed, then ``repeats`` timed, each from asking
        for the batch to the end of its three steps; also the time spent waiting for the batch."""
        it = iter(loader)
        times, waits = [], []
        for i in range(n_warm + repeats):
            sync(device)
            t0 = time.perf_counter()
            batches = prepare(next(it))
            t1 = time.perf_counter()
            iteration(batches)
            sync(device)
            t2 = time.perf_counter()
            if i == 0 and after_first is not None:
                after_first()
            if i >= n_warm:
                times.append(t2 - t0)
                waits.append(t1 - t0)
        for _ in it:  # drain, so worker processes end before their RSS is read
            pass
        med = statistics.median(times)
        return {"seconds_per_iteration": summary(times), "data_wait_seconds": summary(waits),
                "images_per_second": images_per_it / med, "views_per_second": views_per_it / med}

    with tempfile.TemporaryDirectory(prefix="pclbench_train_step_") as tmp:
        n_videos = args.shard_videos or max(2 * b, p)
        shard = VideoShard(make_shard(Path(tmp) / "shard", n_videos, 2, shard_size, pcfg.seed))
        sampler = torch.Generator().manual_seed(pcfg.seed + 1)
        streams = method.batch_sizes(b)

        def index(n_iter: int) -> dict:
            return {name: shard.epoch_batches(n_iter, size, sampler) for name, size in streams.items()}

        # --- ours: memmap shard -> BatchLoader -> on-device views inside the steps
        def prepare_ours(batches: dict) -> dict:
            if args.channels_last:
                return {n: x.contiguous(memory_format=torch.channels_last) for n, x in batches.items()}
            return batches

        reset_peak(device)
        ours = run_path(BatchLoader(shard, index(warmup + repeats), device), prepare_ours, warmup)
        fixed = prepare_ours(next(iter(BatchLoader(shard, index(1), device))))
        ours["seconds_per_step"] = {
            "pfe": summary(timed(lambda: method.pfe_step(fixed["pfe"], opt, scaler, gen), device, repeats)),
            "face": summary(timed(lambda: method.face_step(fixed["face"], 1.0, opt, scaler, gen), device, repeats)),
            "pose": summary(timed(lambda: method.pose_step(fixed["pose"], 1.0, opt, scaler, gen), device, repeats)),
        }
        ours["peak_memory_bytes"] = peak_memory(device)
        if args.profile is not None:
            ours["profile_top_ops"] = profile_iterations(method, fixed, opt, scaler, gen, device, args.profile)
        ours["data_path"] = ("uint8 memmap shard -> BatchLoader (1 prefetch thread, pinned copy) -> "
                             "on-device batched views (pclbench.pretrain.views)")

        reference = None
        if not args.no_reference:
            pin = device.type == "cuda"
            feed = PrecomputedViews()
            single = ReferenceLoader(shard.dir / "images.npy", index(1), method.views, s, k, workers, pin)
            # The loaders prepare up to prefetch_factor x workers batches ahead; the warm-up consumes
            # that many so the timed iterations see the loaders' steady state, not a full buffer.
            ref_warmup = max(warmup, single.batches_in_flight() + 1)
            loader = ReferenceLoader(shard.dir / "images.npy", index(ref_warmup + repeats), method.views, s, k,
                                     workers, pin, seed=pcfg.seed)

            def prepare_ref(raw: dict) -> dict:
                batches, feed.face, feed.pose = reference_batches(raw, device, args.channels_last)
                return batches

            reset_peak(device)
            with feed.active():
                reference = run_path(loader, prepare_ref, ref_warmup, after_first=lambda: feed.check(1))
                fixed_batches, feed.face, feed.pose = reference_batches(next(iter(single)), device,
                                                                        args.channels_last)
                reference["seconds_per_step_model_only"] = {
                    "pfe": summary(timed(lambda: method.pfe_step(fixed_batches["pfe"], opt, scaler, gen),
                                         device, repeats)),
                    "face": summary(timed(lambda: method.face_step(fixed_batches["face"], 1.0, opt, scaler, gen),
                                          device, repeats)),
                    "pose": summary(timed(lambda: method.pose_step(fixed_batches["pose"], 1.0, opt, scaler, gen),
                                          device, repeats)),
                }
            reference["peak_memory_bytes"] = peak_memory(device)
            reference["workers_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            reference.update({
                "workers": workers, "loaders": 3, "workers_total": 3 * workers,
                "prefetch_factor": loader.prefetch_factor, "warmup": ref_warmup,
                "data_path": ("uint8 memmap shard -> per-image PIL pipeline in DataLoader workers "
                              "(benchmarks/reference_loader.py; no JPEG decode, so a lower bound on the "
                              "authors' data cost) -> device"),
            })

    med_ours = ours["seconds_per_iteration"]["median"]
    result = {
        "benchmark": "train_step",
        "ci": bool(args.ci),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                                          or platform.machine()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "amp": method.amp_dtype is not None,
        "amp_dtype": str(method.amp_dtype) if method.amp_dtype else None,
        "channels_last": bool(args.channels_last),
        "compile": args.compile or "off",
        "warmup": warmup,
        "repeats": repeats,
        "sizes": {"width": cfg["model"]["width"], "batch_size": b, "pose_batch": p, "n_negatives": k,
                  "img_size": s, "shard_size": shard_size, "shard_videos": n_videos, "shard_images": 2 * n_videos,
                  "images_per_iteration": images_per_it, "views_per_iteration": views_per_it,
                  "parameters": sum(q.numel() for q in method.parameters())},
        "peak_memory_kind": ("cuda max_memory_allocated, reset per path" if device.type == "cuda"
                             else "process max RSS (monotonic over the run)"),
        "ours": ours,
        "reference": reference,
        "ratio_reference_over_ours": (reference["seconds_per_iteration"]["median"] / med_ours
                                      if reference is not None else None),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp_out.write_text(text + "\n")
        os.replace(tmp_out, args.out)
    return result


if __name__ == "__main__":
    main()
