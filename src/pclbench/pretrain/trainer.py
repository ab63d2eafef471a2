"""Pretraining loop: one registered method on one aligned shard -> ``results/pretrain/<method>/``.

Stage 3 of docs/architecture.md. The trainer owns the data stream (:mod:`pclbench.pretrain.stream`:
what one epoch passes over, ``pretrain.epoch_unit``, and how each batch stream is drawn), the
device, the optimiser (one Adam with coupled L2 weight decay over all parameters), the per-epoch
cosine schedule (docs/method.md §2.9), logging and checkpoints; the method owns its networks, losses
and optimiser steps (:class:`pclbench.pretrain.methods.base.Method`).

Outputs (``out_dir``): ``checkpoint.pt`` (:mod:`pclbench.pretrain.checkpoint`), written once, when the
run finishes; ``metrics.jsonl`` (one JSON object per iteration; streamed to
``metrics.jsonl.partial`` and renamed when the run ends) and ``metrics.csv`` (the same columns,
for DVC plots), :mod:`pclbench.pretrain.metrics_log`; ``run.json``; ``swap_grid_epoch<k>.png`` every
``swap_grid_every`` epochs (methods with a ``swap_grid`` hook, docs/method.md §2.2,
:mod:`pclbench.pretrain.swap_grid`); ``tensorboard/`` when enabled.

Clusters (README, "Clusters"): the output folder is locked for the whole run and every attempt's
log lines are appended to ``attempts.log`` (:mod:`pclbench.pretrain.run_folder`, exit 73 while
another trainer holds it); SIGTERM / SIGUSR1 or the Slurm job's time limit stop the run after the
current iteration, save the resumable state and exit 75 (:mod:`pclbench.pretrain.preemption`);
``state/last.pt`` resumes the run bitwise and ``state/final.pt`` restores a finished run whose
outputs Snakemake deleted (:mod:`pclbench.pretrain.resume`). Several ranks (torchrun / srun) share
one global batch: :mod:`pclbench.pretrain.distributed`.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch

from pclbench.core.config import ConfigError, from_dict, setting
from pclbench.core.device import resolve_device
from pclbench.core.io import atomic_write_text
from pclbench.core.progress import Progress
from pclbench.core.provenance import write_run_info
from pclbench.models import ModelConfig
from pclbench.pretrain import distributed as ddp
from pclbench.pretrain.checkpoint import save_checkpoint
from pclbench.pretrain.methods import METHODS, Method
from pclbench.pretrain.metrics_log import PARTIAL_NAME, MetricsLog, tensorboard_writer_class, truncate_metrics
from pclbench.pretrain.preemption import EXIT_REQUEUE, JobDeadline, Preempted, StopFlag
from pclbench.pretrain.resume import (ConfigCheck, Position, ResumePoint, StatePaths, StateRecorder,
                                      find_resume_point, keep_final, remove_resumable_state)
from pclbench.pretrain.run_folder import guard_out_dir
from pclbench.pretrain.stream import BatchLoader, VideoShard
from pclbench.pretrain.swap_grid import swap_grid_rows, write_swap_grid

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class PretrainConfig:
    """Pretraining loop (docs/method.md section 2.9, 2.10). Paper values in the descriptions."""

    epochs: int = setting("Epochs (passes over epoch_unit). Paper 6000.", minimum=1)
    epoch_unit: Literal["clips", "identities"] = setting(
        "One epoch = one random frame per (subject, clip) video (clips) or per identity, from a random clip of "
        "it (identities, the authors' data list; pclbench.pretrain.stream). Paper identities.")
    batch_size: int = setting("Images per pfe and face batch. Paper 256.", minimum=1)
    img_size: int = setting("Training input size in px; PCL needs 64 (decoder output). Paper 64.", minimum=16)
    lr: float = setting("Adam learning rate. Paper 1e-4.", exclusiveMinimum=0)
    betas: list[float] = setting("Adam betas. Paper [0.9, 0.999] (torch defaults).",
                                 items={"minimum": 0, "exclusiveMaximum": 1}, minItems=2, maxItems=2)
    weight_decay: float = setting("Adam coupled L2 weight decay. Paper 1e-3.", minimum=0)
    schedule: Literal["cosine", "constant"] = setting("Lr schedule over epochs, stepped per epoch. Paper cosine.")
    min_lr: float = setting("Cosine end lr (eta_min). Paper 0.", minimum=0)
    seed: int = setting("init seed; sampler seed+1; views seed+2. Paper 1234.", minimum=0)
    device: Literal["auto", "cpu", "cuda"] = setting("Training device.")
    amp: bool = setting("bf16 autocast of the forward passes on CUDA (ignored on CPU). AMP fp16 in the paper.")
    num_threads: int = setting("torch CPU threads; 0 = torch's default.", minimum=0)
    log_every: int = setting("A log line every N iterations.", minimum=1)
    checkpoint_every: int = setting("Resumable state/last.pt every N epochs (checkpoint.pt at the end). Paper 50.",
                                    minimum=1)
    swap_grid_every: int = setting("Flip-swap reconstruction grid swap_grid_epoch<k>.png every N epochs "
                                   "(docs/method.md section 2.2); 0 = off.", minimum=0)
    tensorboard: bool = setting("Also log per-iteration scalars to out_dir/tensorboard (needs tensorboard).")
    dist_backend: Literal["auto", "nccl", "gloo"] = setting(
        "torch.distributed backend under torchrun / srun; auto = nccl on CUDA, else gloo.")
    channels_last: bool = setting("Networks and activations in channels_last memory format (CUDA only).")
    # false: what YAML 1.1 (PyYAML, Snakemake) reads from an unquoted `off`, which is how `dvc exp run -S`
    # (a YAML 1.2 writer) writes the value back; from_config turns it into "off".
    compile: str = setting("torch.compile mode of the method's networks (COMPILE_MODES); off (or false) = eager.",
                           enum=[*COMPILE_MODES, False])
    stop_before_limit_s: int = setting("Inside a Slurm job, save state and exit 75 this many seconds before the "
                                       "job's time limit (squeue %L); 0 = off.", minimum=0)
    lock_wait_s: int = setting("Seconds to wait for another trainer to release the output folder's lock before "
                               "exiting 73; 0 = no wait.", minimum=0)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PretrainConfig":
        if section.get("compile") is False:
            # YAML 1.1 (PyYAML) reads an unquoted `compile: off` as false; `dvc exp run -S`, whose YAML
            # 1.2 writer sees no need for quotes, writes the value back that way. It means "off".
            section = {**section, "compile": "off"}
        return from_dict(cls, section, "pretrain")


def _section(config: Mapping[str, Any], name: str) -> Any:
    if name not in config:
        raise ConfigError(f"missing section {name}")
    return config[name]


def train(method: str, data_dir: Path, out_dir: Path, config: Mapping[str, Any]) -> dict:
    """Pretrain ``method`` on the aligned shard ``data_dir``; write checkpoint, metrics and run.json to ``out_dir``.

    ``config`` holds the sections ``pretrain``, ``model`` and the method's own (PCL: ``pcl``,
    ``views``). Returns a summary dict (also in run.json). Holds ``out_dir`` for the whole attempt
    (:func:`pclbench.pretrain.run_folder.guard_out_dir`: its lock, exit 73, ``attempts.log``).
    Resumes from ``state/last.pt`` in ``out_dir``; returns at once if ``out_dir`` holds a finished
    run with the same config (:func:`pclbench.pretrain.resume.find_resume_point`). Raises
    :class:`~pclbench.pretrain.preemption.Preempted` (a SystemExit with status :data:`EXIT_REQUEUE`)
    after SIGTERM / SIGUSR1, once the resumable state is saved, and likewise
    ``pretrain.stop_before_limit_s`` before the Slurm job's time limit (rank 0 only). Under torchrun /
    srun (``WORLD_SIZE`` or ``SLURM_NTASKS`` > 1) it starts the process group itself.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pcfg = PretrainConfig.from_config(_section(config, "pretrain"))
    ddp.init_from_env(ddp.backend_for(pcfg.device, pcfg.dist_backend))
    with guard_out_dir(out_dir, pcfg.lock_wait_s, pcfg.stop_before_limit_s) as deadline:
        t_start = time.perf_counter()
        model_cfg = ModelConfig.from_config(_section(config, "model"))
        builder = METHODS.get(method)
        device = resolve_device(pcfg.device, "pretrain.device",
                                local_rank=ddp.local_rank() if ddp.is_distributed() else None)
        if pcfg.num_threads > 0:
            torch.set_num_threads(pcfg.num_threads)
        paths, main = StatePaths(out_dir), ddp.is_main()
        config_plain = json.loads(json.dumps(dict(config), default=str))  # plain containers (weights_only-safe)
        tb_writer_cls = tensorboard_writer_class() if pcfg.tensorboard else None
        seeds = _seed_globals(pcfg.seed)
        net: Method = builder(config, model_cfg, pcfg.img_size)
        start = find_resume_point(paths, ConfigCheck(method, net.config_sections, config_plain))
        if start.finished is not None:
            return _already_finished(method, paths, start.finished)
        _log_attempt_start(start)
        net = _place_on_device(net, pcfg, device)
        shard = VideoShard(data_dir, pcfg.epoch_unit)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
        sampler = torch.Generator().manual_seed(seeds["sampler"])
        views_gen = torch.Generator(device=device).manual_seed(seeds["views"] + 7919 * ddp.rank())
        recorder = StateRecorder(method, net, sampler, views_gen, config_plain, start.code, start.state)
        info = _run_info(method, data_dir, shard, pcfg, device, net)
        if not net.trainable:
            return _write_untrained(recorder, paths, info, config_plain, seeds, t_start)
        run = _Run(method, pcfg, net, shard, device, sampler, views_gen, recorder, paths, deadline,
                   n_iter=_iterations_per_epoch(shard, pcfg, data_dir), streams=_stream_sizes(net, pcfg),
                   optim=_optimiser(net, pcfg, device))
        pos = _resume_position(run, start)
        total_iter = (pcfg.epochs - pos.epoch + 1) * run.n_iter - pos.step
        log.info("pretraining %s on %s: %d images, %d videos, %d subjects, %d epochs of %s x %d iterations, "
                 "device %s, streams %s, %d rank(s)", method, data_dir, shard.n_images, shard.n_videos,
                 shard.n_subjects, pcfg.epochs, pcfg.epoch_unit, run.n_iter, device, run.streams, ddp.world_size())
        grid_rows = swap_grid_rows(shard) if (main and pcfg.swap_grid_every and hasattr(net, "swap_grid")) else None
        run.metrics = MetricsLog(out_dir, tb_writer_cls, enabled=main)
        run.progress = Progress("pretrain", total_iter, unit="it", logger=log, enabled=main, log_lines=False)
        t_train = run.t_log = time.perf_counter()
        last_means: dict[str, float] = {}
        preempted: str | None = None
        net.train()
        try:
            with StopFlag() as stop:
                for epoch in range(pos.epoch, pcfg.epochs + 1):
                    first = epoch == pos.epoch
                    sums, stopping, preempted = _train_epoch(run, epoch, stop, pos.step if first else 0,
                                                             dict(pos.sums) if first else {},
                                                             pos.sampler if first else None)
                    if preempted:
                        break
                    last_means = {k: v / run.n_iter for k, v in sums.items()}
                    net.epoch_end(epoch, last_means)
                    if run.scheduler is not None:
                        run.scheduler.step()
                    finished = epoch == pcfg.epochs
                    if grid_rows is not None and epoch % pcfg.swap_grid_every == 0:
                        write_swap_grid(net, shard, grid_rows, device, out_dir / f"swap_grid_epoch{epoch}.png")
                    # `stopping` (global, not the local flag): every rank takes the same branch (capture is collective).
                    if not finished and (epoch % pcfg.checkpoint_every == 0 or stopping):
                        why = (stop.signal or "a stop signal on another rank") if stopping else None
                        run.save(paths.last, epoch, stopped=why, previous=paths.prev)
                        if stopping:  # signalled in the epoch's last iteration
                            preempted = why
                            break
                    if finished:
                        run.save(paths.checkpoint, epoch, finished=True)
        finally:
            run.metrics.close()
            run.progress.close()
        if preempted:
            ddp.barrier()
            raise Preempted(f"{method}: stopped by {preempted} at iteration {run.iteration}; resumable state in "
                            f"{paths.last}; rerun the same command to resume (exit status {EXIT_REQUEUE})")
        return _finish(run, info, start, pos, total_iter, config_plain, seeds, t_start, t_train, last_means)


