"""Pretraining loop: one registered method on one aligned shard -> ``results/pretrain/<method>/``.

Stage 3 of docs/architecture.md. The trainer owns the data stream, the device, the optimiser (one
Adam with coupled L2 weight decay over all parameters), the per-epoch cosine schedule (method doc
2.9), logging and checkpoints; the method owns its networks, losses and optimiser steps
(:class:`pclbench.methods.base.Method`).

Sampling (method doc 3.1, A.3): the authors' VoxCeleb loader draws one random frame of a random
video per list line, every epoch anew. Here a "video" is one (subject, clip) group of the shard's
manifest: each epoch every batch stream (PCL: pfe, face, pose) takes its own shuffled draw of one
random frame per video; the epoch has ``floor(n_videos / batch_size)`` iterations (drop_last, 2.7)
and a stream with smaller batches (pose) uses only the first iterations' worth of its draw, as the
authors' ``itertools.cycle`` does.

Outputs (``out_dir``): ``checkpoint.pt`` (:mod:`pclbench.checkpoint`, also every
``checkpoint_every`` epochs), ``metrics.jsonl`` (one JSON object per iteration; streamed to
``metrics.jsonl.partial`` and renamed when the run ends), ``run.json``. A run that finds an
unfinished ``checkpoint.pt`` in ``out_dir`` resumes from it (model, optimiser, schedule, DWA
history and every RNG state).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import pandas as pd
import torch

from .checkpoint import FORMAT, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import ConfigError, from_dict
from .methods import METHODS, Method
from .models import ModelConfig
from .runinfo import write_run_info

log = logging.getLogger(__name__)

# Keys of `pretrain` that only change how a run executes, not what it computes; a run may be resumed
# with different values of them.
RUNTIME_KEYS = ("device", "num_threads", "log_every", "checkpoint_every")


@dataclass
class PretrainConfig:
    """Section ``pretrain`` (method doc 2.9, 2.10; paper values in brackets)."""

    epochs: int  # [6000]
    batch_size: int  # images per pfe / face batch and videos per iteration [256]
    img_size: int  # training input size in px; PCL needs 64 (decoder output) [64]
    lr: float  # Adam learning rate [1e-4]
    betas: list[float]  # Adam betas [0.9, 0.999] (torch defaults)
    weight_decay: float  # coupled L2 weight decay of Adam [1e-3]
    schedule: Literal["cosine", "constant"]  # cosine over epochs, stepped per epoch [cosine]
    min_lr: float  # cosine end value (eta_min) [0.0]
    seed: int  # [1234]
    device: Literal["auto", "cpu", "cuda"]
    amp: bool  # bf16 autocast of the forward passes (CUDA only) [AMP fp16 in the paper]
    num_threads: int  # torch CPU threads, 0 = torch's default
    log_every: int  # a log line every this many iterations
    checkpoint_every: int  # a checkpoint every this many epochs (and always after the last)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "img_size", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key}: must be >= 1, got {getattr(self, key)!r}")
        if not self.lr > 0:
            raise ConfigError(f"pretrain.lr: must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.min_lr < 0:
            raise ConfigError("pretrain.weight_decay and pretrain.min_lr must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"pretrain.betas: must be two numbers in [0, 1), got {self.betas!r}")
        if self.num_threads < 0:
            raise ConfigError(f"pretrain.num_threads: must be >= 0, got {self.num_threads!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PretrainConfig":
        return from_dict(cls, section, "pretrain")


# --------------------------------------------------------------------------------------------------
# data: an aligned shard, sampled one frame per video


class VideoShard:
    """An aligned shard (``images.npy`` uint8 (N, 3, S, S) + ``manifest.csv``) indexed by video."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir)
        img_path, man_path = self.dir / "images.npy", self.dir / "manifest.csv"
        for p in (img_path, man_path):
            if not p.is_file():
                raise FileNotFoundError(f"aligned shard {self.dir}: {p.name} does not exist")
        self.images = np.load(img_path, mmap_mode="r")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3 \
                or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"{img_path}: expected uint8 (N, 3, S, S), got {self.images.dtype} "
                             f"{self.images.shape}")
        man = pd.read_csv(man_path)
        missing = [c for c in ("subject", "clip", "row") if c not in man.columns]
        if missing:
            raise ValueError(f"{man_path}: missing column(s) {', '.join(missing)}")
        n = self.images.shape[0]
        rows = man["row"].to_numpy()
        if len(man) != n or not np.array_equal(np.sort(rows), np.arange(n)):
            raise ValueError(f"{man_path}: column row must hold 0..{n - 1} once each ({img_path.name} has "
                             f"{n} images, the manifest {len(man)} rows)")
        # Videos: (subject, clip) groups; stills (clip -1) form one group per subject.
        video = man.groupby(["subject", "clip"], sort=True).ngroup().to_numpy()
        order = np.argsort(video, kind="stable")
        self.rows = torch.from_numpy(rows[order].astype(np.int64))  # (N,) image rows grouped by video
        counts = np.bincount(video)
        self.counts = torch.from_numpy(counts.astype(np.int64))  # (V,)
        self.starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
        self.n_images = n
        self.n_videos = len(counts)
        self.size = int(self.images.shape[2])

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One random frame per video, in random video order: ``(V,)`` image rows."""
        perm = torch.randperm(self.n_videos, generator=generator)  # (V,)
        u = torch.rand(self.n_videos, generator=generator)  # (V,)
        counts = self.counts[perm]
        offset = torch.minimum((u * counts).long(), counts - 1)
        return self.rows[self.starts[perm] + offset]

    def epoch_batches(self, n_iter: int, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(n_iter, batch)`` image rows from as many consecutive draws as needed."""
        need = n_iter * batch
        draws, have = [], 0
        while have < need:
            draws.append(self.draw(generator))
            have += self.n_videos
        return torch.cat(draws)[:need].reshape(n_iter, batch)

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 ``(len(rows), 3, S, S)``; reads the memory-mapped file in ascending row order."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


