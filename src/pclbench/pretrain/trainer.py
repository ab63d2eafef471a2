"""Pretraining loop: one registered method on one aligned shard -> ``results/pretrain/<method>/``.

Stage 3 of docs/architecture.md. The trainer owns the data stream, the device, the optimiser (one
Adam with coupled L2 weight decay over all parameters), the per-epoch cosine schedule
(docs/method.md §2.9), logging and checkpoints; the method owns its networks, losses and optimiser steps
(:class:`pclbench.pretrain.methods.base.Method`).

Sampling (docs/method.md §3.1, 3.9, A.3; authors' data_process/pfedb.py ``get_vox_image``): the authors'
VoxCeleb loader reads one directory per line of its data list, lists that directory's
subdirectories, picks one at random, then picks one frame file in it at random, every epoch anew.
``pretrain.epoch_unit`` says what one pass (one epoch) goes over:

* ``clips``: one random frame per (subject, clip) group of the shard's manifest (a VoxCeleb clip is
  one utterance), so an epoch has ``floor(n_clips / batch_size)`` iterations.
* ``identities``: the authors' unit. Their list has one line per IDENTITY directory (docs/method.md §2.7,
  3.9: ``vox_train_list_remove_id.txt`` under ``processed_align/<identity>/<video>/<frames>``), so
  each epoch draws one frame per identity: a clip of that identity uniformly at random, then a frame
  of that clip uniformly at random (the two ``random.choice`` calls; the list itself is not released,
  so whether their second level was the YouTube video or the utterance is unknown: here it is the
  manifest's clip). An epoch has ``floor(n_identities / batch_size)`` iterations (main.py's
  DataLoaders use drop_last=True, docs/method.md §2.7): 4 for VoxCeleb1 dev (1,211 identities) and 23 for
  VoxCeleb2 dev (5,994) at batch 256, against 580 and 4,265 with ``clips`` (148,642 and 1,092,009
  utterances). The per-epoch cosine schedule and DWA's per-epoch loss means follow the unit.

Each epoch every batch stream (PCL: pfe, face, pose) takes its own shuffled draw, and a stream with
smaller batches (pose) uses only the first iterations' worth of its draw, as the authors'
``itertools.cycle`` does.

Outputs (``out_dir``): ``checkpoint.pt`` (:mod:`pclbench.pretrain.checkpoint`), written once, when the
run finishes; ``metrics.jsonl`` (one JSON object per iteration; streamed to
``metrics.jsonl.partial`` and renamed when the run ends) and ``metrics.csv`` (the same columns,
for DVC plots); ``run.json``; ``swap_grid_epoch<k>.png`` every ``swap_grid_every`` epochs
(methods with a ``swap_grid`` hook, docs/method.md §2.2); ``tensorboard/`` when enabled.

Resumable state (README, "Clusters"): ``state/last.pt`` (NOT a declared Snakemake
output, so it survives a failed job) is written every ``checkpoint_every`` epochs and on
SIGTERM / SIGUSR1 (Slurm pre-emption, ``scancel --signal``, ``scontrol requeue``). On a
signal the trainer finishes the current iteration, saves the state atomically and exits with
:data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``). Inside a Slurm job it does the same by itself
``pretrain.stop_before_limit_s`` before the job's time limit (:class:`JobDeadline`: ``squeue %L``,
re-read every :data:`LIMIT_RECHECK_S`), because ``sbatch --signal=USR1@<s>`` goes to every process
of the job step (sbatch(1)), where the job-step Snakemake has no USR1 handler and dies, orphaning
the trainer. An attempt that starts with less time left than that exits 75 at once,
untouched; a trainer waits up to ``pretrain.lock_wait_s`` for the folder's lock (an orphaned
earlier attempt may still be saving) and then resumes from what it saved. Every attempt is listed in
the state and in run.json (``attempts``: resumed-from and saved-at iterations, what stopped it). The state holds model, optimiser, scheduler, grad
scaler, DWA history, every RNG state (python, numpy, torch CPU/CUDA, the sampler and the views
generators of every rank) and the position in the data order (epoch, iteration within the epoch,
the sampler state at the epoch start, the epoch's running loss sums), so a run killed at any
iteration and resumed ends with bitwise the weights of an uninterrupted run on CPU
(tests/test_resume.py). A run resumes from ``state/last.pt`` when its config matches
(``RUNTIME_KEYS`` may differ); a state written with another config is set aside as
``state/last.pt.stale`` and the run starts afresh. An unfinished ``checkpoint.pt`` of an older
pclbench is resumed too. Each save first moves the current ``last.pt`` to ``state/prev.pt`` (after
the new file is fsynced, :func:`pclbench.pretrain.checkpoint.save_checkpoint`); a ``last.pt`` (or
``checkpoint.pt``) that cannot be read, e.g. torn by a crash or a full disk, is moved to
``state/bad-<time>-<pid>/`` with a warning and the run resumes from ``prev.pt``, or from scratch if
that is unreadable too, so no bad file blocks the reruns. The output folder is locked for the whole
run (``.lock``, :func:`train`) and every attempt's log lines are appended to ``attempts.log``.
A finished run keeps ``state/final.pt`` (a hard link of ``checkpoint.pt``, see :func:`_train`).

Distributed data parallelism (torchrun / srun, :mod:`pclbench.pretrain.distributed`): every rank builds
the same networks from the shared seed, draws the same per-epoch frame order from the shared
sampler seed and takes its contiguous slice of each stream's global batch (``batch_size`` and
the method's stream sizes are GLOBAL and must divide by the world size). Gradients are averaged
over ranks right before every optimiser step (an optimiser step pre-hook: PCL makes three steps
per iteration on different submodules, and averaging the gradients that exist is exact where
DistributedDataParallel's one-backward-per-step bookkeeping is not). Logged values are averaged
over ranks each iteration, so the metrics and the DWA weights are global and equal on every rank.
Each rank's views generator is seeded ``seed + 2 + 7919 * rank`` (rank 0 = the single-process
seed). BatchNorm layers become SyncBatchNorm on CUDA (global batch statistics, as one process);
torch's SyncBatchNorm does not run on CPU, so gloo/CPU runs keep per-rank statistics. Only
rank 0 writes files.
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import pandas as pd
import torch

from pclbench.pretrain import distributed as ddp
from pclbench.pretrain.checkpoint import (FORMAT, TMP_NAME, CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from pclbench.core.config import ConfigError, from_dict
from pclbench.core.io import atomic_file, atomic_write_text
from pclbench.pretrain.methods import METHODS, Method
from pclbench.models import ModelConfig
from pclbench.core.provenance import write_run_info

log = logging.getLogger(__name__)

# Keys of `pretrain` that only change how a run executes, not what it computes; a run may be resumed
# with different values of them.
RUNTIME_KEYS = ("device", "num_threads", "log_every", "checkpoint_every", "swap_grid_every", "tensorboard",
                "dist_backend", "channels_last", "compile", "stop_before_limit_s", "lock_wait_s")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Exit status of a run stopped by SIGTERM / SIGUSR1 after saving state/last.pt: EX_TEMPFAIL of
# sysexits.h ("try again later"). A scheduler (Snakemake `retries`, a Slurm requeue) reruns the same
# command, which resumes.
EXIT_REQUEUE = 75
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# Exit status when another trainer holds the output folder's lock: EX_CANTCREAT of sysexits.h ("a
# (user specified) output file cannot be created"); not 0, so the second job is reported as failed.
EXIT_LOCKED = 73
LOCK_NAME = ".lock"
ATTEMPTS_LOG = "attempts.log"


class _ExitWithMessage(SystemExit):
    """A SystemExit with this class's exit status (``status``) that prints as its message."""

    status: int

    def __init__(self, message: str):
        super().__init__(self.status)
        self.message = message

    def __str__(self) -> str:
        return self.message