@dataclass
class _Run:
    """What one training attempt's loop uses: the method, its data, optimiser and state writers, and
    the counters that go on from epoch to epoch (``iteration``; the log line's rate, ``t_log`` /
    ``it_log``)."""

    method: str
    pcfg: PretrainConfig
    net: Method
    shard: VideoShard
    device: torch.device
    sampler: torch.Generator
    views_gen: torch.Generator
    recorder: StateRecorder
    paths: StatePaths
    deadline: JobDeadline | None
    n_iter: int
    streams: dict[str, int]
    optim: tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]
    metrics: MetricsLog | None = None
    progress: Progress | None = None
    iteration: int = 0
    t_log: float = 0.0
    it_log: int = 0
    main: bool = field(default_factory=ddp.is_main)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim[0]

    @property
    def scheduler(self) -> Any:
        return self.optim[1]

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.optim[2]

    def save(self, path: Path, epoch: int, finished: bool = False, position: dict | None = None,
             stopped: str | None = None, previous: Path | None = None) -> None:
        """Capture the state (collective: every rank calls it); rank 0 flushes the metrics and writes it."""
        st = self.recorder.capture(epoch, self.iteration, finished, *self.optim, position=position, stopped=stopped)
        if self.main:
            self.metrics.flush()
            save_checkpoint(path, st, previous=previous)


