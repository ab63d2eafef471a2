"""Resumable pretraining state: what is saved, where a run resumes from, and the finished run kept.

README, "Clusters". ``state/last.pt`` (NOT a declared Snakemake output, so it survives a failed job)
is written every ``checkpoint_every`` epochs and on a stop (:mod:`pclbench.pretrain.preemption`).
Every attempt is listed in the state and in run.json (``attempts``: resumed-from and saved-at
iterations, what stopped it). The state (:meth:`StateRecorder.capture`) holds model, optimiser,
scheduler, grad scaler, DWA history, every RNG state (python, numpy, torch CPU/CUDA, the sampler and
the views generators of every rank) and the position in the data order (epoch, iteration within
the epoch, the sampler state at the epoch start, the epoch's running loss sums), so a run killed at
any iteration and resumed ends with bitwise the weights of an uninterrupted run on CPU
(tests/test_resume.py). A run resumes from ``state/last.pt`` when its config matches
(:data:`RUNTIME_KEYS` may differ); a state written with another config is set aside as
``state/last.pt.stale`` and the run starts afresh. Each save first moves the current ``last.pt`` to
``state/prev.pt`` (after the new file is fsynced, :func:`pclbench.pretrain.checkpoint.save_checkpoint`);
a ``last.pt`` (or ``checkpoint.pt``) that cannot be read, e.g. torn by a crash or a full disk, is
moved to ``state/bad-<time>-<pid>/`` with a warning and the run resumes from ``prev.pt``, or from
scratch if that is unreadable too, so no bad file blocks the reruns (:func:`find_resume_point`).

A finished run keeps a hard link of ``checkpoint.pt`` as ``state/final.pt``: if its job is still
recorded as failed (a Slurm TIMEOUT after training finished) Snakemake deletes ``checkpoint.pt``
and ``metrics.csv`` and reruns the job, which then restores both from ``state/final.pt`` and
``metrics.jsonl`` instead of training again, provided the config and the pclbench source
(:func:`code_fingerprint`) are unchanged (:func:`restore_finished`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from pclbench.core.io import atomic_file
from pclbench.pretrain import distributed as ddp
from pclbench.pretrain.checkpoint import (FORMAT, CheckpointError, capture_rng_state, load_checkpoint,
                                         restore_rng_state)
from pclbench.pretrain.metrics_log import write_metrics_csv

log = logging.getLogger(__name__)

# Keys of `pretrain` that only change how a run executes, not what it computes; a run may be resumed
# with different values of them.
RUNTIME_KEYS = ("device", "num_threads", "log_every", "checkpoint_every", "swap_grid_every", "tensorboard",
                "dist_backend", "channels_last", "compile", "stop_before_limit_s", "lock_wait_s")
FINAL_NAME = "final.pt"


@dataclass(frozen=True)
class StatePaths:
    """The checkpoint files of one output folder."""

    out_dir: Path

    @property
    def checkpoint(self) -> Path:  # the declared output, written once, when the run finishes
        return self.out_dir / "checkpoint.pt"

    @property
    def last(self) -> Path:
        return self.out_dir / "state" / "last.pt"

    @property
    def prev(self) -> Path:
        return self.out_dir / "state" / "prev.pt"

    @property
    def final(self) -> Path:
        return self.out_dir / "state" / FINAL_NAME


def comparable_config(config: Mapping[str, Any], sections: tuple[str, ...]) -> dict:
    """The config sections that decide what a run computes (``pretrain`` without :data:`RUNTIME_KEYS`)."""
    out = {s: config.get(s) for s in sections}
    out["pretrain"] = {k: v for k, v in dict(config.get("pretrain") or {}).items() if k not in RUNTIME_KEYS}
    return out


def config_diff(a: Any, b: Any, where: str = "") -> list[str]:
    """``["section.key: old -> new", ...]`` for every differing leaf of two nested mappings."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}" if where else str(k))
        return out
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


class ConfigCheck:
    """Compares a checkpoint's method and config with this run's (``method_sections``: the method's own
    config sections, :attr:`pclbench.pretrain.methods.base.Method.config_sections`)."""

    def __init__(self, method: str, method_sections: tuple[str, ...], config_plain: Mapping[str, Any]):
        self.method, self.sections, self.config = method, method_sections, config_plain

    def __call__(self, ck: dict, path: Path) -> list[str]:
        if ck["method"] != self.method:
            raise ValueError(f"{path} holds a {ck['method']!r} run, not {self.method!r}; use another out_dir")
        return config_diff(comparable_config(ck["config"], self.sections), comparable_config(self.config, self.sections))