class BatchLoader:
    """Yields each iteration's batches on the device, reading the next one in a background thread."""

    def __init__(self, shard: VideoShard, index: Mapping[str, torch.Tensor], device: torch.device):
        self.shard, self.index, self.device = shard, dict(index), device
        self.names = list(self.index)
        self.n_iter = next(iter(self.index.values())).shape[0] if self.index else 0

    def _read(self, it: int) -> torch.Tensor:
        rows = np.concatenate([self.index[k][it].numpy() for k in self.names])
        x = self.shard.gather(rows)
        return x.pin_memory() if self.device.type == "cuda" else x

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sizes = [self.index[k].shape[1] for k in self.names]
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(self._read, 0) if self.n_iter else None
            for it in range(self.n_iter):
                x = fut.result()
                if it + 1 < self.n_iter:
                    fut = pool.submit(self._read, it + 1)
                x = x.to(self.device, non_blocking=True).float().div_(255.0)  # (sum sizes, 3, S, S) in [0, 1]
                yield dict(zip(self.names, torch.split(x, sizes)))


# --------------------------------------------------------------------------------------------------
# the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("pretrain.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def _section(config: Mapping[str, Any], name: str) -> Any:
    if name not in config:
        raise ConfigError(f"missing section {name}")
    return config[name]


def _comparable(config: Mapping[str, Any], sections: tuple[str, ...]) -> dict:
    out = {s: config.get(s) for s in sections}
    out["pretrain"] = {k: v for k, v in dict(config.get("pretrain") or {}).items() if k not in RUNTIME_KEYS}
    return out


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}" if where else str(k))
        return out
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def _is_tty() -> bool:
    return sys.stderr.isatty()