def _train_epoch(run: _Run, epoch: int, stop: StopFlag, step0: int, sums: dict[str, float],
                 sampler_state: torch.Tensor | None) -> tuple[dict[str, float], bool, str | None]:
    """Iterations ``step0 ..`` of ``epoch``: returns the epoch's loss sums, whether a rank asked to stop
    in its last iteration, and what stopped the run when it stopped (and saved) inside the epoch.

    ``sampler_state``: the sampler state at the start of the epoch (a mid-epoch resume redraws its
    order and skips the steps done)."""
    if sampler_state is not None:
        run.sampler.set_state(sampler_state)
    epoch_sampler = run.sampler.get_state()  # redraws this epoch's order on a mid-epoch resume
    rank, world = ddp.rank(), ddp.world_size()
    index = {name: ddp.shard_batches(run.shard.epoch_batches(run.n_iter, size, run.sampler), rank, world)
             for name, size in run.streams.items()}
    lr = run.optimizer.param_groups[0]["lr"]
    t_it = time.perf_counter()
    stopping = False
    for it, batches in enumerate(BatchLoader(run.shard, index, run.device, start=step0), start=step0):
        out = run.net.train_iteration(batches, run.optimizer, run.scaler, epoch, run.views_gen)
        stop.check_deadline(run.deadline, run.pcfg.stop_before_limit_s)
        values, stopping = _global_means(out, stop, run.device)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{run.method}: non-finite {', '.join(bad)} at epoch {epoch}, "
                                     f"iteration {it} ({values}); no checkpoint written for this epoch")
        now = time.perf_counter()
        run.iteration += 1
        run.metrics.write({"epoch": epoch, "iteration": run.iteration, "step": it, **values, "lr": lr,
                           "seconds": now - t_it}, values, lr, run.iteration)
        t_it = now
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        _report_iteration(run, epoch, values, lr, now)
        if stopping and it + 1 < run.n_iter:  # a rank was signalled: all stop here
            why = stop.signal or "a stop signal on another rank"
            pos = {"epoch": epoch, "step": it + 1, "sampler": epoch_sampler, "sums": dict(sums)}
            run.save(run.paths.last, epoch - 1, position=pos, stopped=why, previous=run.paths.prev)
            return sums, True, why
    return sums, stopping, None