class OutputLocked(_ExitWithMessage):
    """Another process trains into the same output folder; exit status EXIT_LOCKED."""

    status = EXIT_LOCKED


class Preempted(_ExitWithMessage):
    """Raised by :func:`train` after a stop signal: the state is saved; exit status EXIT_REQUEUE."""

    status = EXIT_REQUEUE


@dataclass
class PretrainConfig:
    """Section ``pretrain`` (docs/method.md §2.9, 2.10; paper values in brackets)."""

    epochs: int  # [6000]
    epoch_unit: Literal["clips", "identities"]  # what one epoch passes over (module docstring) [identities]
    batch_size: int  # images per pfe / face batch [256]
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
    checkpoint_every: int  # resumable state/last.pt every this many epochs (checkpoint.pt at the end)
    swap_grid_every: int  # swap_grid_epoch<k>.png every this many epochs (docs/method.md §2.2); 0 = off
    tensorboard: bool  # also log per-iteration scalars to out_dir/tensorboard (needs tensorboard)
    dist_backend: Literal["auto", "nccl", "gloo"]  # torch.distributed backend; auto: nccl on CUDA
    channels_last: bool  # networks and conv inputs in channels_last memory format (CUDA only)
    compile: str  # torch.compile mode of the method's modules (COMPILE_MODES), "off" = eager
    stop_before_limit_s: int  # inside a Slurm job: save and exit 75 this long before the limit; 0 = off
    lock_wait_s: int  # wait this long for another trainer to release out_dir/.lock, then exit 73

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "img_size", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key}: must be >= 1, got {getattr(self, key)!r}")
        if self.swap_grid_every < 0:
            raise ConfigError(f"pretrain.swap_grid_every: must be >= 0 (0 = off), got {self.swap_grid_every!r}")
        if not self.lr > 0:
            raise ConfigError(f"pretrain.lr: must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.min_lr < 0:
            raise ConfigError("pretrain.weight_decay and pretrain.min_lr must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"pretrain.betas: must be two numbers in [0, 1), got {self.betas!r}")
        if self.num_threads < 0:
            raise ConfigError(f"pretrain.num_threads: must be >= 0, got {self.num_threads!r}")
        for key in ("stop_before_limit_s", "lock_wait_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"pretrain.{key}: must be >= 0 (0 = off), got {getattr(self, key)!r}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"pretrain.compile: must be one of {list(COMPILE_MODES)}, got {self.compile!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PretrainConfig":
        if section.get("compile") is False:
            # YAML 1.1 (PyYAML) reads an unquoted `compile: off` as false; `dvc exp run -S`, whose YAML
            # 1.2 writer sees no need for quotes, writes the value back that way. It means "off".
            section = {**section, "compile": "off"}
        return from_dict(cls, section, "pretrain")


# --------------------------------------------------------------------------------------------------
# data: an aligned shard, sampled one frame per video


EPOCH_UNITS = ("clips", "identities")


class VideoShard:
    """An aligned shard (``images.npy`` uint8 (N, 3, S, S) + ``manifest.csv``) indexed by video.

    ``unit`` (``pretrain.epoch_unit``): what one :meth:`draw` passes over, ``clips`` (one frame per
    (subject, clip) video) or ``identities`` (one frame per subject: a random clip of it, then a
    random frame of that clip; module docstring)."""

    def __init__(self, data_dir: Path, unit: str = "clips"):
        if unit not in EPOCH_UNITS:
            raise ValueError(f"epoch unit {unit!r} is not one of {list(EPOCH_UNITS)}")
        self.unit = unit
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
        # Subjects (epoch_unit identities): the videos are numbered in (subject, clip) order, so each
        # subject's videos are consecutive: subject p owns videos subject_starts[p] + [0, subject_clips[p]).
        subject = man.groupby("subject", sort=True).ngroup().to_numpy()
        first_row_of_video = order[np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)]
        video_subject = subject[first_row_of_video]  # (V,) non-decreasing
        clips = np.bincount(video_subject)
        self.subject_clips = torch.from_numpy(clips.astype(np.int64))  # (P,)
        self.subject_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(clips)[:-1]]).astype(np.int64))
        self.n_subjects = len(clips)

    @property
    def n_units(self) -> int:
        """Frames per :meth:`draw`: one per video (``clips``) or one per subject (``identities``)."""
        return self.n_subjects if self.unit == "identities" else self.n_videos

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One random frame per unit, in random order: ``(n_units,)`` image rows."""
        if self.unit == "identities":
            return self._draw_identities(generator)
        perm = torch.randperm(self.n_videos, generator=generator)  # (V,)
        u = torch.rand(self.n_videos, generator=generator)  # (V,)
        counts = self.counts[perm]
        offset = torch.minimum((u * counts).long(), counts - 1)
        return self.rows[self.starts[perm] + offset]

    def _draw_identities(self, generator: torch.Generator) -> torch.Tensor:
        """One frame per subject in random subject order: a uniformly random clip of the subject,
        then a uniformly random frame of that clip (pfedb.py's two ``random.choice``): ``(P,)``."""
        perm = torch.randperm(self.n_subjects, generator=generator)  # (P,)
        u_clip = torch.rand(self.n_subjects, generator=generator)  # (P,)
        u_frame = torch.rand(self.n_subjects, generator=generator)  # (P,)
        n_clips = self.subject_clips[perm]
        video = self.subject_starts[perm] + torch.minimum((u_clip * n_clips).long(), n_clips - 1)  # (P,)
        counts = self.counts[video]
        offset = torch.minimum((u_frame * counts).long(), counts - 1)
        return self.rows[self.starts[video] + offset]

    def epoch_batches(self, n_iter: int, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(n_iter, batch)`` image rows from as many consecutive draws as needed."""
        need = n_iter * batch
        draws, have = [], 0
        while have < need:
            draws.append(self.draw(generator))
            have += self.n_units
        return torch.cat(draws)[:need].reshape(n_iter, batch)

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 ``(len(rows), 3, S, S)``; reads the memory-mapped file in ascending row order."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


class BatchLoader:
    """Yields each iteration's batches on the device, reading the next one in a background thread."""

    def __init__(self, shard: VideoShard, index: Mapping[str, torch.Tensor], device: torch.device,
                 start: int = 0):
        # `start`: first iteration to yield (a mid-epoch resume skips the iterations already done).
        self.shard, self.index, self.device, self.start = shard, dict(index), device, start
        self.names = list(self.index)
        self.n_iter = next(iter(self.index.values())).shape[0] if self.index else 0

    def _read(self, it: int) -> torch.Tensor:
        rows = np.concatenate([self.index[k][it].numpy() for k in self.names])
        x = self.shard.gather(rows)
        return x.pin_memory() if self.device.type == "cuda" else x

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sizes = [self.index[k].shape[1] for k in self.names]
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(self._read, self.start) if self.start < self.n_iter else None
            for it in range(self.start, self.n_iter):
                x = fut.result()
                if it + 1 < self.n_iter:
                    fut = pool.submit(self._read, it + 1)
                x = x.to(self.device, non_blocking=True).float().div_(255.0)  # (sum sizes, 3, S, S) in [0, 1]
                yield dict(zip(self.names, torch.split(x, sizes)))


# --------------------------------------------------------------------------------------------------
# the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("pretrain.device: 'cuda' requested but CUDA is not available")
    if name == "cuda" and ddp.is_distributed():
        return torch.device("cuda", ddp.local_rank())  # one device per rank
    return torch.device(name)


def _backend(pcfg: PretrainConfig) -> str:
    if pcfg.dist_backend != "auto":
        return pcfg.dist_backend
    wants_cuda = pcfg.device == "cuda" or (pcfg.device == "auto" and torch.cuda.is_available())
    return "nccl" if wants_cuda else "gloo"


def shard_batches(index: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of every global batch: ``(n_iter, B) -> (n_iter, B / world)``.

    Every rank draws the same ``index`` (shared sampler seed), so the union over ranks of one
    iteration's slices is exactly the single-process batch, in rank order.
    """
    n_iter, b = index.shape
    if b % world:
        raise ValueError(f"a global batch of {b} images does not split over {world} ranks; "
                         "pretrain.batch_size (and the method's other stream sizes, e.g. pcl.pose_batch) "
                         "must be multiples of the world size")
    per = b // world
    return index[:, rank * per:(rank + 1) * per]


def sync_gradients(optimizer: torch.optim.Optimizer):
    """Average the gradients that exist over ranks right before every ``optimizer.step()``.

    DDP's averaging done by hand: PCL makes three optimiser steps per iteration on different
    submodules (docs/method.md §2.7), so each step averages exactly the gradients its backward produced
    (``.grad`` None is skipped: the same parameters on every rank, which run the same code).
    Returns the hook handle.
    """
    def hook(opt, args, kwargs):
        ddp.all_reduce_mean_grads_([p for g in opt.param_groups for p in g["params"]])

    return optimizer.register_step_pre_hook(hook)


# --------------------------------------------------------------------------------------------------
# the job's time limit (Slurm)

LIMIT_RECHECK_S = 60.0  # re-read the job's time left this often: `scontrol update TimeLimit=` can extend it,
# pre-emption with a GraceTime shortens it (slurm.conf(5), GraceTime: "its end time is set to the
# current time plus GraceTime")
SQUEUE_TIMEOUT_S = 20.0


def parse_time_left(text: str) -> float | None:
    """Seconds in squeue's ``%L`` ("time left for the job to execute in days-hours:minutes:seconds ...
    may be NOT_SET if not yet established or UNLIMITED for no limit", squeue(1)); None = no limit known.

    The forms are those squeue prints (SchedMD/slurm, src/squeue/print.c, ``_print_secs``):
    ``D-HH:MM:SS`` with days, ``H:MM:SS`` with hours, else ``M:SS``; ``INVALID`` for a negative time
    (a job past its limit, e.g. within OverTimeLimit): 0 here. Anything else raises ValueError.
    """
    s = text.strip()
    if s in ("UNLIMITED", "NOT_SET", "INFINITE"):
        return None
    if s == "INVALID":
        return 0.0
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        if not d.isdigit():
            raise ValueError(f"not a squeue time left: {text!r}")
        days = int(d)
    parts = s.split(":")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts) or (days and len(parts) != 3):
        raise ValueError(f"not a squeue time left: {text!r}")
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p)
    return float(days * 86400 + secs)


class JobDeadline:
    """How long the current Slurm job may still run: ``squeue -h -j <job> -o %L``, re-read every
    ``recheck_s`` seconds (monotonic clock in between, so no clock skew between nodes matters).

    ``time_left()`` is None while no limit is known (no limit, not set yet, or squeue failing before
    any answer: a warning is logged once; the last known deadline is kept when a later query fails).
    """

    def __init__(self, job_id: str, recheck_s: float | None = None, clock=time.monotonic):
        self.job_id, self.clock = str(job_id), clock
        self.recheck_s = LIMIT_RECHECK_S if recheck_s is None else recheck_s
        self._end: float | None = None  # clock() value at which the limit is reached
        self._checked: float | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "JobDeadline | None":
        """The deadline of the job in ``SLURM_JOB_ID`` (Snakemake's Slurm job step keeps it, snakemake-
        executor-plugin-slurm-jobstep ``keep_slurm``); None outside Slurm."""
        job = (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "").strip()
        return cls(job) if job.isdigit() else None

    def query(self) -> float | None:
        cmd = ["squeue", "-h", "-j", self.job_id, "-o", "%L"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
            if out.returncode != 0:
                raise RuntimeError(f"exit status {out.returncode}: {out.stderr.strip()[:300]}")
            lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
            if len(lines) != 1:
                raise RuntimeError(f"expected one line, got {out.stdout[:300]!r}")
            return parse_time_left(lines[0])
        except (OSError, subprocess.TimeoutExpired, RuntimeError, ValueError) as e:
            raise JobDeadlineError(f"`{' '.join(cmd)}` failed: {e}") from e

    def time_left(self) -> float | None:
        now = self.clock()
        if self._checked is None or now - self._checked >= self.recheck_s:
            self._checked = now
            try:
                left = self.query()
                self._end = None if left is None else now + left
            except JobDeadlineError as e:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot read the time limit of Slurm job %s (%s): %s", self.job_id, e,
                                "keeping the last known limit" if self._end is not None
                                else "no stop before the limit; a signal or the limit itself stops the run")
        return None if self._end is None else self._end - now


class JobDeadlineError(RuntimeError):
    pass


class StopFlag:
    """Set by SIGTERM / SIGUSR1 or by :meth:`request` (the time limit); the loop checks it after each
    iteration (only the main thread can install handlers: elsewhere no signal sets the flag)."""

    def __init__(self):
        self.signal: str | None = None  # what stopped the run: a signal name or a reason
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        if self.signal is None:
            self.signal = reason
            log.warning("%s: finishing the current iteration, then saving state and exiting %d", reason,
                        EXIT_REQUEUE)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        log.warning("%s received: finishing the current iteration, then saving state and exiting %d",
                    self.signal, EXIT_REQUEUE)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
    """Pretrain ``method`` on ``data_dir`` into ``out_dir`` (see :func:`_train`), guarding the folder.

    The main rank first takes an exclusive, non-blocking ``flock`` on ``out_dir/.lock`` (Linux
    flock(2): the lock belongs to the open file description and is released when the process exits
    or is killed, so a crash never leaves it stale; Python docs, ``fcntl.flock``: with ``LOCK_NB`` a
    held lock raises ``BlockingIOError``). A second trainer on the same folder waits for it up to
    ``pretrain.lock_wait_s`` (polling), then raises :class:`OutputLocked` (exit status
    :data:`EXIT_LOCKED`) before touching anything. Before that, inside a Slurm job with less than
    ``pretrain.stop_before_limit_s`` left, it raises :class:`TimeLimitNear` (exit 75). With several
    ranks, rank 0 decides and broadcasts its decision, so every rank exits with the same status
    (a wait longer than the process group's timeout would still fail the other ranks). Holding the
    lock, it removes the temporary files a killed trainer left (``.<name>.<pid>.tmp``,
    :data:`pclbench.pretrain.checkpoint.TMP_NAME`, in ``out_dir`` and ``out_dir/state``), then appends this
    attempt's log lines to ``out_dir/attempts.log`` under a header line (attempt number, time, pid,
    host): Snakemake deletes a job's ``log:`` file before every attempt (snakemake/jobs.py,
    ``Job.remove_existing_output``, called from ``Job.prepare``), this file keeps them all.
    """
    pcfg = PretrainConfig.from_config(_section(config, "pretrain"))
    ddp.init_from_env(_backend(pcfg))
    out_dir = Path(out_dir)
    if ddp.rank() != 0:
        code = ddp.broadcast_object(None)  # rank 0's start decision: 0 = go, else its exit status
        if code:
            raise SystemExit(code)
        return _train(method, data_dir, out_dir, config)
    margin = pcfg.stop_before_limit_s
    deadline = JobDeadline.from_env() if margin > 0 else None
    try:
        _check_time_left(deadline, margin)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock_out_dir(out_dir, pcfg.lock_wait_s, deadline, margin)
    except SystemExit as e:
        ddp.broadcast_object(e.code)  # the other ranks exit with the same status instead of hanging
        raise
    ddp.broadcast_object(0)
    try:
        _remove_stale_tmp(out_dir)
        with _AttemptLog(out_dir / ATTEMPTS_LOG):
            return _train(method, data_dir, out_dir, config, deadline=deadline)
    finally:
        os.close(fd)  # releases the lock (it would die with the process anyway)


class TimeLimitNear(Preempted):
    """Less than ``pretrain.stop_before_limit_s`` left in the Slurm job; exit status EXIT_REQUEUE."""


def _check_time_left(deadline: "JobDeadline | None", margin: float, when: str = "at the start") -> None:
    """Raise :class:`TimeLimitNear` when the job has less than ``margin`` seconds left: a retry started
    inside an allocation that is about to end must not touch the state (it would be killed mid-save)."""
    left = deadline.time_left() if deadline is not None else None
    if left is not None and left < margin:
        msg = (f"Slurm job {deadline.job_id} has {left:.0f} s left {when}, less than pretrain.stop_before_limit_s "
               f"= {margin}: not starting; the state is untouched and the next job resumes (exit status "
               f"{EXIT_REQUEUE})")
        log.warning("%s", msg)
        raise TimeLimitNear(msg)


LOCK_POLL_S = 1.0


def _lock_out_dir(out_dir: Path, wait_s: float = 0.0, deadline: "JobDeadline | None" = None,
                  margin: float = 0.0) -> int:
    """The descriptor of ``out_dir/.lock`` with an exclusive flock held.

    While another process holds it (e.g. the previous attempt of a signalled job, orphaned by the
    job-step Snakemake and still saving its state, README "Clusters"), waits up to ``wait_s`` seconds
    (one log line), polling every :data:`LOCK_POLL_S`, then raises :class:`OutputLocked` (exit status
    :data:`EXIT_LOCKED`); :class:`TimeLimitNear` if the job's time runs out meanwhile.
    """
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    waiting = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                waited = time.monotonic() - t0
                if waited >= wait_s:
                    msg = (f"{out_dir} is in use: {holder} holds {path}"
                           f"{f' (waited {waited:.0f} s, pretrain.lock_wait_s)' if wait_s else ''}; two trainers "
                           f"on one output folder would mix their state and metrics; wait for it or use another "
                           f"output folder (exit status {EXIT_LOCKED})")
                    log.error("%s", msg)
                    raise OutputLocked(msg) from None
                if not waiting:
                    waiting = True
                    log.warning("%s is held by %s: waiting up to %.0f s for it (an earlier attempt saving its "
                                "state?), then resuming from what it saved", path, holder, wait_s)
                _check_time_left(deadline, margin, "while waiting for the lock")
                time.sleep(min(LOCK_POLL_S, max(wait_s - waited, 0.01)))
    except BaseException:
        os.close(fd)
        raise
    if waiting:
        log.warning("%s released after %.1f s; this trainer holds it now", path, time.monotonic() - t0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _remove_stale_tmp(out_dir: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` files in ``out_dir`` and ``out_dir/state``: only a trainer holding the
    folder's lock writes them, and this one holds it now, so every one found is a killed writer's."""
    for folder in (out_dir, out_dir / "state"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
                log.warning("removing %s, a temporary file left by an earlier attempt", p)
                p.unlink(missing_ok=True)


class _AttemptLog:
    """Appends the ``pclbench`` log records of one attempt to ``path``, after a header line."""

    def __init__(self, path: Path):
        self.path = path
        self.handler: logging.Handler | None = None
        self.logger = logging.getLogger("pclbench")
        self.level = self.logger.level

    def __enter__(self) -> "_AttemptLog":
        try:
            lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
            n = 1 + sum(line.startswith("=== attempt ") for line in lines)
            with open(self.path, "a") as f:
                f.write(f"=== attempt {n}: started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, pid {os.getpid()}, "
                        f"host {socket.gethostname()}\n")
            self.handler = logging.FileHandler(self.path, mode="a")
        except OSError as e:  # a full disk must not hide the real error: this log is best effort
            log.warning("cannot write %s: %s", self.path, e)
            return self
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.handler is None:
            return
        if exc is None:
            log.info("attempt finished")
        elif isinstance(exc, SystemExit):
            log.info("attempt ended with exit status %s: %s", exc.code, exc)
        else:
            log.error("attempt failed: %s: %s", exc_type.__name__, exc)
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


def _train(method: str, data_dir: Path, out_dir: Path, config: Mapping[str, Any],
           deadline: JobDeadline | None = None) -> dict:
    """Pretrain ``method`` on the aligned shard ``data_dir``; write checkpoint, metrics and run.json.

    ``config`` holds the sections ``pretrain``, ``model`` and the method's own (PCL: ``pcl``,
    ``views``). Returns a summary dict (also in run.json). Resumes from ``state/last.pt`` (or an
    unfinished ``checkpoint.pt``) in ``out_dir``; returns at once if ``out_dir`` holds a finished
    run with the same config. Raises :class:`Preempted` (a SystemExit with status
    :data:`EXIT_REQUEUE`) after SIGTERM / SIGUSR1, once the resumable state is saved, and likewise
    ``pretrain.stop_before_limit_s`` before the Slurm job's time limit (``deadline``, rank 0 only).
    Under torchrun / srun (``WORLD_SIZE`` or ``SLURM_NTASKS`` > 1) it starts the process group itself.

    A finished run keeps a hard link of ``checkpoint.pt`` as ``state/final.pt``: if its job is
    still recorded as failed (a Slurm TIMEOUT after training finished) Snakemake deletes
    ``checkpoint.pt`` and ``metrics.csv`` and reruns the job, which then restores both from
    ``state/final.pt`` and ``metrics.jsonl`` instead of training again, provided the config and the
    pclbench source (:func:`code_fingerprint`) are unchanged.
    """
    t_start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pcfg = PretrainConfig.from_config(_section(config, "pretrain"))
    model_cfg = ModelConfig.from_config(_section(config, "model"))
    builder = METHODS.get(method)
    ddp.init_from_env(_backend(pcfg))
    rank, world = ddp.rank(), ddp.world_size()
    main = rank == 0
    device = resolve_device(pcfg.device)
    if pcfg.num_threads > 0:
        torch.set_num_threads(pcfg.num_threads)
    ckpt_path = out_dir / "checkpoint.pt"
    state_path = out_dir / "state" / "last.pt"
    config_plain = json.loads(json.dumps(dict(config), default=str))  # plain containers (weights_only-safe)
    tb_writer_cls = _tensorboard_writer_class() if pcfg.tensorboard else None

    # Seeds: the global RNGs initialise the networks (same on every rank); `sampler` (CPU) draws the
    # frames of each epoch (same on every rank); `views` (training device) drives every augmentation,
    # noise and mixup draw (one stream per rank).
    seeds = {"init": pcfg.seed, "sampler": pcfg.seed + 1, "views": pcfg.seed + 2}
    torch.manual_seed(seeds["init"])
    np.random.seed(pcfg.seed % 2**32)
    random.seed(pcfg.seed)
    net: Method = builder(config, model_cfg, pcfg.img_size)
    method_sections = net.config_sections

    def check_config(ck: dict, path: Path) -> list[str]:
        if ck["method"] != method:
            raise ValueError(f"{path} holds a {ck['method']!r} run, not {method!r}; use another out_dir")
        return _diff(_comparable(ck["config"], method_sections), _comparable(config_plain, method_sections))

    # Unreadable files (a torn write, a full disk) are set aside into state/bad-<time>/ and the run goes
    # on from the next candidate (checkpoint.pt -> state/last.pt -> state/prev.pt -> from scratch), so a
    # bad file never blocks every rerun. A readable checkpoint.pt of another format still raises.
    prev_path = state_path.with_name("prev.pt")
    bad: list[Path] = []
    code = code_fingerprint()
    final_path = state_path.with_name(FINAL_NAME)
    if main and not ckpt_path.exists() and final_path.is_file():
        _restore_finished(final_path, ckpt_path, out_dir, code, check_config)
    ddp.barrier()
    final = None
    if ckpt_path.is_file():
        try:
            final = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            if e.__cause__ is None:  # torch read it: not a torn file but not ours either
                raise
            log.warning("%s cannot be read (%s): it is set aside", ckpt_path, e)
            bad.append(ckpt_path)
    if final is not None:
        diffs = check_config(final, ckpt_path)
        if diffs:
            raise ValueError(f"{ckpt_path} was written with a different config ({'; '.join(diffs)}); "
                             "delete it or use another out_dir")
        if final["finished"]:
            log.info("%s: finished run found (%d epochs); nothing to do", ckpt_path, final["epoch"])
            return {"method": method, "checkpoint": str(ckpt_path), "epochs": final["epoch"],
                    "iterations": final["iteration"], "resumed": False, "already_finished": True}
    previous, resume_path = final, ckpt_path
    state_ck, state_src = None, None
    for cand in (state_path, prev_path):
        if not cand.is_file():
            continue
        try:
            state_ck, state_src = load_checkpoint(cand), cand
            break
        except CheckpointError as e:
            nxt = (f"falling back to {prev_path}" if cand == state_path and prev_path.is_file()
                   else "no earlier state is left: restarting from scratch")
            log.warning("%s cannot be read (%s): it is set aside; %s", cand, e, nxt)
            bad.append(cand)
    if bad:
        ddp.barrier()  # every rank has read them before rank 0 moves them
        if main:
            bad_dir = state_path.parent / f"bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            bad_dir.mkdir(parents=True, exist_ok=True)
            for p in bad:
                os.replace(p, bad_dir / p.name)
            log.warning("unreadable file(s) %s moved to %s", ", ".join(p.name for p in bad), bad_dir)
    if state_ck is not None:
        diffs = check_config(state_ck, state_src)
        if diffs:
            log.warning("%s was written with a different config (%s): set aside as %s.stale; starting afresh",
                        state_src, "; ".join(diffs), state_src.name)
            ddp.barrier()  # every rank has read it before rank 0 moves it
            if main:
                for p in (state_path, prev_path):
                    if p.is_file():
                        os.replace(p, p.with_name(p.name + ".stale"))
        else:
            previous, resume_path = state_ck, state_src
    past_attempts = list(previous.get("attempts") or []) if previous is not None else []
    this_attempt = {"attempt": len(past_attempts) + 1, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": socket.gethostname(), "pid": os.getpid(),
                    "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                    "resumed_from_iteration": previous["iteration"] if previous is not None else 0}
    if previous is not None:
        log.info("this attempt resumes from iteration %d (%s)", previous["iteration"], resume_path)
    else:
        log.info("this attempt starts from scratch (iteration 0)")

    if ddp.is_distributed() and device.type == "cuda":
        # Global batch statistics, as one process (module docstring); state_dict keys are unchanged.
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    net.amp_dtype = torch.bfloat16 if (pcfg.amp and device.type == "cuda") else None
    if pcfg.channels_last and device.type == "cuda":
        # cuDNN's NHWC kernels; convolutions then return channels_last maps whatever the input layout
        net.to(memory_format=torch.channels_last)
    if pcfg.compile != "off":
        net.compile_modules(mode=pcfg.compile)  # in place: state_dict keys and checkpoints unchanged
    shard = VideoShard(data_dir, pcfg.epoch_unit)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    sampler = torch.Generator().manual_seed(seeds["sampler"])
    views_gen = torch.Generator(device=device).manual_seed(seeds["views"] + 7919 * rank)

    info = {"method": method, "data_dir": str(data_dir), "n_images": shard.n_images,
            "n_videos": shard.n_videos, "n_subjects": shard.n_subjects, "epoch_unit": pcfg.epoch_unit,
            "shard_size": shard.size, "device": str(device),
            "world_size": world, "amp_dtype": str(net.amp_dtype) if net.amp_dtype else None,
            "channels_last": bool(pcfg.channels_last and device.type == "cuda"), "compile": pcfg.compile,
            "n_parameters": sum(p.numel() for p in net.parameters()),
            "encoder_parameters": sum(p.numel() for p in net.encoder.parameters())}

    def state(epoch: int, iteration: int, finished: bool, optimizer=None, scheduler=None, scaler=None,
              position: dict | None = None, stopped: str | None = None) -> dict:
        # Collective (all ranks must call it): every rank's views generator state goes into the file.
        views_states = ddp.all_gather_object(views_gen.get_state())
        return {"format": FORMAT, "method": method, "encoder": net.encoder.spec,
                "encoder_state": net.encoder.state_dict(), "model": net.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "extra": net.extra_state(),
                "rng": {**capture_rng_state(), "sampler": sampler.get_state(), "views": views_states[0],
                        "views_per_rank": views_states},
                "epoch": epoch, "iteration": iteration, "finished": finished, "config": config_plain,
                "world_size": world, "position": position, "code": code,
                # every attempt so far: where it resumed, where it saved, what stopped it (None: a
                # periodic save; a later attempt resuming from it means this one was killed)
                "attempts": past_attempts + [{**this_attempt, "saved_at_iteration": iteration,
                                              "stop": "finished" if finished else stopped}]}

    if not net.trainable:
        st = state(0, 0, True)
        if main:
            save_checkpoint(ckpt_path, st)
            atomic_write_text(out_dir / "metrics.jsonl", "")
            atomic_write_text(out_dir / "metrics.csv", "")
        summary = {**info, "epochs": 0, "iterations": 0, "checkpoint": str(ckpt_path), "resumed": False}
        if main:
            write_run_info(out_dir, "pretrain", config=config_plain, seeds=seeds,
                           timings={"total": time.perf_counter() - t_start}, **summary)
            log.info("%s: wrote the untrained encoder to %s", method, ckpt_path)
        ddp.barrier()
        return summary

    n_iter = shard.n_units // pcfg.batch_size  # drop_last (docs/method.md §2.7)
    if n_iter < 1:
        what = "identities (subjects)" if pcfg.epoch_unit == "identities" else "videos (subject, clip)"
        raise ValueError(f"{data_dir}: {shard.n_units} {what} is fewer than pretrain.batch_size = "
                         f"{pcfg.batch_size} (pretrain.epoch_unit {pcfg.epoch_unit}): an epoch would have no "
                         "iteration")
    streams = net.batch_sizes(pcfg.batch_size)  # GLOBAL images per iteration per stream
    bad_streams = {k: v for k, v in streams.items() if v % world}
    if bad_streams:
        raise ValueError(f"batch streams {bad_streams} do not split over {world} ranks: pretrain.batch_size "
                         "and the method's other stream sizes (e.g. pcl.pose_batch) must be multiples of the "
                         "world size")
    # fused: one CUDA kernel for the whole update instead of a few per parameter tensor (the step is
    # launch-bound at the paper's sizes); same Adam arithmetic. Not available for CPU tensors here.
    optimizer = torch.optim.Adam(net.parameter_groups(), lr=pcfg.lr, betas=tuple(pcfg.betas),
                                 weight_decay=pcfg.weight_decay, fused=device.type == "cuda")
    if ddp.is_distributed():
        sync_gradients(optimizer)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=pcfg.epochs, eta_min=pcfg.min_lr)
                 if pcfg.schedule == "cosine" else None)
    # bf16 autocast needs no loss scaling; the scaler stays disabled (kept for an fp16 option; with
    # several ranks an enabled scaler would need its inf checks all-reduced).
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    start_epoch, start_step, iteration = 1, 0, 0
    resume_sums: dict[str, float] = {}
    resume_sampler: torch.Tensor | None = None
    partial = out_dir / "metrics.jsonl.partial"
    if previous is not None:
        net.load_state_dict(previous["model"])
        optimizer.load_state_dict(previous["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(previous["scheduler"])
        scaler.load_state_dict(previous["scaler"])
        net.load_extra_state(previous["extra"])
        rng = previous["rng"]
        restore_rng_state(rng)
        sampler.set_state(rng["sampler"])
        per_rank = rng.get("views_per_rank") or [rng["views"]]
        if len(per_rank) == world:
            views_gen.set_state(per_rank[rank])
        else:
            log.warning("%s was written by %d rank(s), this run has %d: the views generators are reseeded "
                        "(the resume is not exact)", resume_path, len(per_rank), world)
        start_epoch, iteration = previous["epoch"] + 1, previous["iteration"]
        position = previous.get("position")
        if position is not None:  # stopped inside an epoch: redraw its order, skip the steps done
            start_epoch, start_step = position["epoch"], position["step"]
            resume_sampler = position["sampler"]
            resume_sums = {k: float(v) for k, v in position["sums"].items()}
        if main:
            _truncate_metrics(partial, iteration)
        log.info("resuming %s from %s at epoch %d, step %d (iteration %d)", method, resume_path,
                 start_epoch, start_step, iteration)
    elif main:
        partial.unlink(missing_ok=True)
    ddp.barrier()

    total_iter = (pcfg.epochs - start_epoch + 1) * n_iter - start_step
    log.info("pretraining %s on %s: %d images, %d videos, %d subjects, %d epochs of %s x %d iterations, device %s, "
             "streams %s, %d rank(s)", method, data_dir, shard.n_images, shard.n_videos, shard.n_subjects,
             pcfg.epochs, pcfg.epoch_unit, n_iter, device, streams, world)
    grid_rows = _swap_grid_rows(shard) if (main and pcfg.swap_grid_every and hasattr(net, "swap_grid")) else None
    tb = tb_writer_cls(str(out_dir / "tensorboard")) if (main and tb_writer_cls is not None) else None
    pbar = _progress(total_iter, enabled=main)
    t_train = time.perf_counter()
    t_log, it_log = t_train, 0
    last_means: dict[str, float] = {}
    preempted: str | None = None
    net.train()
    mfh = open(partial, "a") if main else None
    try:
        with StopFlag() as stop:
            for epoch in range(start_epoch, pcfg.epochs + 1):
                first = epoch == start_epoch
                if first and resume_sampler is not None:
                    sampler.set_state(resume_sampler)
                epoch_sampler = sampler.get_state()  # redraws this epoch's order on a mid-epoch resume
                index = {name: shard_batches(shard.epoch_batches(n_iter, size, sampler), rank, world)
                         for name, size in streams.items()}
                sums = dict(resume_sums) if first else {}
                step0 = start_step if first else 0
                lr = optimizer.param_groups[0]["lr"]
                t_it = time.perf_counter()
                for it, batches in enumerate(BatchLoader(shard, index, device, start=step0), start=step0):
                    out = net.train_iteration(batches, optimizer, scaler, epoch, views_gen)
                    if deadline is not None and stop.signal is None:
                        left = deadline.time_left()
                        if left is not None and left < pcfg.stop_before_limit_s:
                            stop.request(f"the time limit of Slurm job {deadline.job_id} ({left:.0f} s left, "
                                         f"pretrain.stop_before_limit_s = {pcfg.stop_before_limit_s})")
                    # One collective per iteration: the global means of the logged values and the stop flag.
                    flat = torch.stack([v.detach().float() for v in out.values()]
                                       + [torch.tensor(float(stop.signal is not None), device=device)])
                    if ddp.is_distributed():
                        ddp.all_reduce_mean_([flat])
                    flat = flat.tolist()
                    values = dict(zip(out, flat[:-1]))
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        raise FloatingPointError(f"{method}: non-finite {', '.join(bad)} at epoch {epoch}, "
                                                 f"iteration {it} ({values}); no checkpoint written for this epoch")
                    now = time.perf_counter()
                    iteration += 1
                    rec = {"epoch": epoch, "iteration": iteration, "step": it, **values, "lr": lr,
                           "seconds": now - t_it}
                    t_it = now
                    if mfh is not None:
                        mfh.write(json.dumps(rec) + "\n")
                    if tb is not None:
                        for k, v in values.items():
                            tb.add_scalar(k, v, iteration)
                        tb.add_scalar("lr", lr, iteration)
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    pbar.update(1)
                    if iteration % pcfg.log_every == 0:
                        rate = (iteration - it_log) / max(now - t_log, 1e-9)
                        t_log, it_log = now, iteration
                        pbar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k.startswith("loss_")})
                        if pbar.disable and main:
                            log.info("epoch %d/%d it %d: %s lr %.3g, %.2f it/s", epoch, pcfg.epochs, iteration,
                                     " ".join(f"{k}={v:.4g}" for k, v in values.items()), lr, rate)
                    if flat[-1] > 0 and it + 1 < n_iter:  # a rank was signalled: all stop here
                        preempted = stop.signal or "a stop signal on another rank"
                        pos = {"epoch": epoch, "step": it + 1, "sampler": epoch_sampler, "sums": dict(sums)}
                        st = state(epoch - 1, iteration, False, optimizer, scheduler, scaler, pos, preempted)
                        if main:
                            mfh.flush()
                            save_checkpoint(state_path, st, previous=prev_path)
                        break
                if preempted:
                    break
                last_means = {k: v / n_iter for k, v in sums.items()}
                net.epoch_end(epoch, last_means)
                if scheduler is not None:
                    scheduler.step()
                finished = epoch == pcfg.epochs
                if grid_rows is not None and epoch % pcfg.swap_grid_every == 0:
                    _write_swap_grid(net, shard, grid_rows, device, out_dir / f"swap_grid_epoch{epoch}.png")
                # `flat[-1]` (not the local flag): every rank takes the same branch (state() is collective).
                if not finished and (epoch % pcfg.checkpoint_every == 0 or flat[-1] > 0):
                    why = (stop.signal or "a stop signal on another rank") if flat[-1] > 0 else None
                    st = state(epoch, iteration, False, optimizer, scheduler, scaler, stopped=why)
                    if main:
                        mfh.flush()
                        save_checkpoint(state_path, st, previous=prev_path)
                    if flat[-1] > 0:  # signalled in the epoch's last iteration
                        preempted = stop.signal or "a stop signal on another rank"
                        break
                if finished:
                    st = state(epoch, iteration, True, optimizer, scheduler, scaler)
                    if main:
                        mfh.flush()
                        save_checkpoint(ckpt_path, st)
    finally:
        if mfh is not None:
            mfh.close()
        if tb is not None:
            tb.close()
        pbar.close()
    if preempted:
        ddp.barrier()
        raise Preempted(f"{method}: stopped by {preempted} at iteration {iteration}; resumable state in "
                        f"{state_path}; rerun the same command to resume (exit status {EXIT_REQUEUE})")
    if main:
        os.replace(partial, out_dir / "metrics.jsonl")
        write_metrics_csv(out_dir / "metrics.jsonl", out_dir / "metrics.csv")
        # The finished checkpoint.pt holds everything state/last.pt did; state/final.pt (a hard link of it)
        # outlives a deletion of checkpoint.pt by Snakemake when the job is still recorded as failed.
        _keep_final(ckpt_path, final_path)
        for p in (state_path, prev_path, state_path.with_name(state_path.name + ".stale"),
                  prev_path.with_name(prev_path.name + ".stale"), final_path.with_name(FINAL_NAME + ".stale")):
            p.unlink(missing_ok=True)
    t_end = time.perf_counter()
    n_run = total_iter
    summary = {**info, "epochs": pcfg.epochs, "iterations_per_epoch": n_iter, "iterations": iteration,
               "streams": streams, "final_epoch_means": last_means, "checkpoint": str(ckpt_path),
               "resumed": previous is not None,
               "resumed_from_epoch": (start_epoch - 1 if start_step == 0 else start_epoch) if previous else None,
               "resumed_from_iteration": (iteration - n_run) if previous else None,
               "attempts": past_attempts + [{**this_attempt, "saved_at_iteration": iteration, "stop": "finished"}]}
    timings = {"total": t_end - t_start, "train": t_end - t_train,
               "seconds_per_iteration": (t_end - t_train) / max(n_run, 1)}
    if main:
        write_run_info(out_dir, "pretrain", config=config_plain, seeds=seeds, timings=timings,
                       pretrain_config=asdict(pcfg), **summary)
    log.info("%s: %d iterations in %.1f s (%.3f s/it); final epoch means %s", method, n_run,
             timings["train"], timings["seconds_per_iteration"], last_means)
    ddp.barrier()
    return {**summary, "timings": timings}


FINAL_NAME = "final.pt"


def code_fingerprint() -> str:
    """sha256 over the pclbench package's Python sources (relative path + bytes, sorted): a finished
    run is only restored from ``state/final.pt`` by the code that trained it."""
    import hashlib

    root = Path(__file__).resolve().parents[1]  # the whole pclbench package
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` = a hard link of ``src`` (no extra disk), a copy where links fail; put in place atomically
    (:func:`pclbench.core.io.atomic_file`: its temporary is removed on error)."""
    import shutil

    with atomic_file(dst) as tmp:
        tmp.unlink()  # atomic_file made it (empty); os.link needs the name free
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)


def _keep_final(ckpt_path: Path, final_path: Path) -> None:
    """``final_path`` = a hard link of ``ckpt_path`` (:func:`_link_or_copy`), best effort."""
    try:
        _link_or_copy(ckpt_path, final_path)
    except OSError as e:  # best effort: the run itself is complete
        log.warning("cannot keep %s as %s (%s): a job recorded as failed after this point retrains", ckpt_path,
                    final_path, e)


def _restore_finished(final_path: Path, ckpt_path: Path, out_dir: Path, code: str, check_config) -> bool:
    """Put back ``checkpoint.pt`` (from ``state/final.pt``) and ``metrics.csv`` (from ``metrics.jsonl``)
    of a finished run whose declared outputs Snakemake deleted (module docstring of :func:`_train`).

    Only when the finished state holds this config and this code; otherwise ``final.pt`` is set
    aside as ``final.pt.stale`` (removed when the new run finishes) and the run trains afresh."""
    jsonl = out_dir / "metrics.jsonl"
    try:
        ck = load_checkpoint(final_path)
    except CheckpointError as e:
        why = f"it cannot be read ({e})"
    else:
        diffs = check_config(ck, final_path) if ck.get("finished") else ["not a finished run"]
        if diffs:
            why = f"its config differs ({'; '.join(diffs)})"
        elif ck.get("code") != code:
            why = "the pclbench code changed since it was trained"
        elif not jsonl.is_file():
            why = f"{jsonl.name} is missing"
        else:
            why = None
    if why is not None:
        log.warning("%s is not reused: %s; training afresh", final_path, why)
        os.replace(final_path, final_path.with_name(FINAL_NAME + ".stale"))
        return False
    _link_or_copy(final_path, ckpt_path)
    write_metrics_csv(jsonl, out_dir / "metrics.csv")
    log.warning("restored the finished run (%d iterations) from %s: its checkpoint.pt had been deleted "
                "(Snakemake removes a failed job's outputs, e.g. after a Slurm TIMEOUT that came after training "
                "finished); delete %s to train again", ck["iteration"], final_path, final_path.parent)
    return True


def write_metrics_csv(jsonl: Path, csv: Path) -> None:
    """``metrics.jsonl`` -> ``metrics.csv`` with the same columns (first-appearance order), atomically."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    text = pd.DataFrame(rows).to_csv(index=False) if rows else ""
    atomic_write_text(Path(csv), text)


def _tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's wrapper needs the `tensorboard` package
        raise ConfigError("pretrain.tensorboard is true but the tensorboard package is not installed "
                          f"({err}); `pip install tensorboard` or set pretrain.tensorboard: false") from err
    return SummaryWriter


SWAP_GRID_ROWS = 8  # images in the swap grid: the first frame of the shard's first videos


def _swap_grid_rows(shard: VideoShard) -> np.ndarray:
    """Fixed image rows for the swap grid (no random draw: the figure must not touch any RNG)."""
    n = min(SWAP_GRID_ROWS, shard.n_videos)
    return shard.rows[shard.starts[:n]].numpy()


def _write_swap_grid(net: Method, shard: VideoShard, rows: np.ndarray, device: torch.device, path: Path) -> None:
    from pclbench.report.figures import save_swap_grid

    x = shard.gather(rows).to(device).float().div_(255.0)  # (R, 3, S, S) in [0, 1]
    was_training = net.training
    net.eval()  # BatchNorm running statistics: the figure does not change the training state
    try:
        grid = net.swap_grid(x)  # (R, 6, 3, 64, 64)
    finally:
        net.train(was_training)
    save_swap_grid(grid.cpu(), path)


def _progress(total: int, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc="pretrain", unit="it", disable=not (enabled and _is_tty()), dynamic_ncols=True)


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
    atomic_write_text(partial, "".join(line + "\n" for line in keep))