def train(method: str, data_dir: Path, out_dir: Path, config: Mapping[str, Any]) -> dict:
    """Pretrain ``method`` on the aligned shard ``data_dir``; write checkpoint, metrics and run.json.

    ``config`` holds the sections ``pretrain``, ``model`` and the method's own (PCL: ``pcl``,
    ``views``). Returns a summary dict (also in run.json). Resumes an unfinished run found in
    ``out_dir``; returns at once if ``out_dir`` holds a finished run with the same config.
    """
    t_start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pcfg = PretrainConfig.from_config(_section(config, "pretrain"))
    model_cfg = ModelConfig.from_config(_section(config, "model"))
    builder = METHODS.get(method)
    device = resolve_device(pcfg.device)
    if pcfg.num_threads > 0:
        torch.set_num_threads(pcfg.num_threads)
    ckpt_path = out_dir / "checkpoint.pt"
    config_plain = json.loads(json.dumps(dict(config), default=str))  # plain containers (weights_only-safe)

    # Seeds: the global RNGs initialise the networks; `sampler` (CPU) draws the frames of each epoch;
    # `views` (training device) drives every augmentation, noise and mixup draw.
    seeds = {"init": pcfg.seed, "sampler": pcfg.seed + 1, "views": pcfg.seed + 2}
    torch.manual_seed(seeds["init"])
    np.random.seed(pcfg.seed % 2**32)
    random.seed(pcfg.seed)
    net: Method = builder(config, model_cfg, pcfg.img_size)
    method_sections = net.config_sections

    previous = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if previous is not None:
        if previous["method"] != method:
            raise ValueError(f"{ckpt_path} holds a {previous['method']!r} run, not {method!r}; use another out_dir")
        diffs = _diff(_comparable(previous["config"], method_sections), _comparable(config_plain, method_sections))
        if diffs:
            raise ValueError(f"{ckpt_path} was written with a different config ({'; '.join(diffs)}); "
                             "delete it or use another out_dir")
        if previous["finished"]:
            log.info("%s: finished run found (%d epochs); nothing to do", ckpt_path, previous["epoch"])
            return {"method": method, "checkpoint": str(ckpt_path), "epochs": previous["epoch"],
                    "iterations": previous["iteration"], "resumed": False, "already_finished": True}

    net.to(device)
    net.amp_dtype = torch.bfloat16 if (pcfg.amp and device.type == "cuda") else None
    shard = VideoShard(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = torch.Generator().manual_seed(seeds["sampler"])
    views_gen = torch.Generator(device=device).manual_seed(seeds["views"])

    info = {"method": method, "data_dir": str(data_dir), "n_images": shard.n_images,
            "n_videos": shard.n_videos, "shard_size": shard.size, "device": str(device),
            "amp_dtype": str(net.amp_dtype) if net.amp_dtype else None,
            "n_parameters": sum(p.numel() for p in net.parameters()),
            "encoder_parameters": sum(p.numel() for p in net.encoder.parameters())}

    def state(epoch: int, iteration: int, finished: bool, optimizer=None, scheduler=None, scaler=None) -> dict:
        return {"format": FORMAT, "method": method, "encoder": net.encoder.spec,
                "encoder_state": net.encoder.state_dict(), "model": net.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "extra": net.extra_state(),
                "rng": {**capture_rng_state(), "sampler": sampler.get_state(), "views": views_gen.get_state()},
                "epoch": epoch, "iteration": iteration, "finished": finished, "config": config_plain}

    if not net.trainable:
        save_checkpoint(ckpt_path, state(0, 0, True))
        _write_text_atomic(out_dir / "metrics.jsonl", "")
        summary = {**info, "epochs": 0, "iterations": 0, "checkpoint": str(ckpt_path), "resumed": False}
        write_run_info(out_dir, "pretrain", config=config_plain, seeds=seeds,
                       timings={"total": time.perf_counter() - t_start}, **summary)
        log.info("%s: wrote the untrained encoder to %s", method, ckpt_path)
        return summary

    n_iter = shard.n_videos // pcfg.batch_size
    if n_iter < 1:
        raise ValueError(f"{data_dir}: {shard.n_videos} videos (subject, clip) is fewer than "
                         f"pretrain.batch_size = {pcfg.batch_size}: an epoch would have no iteration")
    streams = net.batch_sizes(pcfg.batch_size)
    optimizer = torch.optim.Adam(net.parameter_groups(), lr=pcfg.lr, betas=tuple(pcfg.betas),
                                 weight_decay=pcfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=pcfg.epochs, eta_min=pcfg.min_lr)
                 if pcfg.schedule == "cosine" else None)
    # bf16 autocast needs no loss scaling; the scaler stays disabled (kept for an fp16 option).
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    start_epoch, iteration = 1, 0
    partial = out_dir / "metrics.jsonl.partial"
    if previous is not None:
        net.load_state_dict(previous["model"])
        optimizer.load_state_dict(previous["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(previous["scheduler"])
        scaler.load_state_dict(previous["scaler"])
        net.load_extra_state(previous["extra"])
        restore_rng_state(previous["rng"])
        sampler.set_state(previous["rng"]["sampler"])
        views_gen.set_state(previous["rng"]["views"])
        start_epoch, iteration = previous["epoch"] + 1, previous["iteration"]
        _truncate_metrics(partial, iteration)
        log.info("resuming %s from %s at epoch %d (iteration %d)", method, ckpt_path, start_epoch, iteration)
    else:
        partial.unlink(missing_ok=True)

    total_iter = (pcfg.epochs - start_epoch + 1) * n_iter
    log.info("pretraining %s on %s: %d images, %d videos, %d epochs x %d iterations, device %s, streams %s",
             method, data_dir, shard.n_images, shard.n_videos, pcfg.epochs, n_iter, device, streams)
    pbar = _progress(total_iter)
    t_train = time.perf_counter()
    t_log, it_log = t_train, 0
    last_means: dict[str, float] = {}
    net.train()
    with open(partial, "a") as mfh:
        for epoch in range(start_epoch, pcfg.epochs + 1):
            index = {name: shard.epoch_batches(n_iter, size, sampler) for name, size in streams.items()}
            sums: dict[str, float] = {}
            lr = optimizer.param_groups[0]["lr"]
            t_it = time.perf_counter()
            for it, batches in enumerate(BatchLoader(shard, index, device)):
                out = net.train_iteration(batches, optimizer, scaler, epoch, views_gen)
                values = dict(zip(out, torch.stack([v.detach().float() for v in out.values()]).tolist()))
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"{method}: non-finite {', '.join(bad)} at epoch {epoch}, "
                                             f"iteration {it} ({values}); no checkpoint written for this epoch")
                now = time.perf_counter()
                iteration += 1
                rec = {"epoch": epoch, "iteration": iteration, "step": it, **values, "lr": lr,
                       "seconds": now - t_it}
                t_it = now
                mfh.write(json.dumps(rec) + "\n")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                pbar.update(1)
                if iteration % pcfg.log_every == 0:
                    rate = (iteration - it_log) / max(now - t_log, 1e-9)
                    t_log, it_log = now, iteration
                    pbar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k.startswith("loss_")})
                    if pbar.disable:
                        log.info("epoch %d/%d it %d: %s lr %.3g, %.2f it/s", epoch, pcfg.epochs, iteration,
                                 " ".join(f"{k}={v:.4g}" for k, v in values.items()), lr, rate)
            last_means = {k: v / n_iter for k, v in sums.items()}
            net.epoch_end(epoch, last_means)
            if scheduler is not None:
                scheduler.step()
            finished = epoch == pcfg.epochs
            if finished or epoch % pcfg.checkpoint_every == 0:
                mfh.flush()
                save_checkpoint(ckpt_path, state(epoch, iteration, finished, optimizer, scheduler, scaler))
    pbar.close()
    os.replace(partial, out_dir / "metrics.jsonl")
    t_end = time.perf_counter()
    n_run = total_iter
    summary = {**info, "epochs": pcfg.epochs, "iterations_per_epoch": n_iter, "iterations": iteration,
               "streams": streams, "final_epoch_means": last_means, "checkpoint": str(ckpt_path),
               "resumed": previous is not None, "resumed_from_epoch": start_epoch - 1 if previous else None}
    timings = {"total": t_end - t_start, "train": t_end - t_train,
               "seconds_per_iteration": (t_end - t_train) / max(n_run, 1)}
    write_run_info(out_dir, "pretrain", config=config_plain, seeds=seeds, timings=timings,
                   pretrain_config=asdict(pcfg), **summary)
    log.info("%s: %d iterations in %.1f s (%.3f s/it); final epoch means %s", method, n_run,
             timings["train"], timings["seconds_per_iteration"], last_means)
    return {**summary, "timings": timings}


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="pretrain", unit="it", disable=not _is_tty(), dynamic_ncols=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _truncate_metrics(partial: Path, iteration: int) -> None:
    """Keep the metrics lines of iterations <= ``iteration`` (those the checkpoint includes)."""
    if not partial.is_file():
        log.warning("%s is missing: the metrics of the epochs before the resume are lost", partial)
        return
    keep = []
    for line in partial.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the crash: everything after it is newer than the checkpoint
    _write_text_atomic(partial, "".join(line + "\n" for line in keep))