def _global_means(out: Mapping[str, torch.Tensor], stop: StopFlag, device: torch.device) -> tuple[dict[str, float], bool]:
    """One collective per iteration: the global means of the logged values and the stop flag (any rank)."""
    flat = torch.stack([v.detach().float() for v in out.values()]
                       + [torch.tensor(float(stop.signal is not None), device=device)])
    if ddp.is_distributed():
        ddp.all_reduce_mean_([flat])
    flat = flat.tolist()
    return dict(zip(out, flat[:-1])), flat[-1] > 0


def _report_iteration(run: _Run, epoch: int, values: Mapping[str, float], lr: float, now: float) -> None:
    """The progress bar; every ``log_every`` iterations its postfix, or a log line off a terminal."""
    run.progress.update(1)
    if run.iteration % run.pcfg.log_every == 0:
        rate = (run.iteration - run.it_log) / max(now - run.t_log, 1e-9)
        run.t_log, run.it_log = now, run.iteration
        run.progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k.startswith("loss_")})
        if run.progress.bar is None and run.main:
            log.info("epoch %d/%d it %d: %s lr %.3g, %.2f it/s", epoch, run.pcfg.epochs, run.iteration,
                     " ".join(f"{k}={v:.4g}" for k, v in values.items()), lr, rate)