def code_fingerprint() -> str:
    """sha256 over the pclbench package's Python sources (relative path + bytes, sorted): a finished
    run is only restored from ``state/final.pt`` by the code that trained it."""
    root = Path(__file__).resolve().parents[1]  # the whole pclbench package
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` = a hard link of ``src`` (no extra disk), a copy where links fail; put in place atomically
    (:func:`pclbench.core.io.atomic_file`: its temporary is removed on error)."""
    with atomic_file(dst) as tmp:
        tmp.unlink()  # atomic_file made it (empty); os.link needs the name free
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)


def keep_final(paths: StatePaths) -> None:
    """``state/final.pt`` = a hard link of ``checkpoint.pt`` (:func:`link_or_copy`), best effort: it
    outlives a deletion of checkpoint.pt by Snakemake when the job is still recorded as failed."""
    try:
        link_or_copy(paths.checkpoint, paths.final)
    except OSError as e:  # best effort: the run itself is complete
        log.warning("cannot keep %s as %s (%s): a job recorded as failed after this point retrains",
                    paths.checkpoint, paths.final, e)


def remove_resumable_state(paths: StatePaths) -> None:
    """After the run finished: the finished checkpoint.pt holds everything state/last.pt did."""
    for p in (paths.last, paths.prev, paths.last.with_name(paths.last.name + ".stale"),
              paths.prev.with_name(paths.prev.name + ".stale"), paths.final.with_name(FINAL_NAME + ".stale")):
        p.unlink(missing_ok=True)


def restore_finished(paths: StatePaths, code: str, check_config: ConfigCheck) -> bool:
    """Put back ``checkpoint.pt`` (from ``state/final.pt``) and ``metrics.csv`` (from ``metrics.jsonl``)
    of a finished run whose declared outputs Snakemake deleted (module docstring).

    Only when the finished state holds this config and this code; otherwise ``final.pt`` is set
    aside as ``final.pt.stale`` (removed when the new run finishes) and the run trains afresh."""
    final_path, out_dir = paths.final, paths.out_dir
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
    link_or_copy(final_path, paths.checkpoint)
    write_metrics_csv(jsonl, out_dir / "metrics.csv")
    log.warning("restored the finished run (%d iterations) from %s: its checkpoint.pt had been deleted "
                "(Snakemake removes a failed job's outputs, e.g. after a Slurm TIMEOUT that came after training "
                "finished); delete %s to train again", ck["iteration"], final_path, final_path.parent)
    return True


@dataclass
class ResumePoint:
    """Where this attempt starts: ``state`` None = from scratch; ``finished``: the checkpoint.pt of a
    finished run with this config (nothing to train); ``code``: :func:`code_fingerprint`."""

    code: str
    state: dict | None = None
    path: Path | None = None
    finished: dict | None = None


def find_resume_point(paths: StatePaths, check_config: ConfigCheck) -> ResumePoint:
    """Read ``checkpoint.pt``, then ``state/last.pt``, then ``state/prev.pt`` (collective: every rank
    reads, rank 0 moves files).

    Unreadable files (a torn write, a full disk) are set aside into state/bad-<time>/ and the run goes
    on from the next candidate (checkpoint.pt -> state/last.pt -> state/prev.pt -> from scratch), so a
    bad file never blocks every rerun. A readable checkpoint.pt of another format or config, or one
    that is not finished, raises.
    """
    point = ResumePoint(code=code_fingerprint())
    if ddp.is_main() and not paths.checkpoint.exists() and paths.final.is_file():
        restore_finished(paths, point.code, check_config)
    ddp.barrier()
    bad: list[Path] = []
    point.finished = _finished_checkpoint(paths.checkpoint, check_config, bad)
    if point.finished is not None:
        return point
    point.state, point.path = _readable_state(paths, bad)
    if bad:
        _set_aside_unreadable(paths, bad)
    if point.state is not None:
        diffs = check_config(point.state, point.path)
        if diffs:
            log.warning("%s was written with a different config (%s): set aside as %s.stale; starting afresh",
                        point.path, "; ".join(diffs), point.path.name)
            ddp.barrier()  # every rank has read it before rank 0 moves it
            if ddp.is_main():
                for p in (paths.last, paths.prev):
                    if p.is_file():
                        os.replace(p, p.with_name(p.name + ".stale"))
            point.state, point.path = None, None
    return point


def _finished_checkpoint(ckpt_path: Path, check_config: ConfigCheck, bad: list[Path]) -> dict | None:
    """The finished run in ``checkpoint.pt`` with this config, or None (no file, or an unreadable one,
    appended to ``bad``)."""
    if not ckpt_path.is_file():
        return None
    try:
        final = load_checkpoint(ckpt_path)
    except CheckpointError as e:
        if e.__cause__ is None:  # torch read it: not a torn file but not ours either
            raise
        log.warning("%s cannot be read (%s): it is set aside", ckpt_path, e)
        bad.append(ckpt_path)
        return None
    diffs = check_config(final, ckpt_path)
    if diffs:
        raise ValueError(f"{ckpt_path} was written with a different config ({'; '.join(diffs)}); "
                         "delete it or use another out_dir")
    if not final["finished"]:
        raise ValueError(f"{ckpt_path} holds an unfinished run: pclbench writes checkpoint.pt only when a "
                         "run finishes and resumes from state/last.pt; delete it or use another out_dir")
    log.info("%s: finished run found (%d epochs); nothing to do", ckpt_path, final["epoch"])
    return final


def _readable_state(paths: StatePaths, bad: list[Path]) -> tuple[dict | None, Path | None]:
    """The first readable of ``state/last.pt``, ``state/prev.pt`` and its path; unreadable ones go to ``bad``."""
    for cand in (paths.last, paths.prev):
        if not cand.is_file():
            continue
        try:
            return load_checkpoint(cand), cand
        except CheckpointError as e:
            nxt = (f"falling back to {paths.prev}" if cand == paths.last and paths.prev.is_file()
                   else "no earlier state is left: restarting from scratch")
            log.warning("%s cannot be read (%s): it is set aside; %s", cand, e, nxt)
            bad.append(cand)
    return None, None


def _set_aside_unreadable(paths: StatePaths, bad: list[Path]) -> None:
    """Move the unreadable files to ``state/bad-<time>-<pid>/`` (rank 0, after every rank read them)."""
    ddp.barrier()  # every rank has read them before rank 0 moves them
    if ddp.is_main():
        bad_dir = paths.last.parent / f"bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        bad_dir.mkdir(parents=True, exist_ok=True)
        for p in bad:
            os.replace(p, bad_dir / p.name)
        log.warning("unreadable file(s) %s moved to %s", ", ".join(p.name for p in bad), bad_dir)


@dataclass
class Position:
    """Where the loop starts: ``epoch`` (1-based) and ``step`` within it, ``iteration`` done in total;
    ``sampler``: the sampler state at the start of ``epoch`` (a mid-epoch resume redraws its order),
    ``sums``: that epoch's running loss sums so far."""

    epoch: int = 1
    step: int = 0
    iteration: int = 0
    sampler: torch.Tensor | None = None
    sums: dict[str, float] = field(default_factory=dict)


class StateRecorder:
    """Captures the resumable state of a run (:meth:`capture`, collective) and restores it (:meth:`restore`).

    Holds what every state shares: the method, its networks, the sampler and views generators, the
    plain config, the world size, the code fingerprint and the attempts record (every attempt so far:
    where it resumed, where it saved, what stopped it)."""

    def __init__(self, method: str, net: Any, sampler: torch.Generator, views_gen: torch.Generator,
                 config_plain: dict, code: str, previous: dict | None):
        self.method, self.net, self.sampler, self.views_gen = method, net, sampler, views_gen
        self.config_plain, self.code, self.world = config_plain, code, ddp.world_size()
        self.past_attempts = list(previous.get("attempts") or []) if previous is not None else []
        self.this_attempt = {"attempt": len(self.past_attempts) + 1,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "host": socket.gethostname(), "pid": os.getpid(),
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                             "resumed_from_iteration": previous["iteration"] if previous is not None else 0}

    def attempts(self, iteration: int, stop: str | None) -> list[dict]:
        """Every attempt so far, this one saved at ``iteration`` (``stop`` None: a periodic save; a later
        attempt resuming from it means this one was killed)."""
        return self.past_attempts + [{**self.this_attempt, "saved_at_iteration": iteration, "stop": stop}]

    def capture(self, epoch: int, iteration: int, finished: bool, optimizer=None, scheduler=None, scaler=None,
                position: dict | None = None, stopped: str | None = None) -> dict:
        """The checkpoint dict (:mod:`pclbench.pretrain.checkpoint` keys). Collective (all ranks must
        call it): every rank's views generator state goes into the file."""
        net = self.net
        views_states = ddp.all_gather_object(self.views_gen.get_state())
        return {"format": FORMAT, "method": self.method, "encoder": net.encoder.spec,
                "encoder_state": net.encoder.state_dict(), "model": net.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "extra": net.extra_state(),
                "rng": {**capture_rng_state(), "sampler": self.sampler.get_state(), "views": views_states[0],
                        "views_per_rank": views_states},
                "epoch": epoch, "iteration": iteration, "finished": finished, "config": self.config_plain,
                "world_size": self.world, "position": position, "code": self.code,
                "attempts": self.attempts(iteration, "finished" if finished else stopped)}

    def restore(self, previous: dict, path: Path, optimizer, scheduler, scaler) -> Position:
        """Load ``previous`` into the networks, optimiser, scheduler, scaler and every RNG; the loop's
        start :class:`Position`."""
        self.net.load_state_dict(previous["model"])
        optimizer.load_state_dict(previous["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(previous["scheduler"])
        scaler.load_state_dict(previous["scaler"])
        self.net.load_extra_state(previous["extra"])
        rng = previous["rng"]
        restore_rng_state(rng)
        self.sampler.set_state(rng["sampler"])
        per_rank = rng.get("views_per_rank") or [rng["views"]]
        if len(per_rank) == self.world:
            self.views_gen.set_state(per_rank[ddp.rank()])
        else:
            log.warning("%s was written by %d rank(s), this run has %d: the views generators are reseeded "
                        "(the resume is not exact)", path, len(per_rank), self.world)
        pos = Position(epoch=previous["epoch"] + 1, iteration=previous["iteration"])
        position = previous.get("position")
        if position is not None:  # stopped inside an epoch: redraw its order, skip the steps done
            pos.epoch, pos.step = position["epoch"], position["step"]
            pos.sampler = position["sampler"]
            pos.sums = {k: float(v) for k, v in position["sums"].items()}
        return pos