def _seed_globals(seed: int) -> dict[str, int]:
    """Seeds: the global RNGs initialise the networks (same on every rank); `sampler` (CPU) draws the
    frames of each epoch (same on every rank); `views` (training device) drives every augmentation,
    noise and mixup draw (one stream per rank)."""
    seeds = {"init": seed, "sampler": seed + 1, "views": seed + 2}
    torch.manual_seed(seeds["init"])
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return seeds


def _already_finished(method: str, paths: StatePaths, final: dict) -> dict:
    return {"method": method, "checkpoint": str(paths.checkpoint), "epochs": final["epoch"],
            "iterations": final["iteration"], "resumed": False, "already_finished": True}


def _log_attempt_start(start: ResumePoint) -> None:
    if start.state is not None:
        log.info("this attempt resumes from iteration %d (%s)", start.state["iteration"], start.path)
    else:
        log.info("this attempt starts from scratch (iteration 0)")


def _place_on_device(net: Method, pcfg: PretrainConfig, device: torch.device) -> Method:
    """SyncBatchNorm across ranks on CUDA, the device, bf16 autocast, channels_last, torch.compile."""
    if ddp.is_distributed() and device.type == "cuda":
        # Global batch statistics, as one process (pclbench.pretrain.distributed); state_dict keys are unchanged.
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    net.amp_dtype = torch.bfloat16 if (pcfg.amp and device.type == "cuda") else None
    if pcfg.channels_last and device.type == "cuda":
        # cuDNN's NHWC kernels; convolutions then return channels_last maps whatever the input layout
        net.to(memory_format=torch.channels_last)
    if pcfg.compile != "off":
        net.compile_modules(mode=pcfg.compile)  # in place: state_dict keys and checkpoints unchanged
    return net


def _run_info(method: str, data_dir: Path, shard: VideoShard, pcfg: PretrainConfig, device: torch.device,
              net: Method) -> dict:
    """What run.json says of the data, the device and the networks."""
    return {"method": method, "data_dir": str(data_dir), "n_images": shard.n_images,
            "n_videos": shard.n_videos, "n_subjects": shard.n_subjects, "epoch_unit": pcfg.epoch_unit,
            "shard_size": shard.size, "device": str(device),
            "world_size": ddp.world_size(), "amp_dtype": str(net.amp_dtype) if net.amp_dtype else None,
            "channels_last": bool(pcfg.channels_last and device.type == "cuda"), "compile": pcfg.compile,
            "n_parameters": sum(p.numel() for p in net.parameters()),
            "encoder_parameters": sum(p.numel() for p in net.encoder.parameters())}


def _write_untrained(recorder: StateRecorder, paths: StatePaths, info: dict, config_plain: dict,
                     seeds: dict[str, int], t_start: float) -> dict:
    """A method that trains nothing (the random baseline): its encoder as a finished checkpoint."""
    main, out_dir = ddp.is_main(), paths.out_dir
    st = recorder.capture(0, 0, True)
    if main:
        save_checkpoint(paths.checkpoint, st)
        atomic_write_text(out_dir / "metrics.jsonl", "")
        atomic_write_text(out_dir / "metrics.csv", "")
    summary = {**info, "epochs": 0, "iterations": 0, "checkpoint": str(paths.checkpoint), "resumed": False}
    if main:
        write_run_info(out_dir, "pretrain", config=config_plain, seeds=seeds,
                       timings={"total": time.perf_counter() - t_start}, **summary)
        log.info("%s: wrote the untrained encoder to %s", recorder.method, paths.checkpoint)
    ddp.barrier()
    return summary


def _iterations_per_epoch(shard: VideoShard, pcfg: PretrainConfig, data_dir: Path) -> int:
    n_iter = shard.n_units // pcfg.batch_size  # drop_last (docs/method.md §2.7)
    if n_iter < 1:
        what = "identities (subjects)" if pcfg.epoch_unit == "identities" else "videos (subject, clip)"
        raise ValueError(f"{data_dir}: {shard.n_units} {what} is fewer than pretrain.batch_size = "
                         f"{pcfg.batch_size} (pretrain.epoch_unit {pcfg.epoch_unit}): an epoch would have no "
                         "iteration")
    return n_iter


def _stream_sizes(net: Method, pcfg: PretrainConfig) -> dict[str, int]:
    """GLOBAL images per iteration per batch stream; each must split over the ranks."""
    streams = net.batch_sizes(pcfg.batch_size)
    world = ddp.world_size()
    bad_streams = {k: v for k, v in streams.items() if v % world}
    if bad_streams:
        raise ValueError(f"batch streams {bad_streams} do not split over {world} ranks: pretrain.batch_size "
                         "and the method's other stream sizes (e.g. pcl.pose_batch) must be multiples of the "
                         "world size")
    return streams


def _optimiser(net: Method, pcfg: PretrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, Any,
                                                                               torch.amp.GradScaler]:
    """Adam (coupled L2 weight decay) over every parameter, the per-epoch schedule, the grad scaler."""
    # fused: one CUDA kernel for the whole update instead of a few per parameter tensor (the step is
    # launch-bound at the paper's sizes); same Adam arithmetic. Not available for CPU tensors here.
    optimizer = torch.optim.Adam(net.parameter_groups(), lr=pcfg.lr, betas=tuple(pcfg.betas),
                                 weight_decay=pcfg.weight_decay, fused=device.type == "cuda")
    if ddp.is_distributed():
        ddp.sync_gradients(optimizer)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=pcfg.epochs, eta_min=pcfg.min_lr)
                 if pcfg.schedule == "cosine" else None)
    # bf16 autocast needs no loss scaling; the scaler stays disabled (kept for an fp16 option; with
    # several ranks an enabled scaler would need its inf checks all-reduced).
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return optimizer, scheduler, scaler


def _resume_position(run: _Run, start: ResumePoint) -> Position:
    """Load the state to resume from (if any) and keep the metrics lines it includes; the loop's start."""
    partial = run.paths.out_dir / PARTIAL_NAME
    if start.state is not None:
        pos = run.recorder.restore(start.state, start.path, *run.optim)
        run.iteration = pos.iteration
        if run.main:
            truncate_metrics(partial, pos.iteration)
        log.info("resuming %s from %s at epoch %d, step %d (iteration %d)", run.method, start.path,
                 pos.epoch, pos.step, pos.iteration)
    else:
        pos = Position()
        if run.main:
            partial.unlink(missing_ok=True)
    ddp.barrier()
    return pos


def _finish(run: _Run, info: dict, start: ResumePoint, pos: Position, n_run: int, config_plain: dict,
            seeds: dict[str, int], t_start: float, t_train: float, last_means: dict[str, float]) -> dict:
    """After the last epoch: metrics.jsonl / .csv, state/final.pt, run.json; the summary."""
    if run.main:
        run.metrics.finish()
        keep_final(run.paths)
        remove_resumable_state(run.paths)
    t_end = time.perf_counter()
    resumed = start.state is not None
    summary = {**info, "epochs": run.pcfg.epochs, "iterations_per_epoch": run.n_iter, "iterations": run.iteration,
               "streams": run.streams, "final_epoch_means": last_means, "checkpoint": str(run.paths.checkpoint),
               "resumed": resumed,
               "resumed_from_epoch": (pos.epoch - 1 if pos.step == 0 else pos.epoch) if resumed else None,
               "resumed_from_iteration": (run.iteration - n_run) if resumed else None,
               "attempts": run.recorder.attempts(run.iteration, "finished")}
    timings = {"total": t_end - t_start, "train": t_end - t_train,
               "seconds_per_iteration": (t_end - t_train) / max(n_run, 1)}
    if run.main:
        write_run_info(run.paths.out_dir, "pretrain", config=config_plain, seeds=seeds, timings=timings,
                       pretrain_config=asdict(run.pcfg), **summary)
    log.info("%s: %d iterations in %.1f s (%.3f s/it); final epoch means %s", run.method, n_run,
             timings["train"], timings["seconds_per_iteration"], last_means)
    ddp.barrier()
    return {**summary, "timings": timings}
