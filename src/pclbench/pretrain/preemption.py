"""Stopping a pretraining run early and resumably: stop signals, the Slurm job's time limit, exit 75.

README, "Clusters". On SIGTERM / SIGUSR1 (Slurm pre-emption, ``scancel --signal``, ``scontrol
requeue``) the trainer (:mod:`pclbench.pretrain.trainer`) finishes the current iteration, saves the
resumable state atomically (:mod:`pclbench.pretrain.resume`) and exits with :data:`EXIT_REQUEUE` (75,
``EX_TEMPFAIL``). Inside a Slurm job it does the same by itself ``pretrain.stop_before_limit_s``
before the job's time limit (:class:`JobDeadline`: ``squeue %L``, re-read every
:data:`LIMIT_RECHECK_S`), because ``sbatch --signal=USR1@<s>`` goes to every process of the job step
(sbatch(1)), where the job-step Snakemake has no USR1 handler and dies, orphaning the trainer. An
attempt that starts with less time left than that exits 75 at once, untouched
(:func:`check_time_left`, :class:`TimeLimitNear`).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any, Mapping

log = logging.getLogger(__name__)

# Exit status of a run stopped by SIGTERM / SIGUSR1 after saving state/last.pt: EX_TEMPFAIL of
# sysexits.h ("try again later"). A scheduler (Snakemake `retries`, a Slurm requeue) reruns the same
# command, which resumes.
EXIT_REQUEUE = 75
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")

LIMIT_RECHECK_S = 60.0  # re-read the job's time left this often: `scontrol update TimeLimit=` can extend it,
# pre-emption with a GraceTime shortens it (slurm.conf(5), GraceTime: "its end time is set to the
# current time plus GraceTime")
SQUEUE_TIMEOUT_S = 20.0


class ExitWithMessage(SystemExit):
    """A SystemExit with this class's exit status (``status``) that prints as its message."""

    status: int

    def __init__(self, message: str):
        super().__init__(self.status)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Preempted(ExitWithMessage):
    """Raised by :func:`pclbench.pretrain.trainer.train` after a stop signal: the state is saved; exit
    status EXIT_REQUEUE."""

    status = EXIT_REQUEUE


class TimeLimitNear(Preempted):
    """Less than ``pretrain.stop_before_limit_s`` left in the Slurm job; exit status EXIT_REQUEUE."""


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


def check_time_left(deadline: JobDeadline | None, margin: float, when: str = "at the start") -> None:
    """Raise :class:`TimeLimitNear` when the job has less than ``margin`` seconds left: a retry started
    inside an allocation that is about to end must not touch the state (it would be killed mid-save)."""
    left = deadline.time_left() if deadline is not None else None
    if left is not None and left < margin:
        msg = (f"Slurm job {deadline.job_id} has {left:.0f} s left {when}, less than pretrain.stop_before_limit_s "
               f"= {margin}: not starting; the state is untouched and the next job resumes (exit status "
               f"{EXIT_REQUEUE})")
        log.warning("%s", msg)
        raise TimeLimitNear(msg)


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

    def check_deadline(self, deadline: JobDeadline | None, margin: float) -> None:
        """:meth:`request` a stop when the Slurm job has less than ``margin`` seconds left (no-op
        without a deadline or once a stop is requested)."""
        if deadline is not None and self.signal is None:
            left = deadline.time_left()
            if left is not None and left < margin:
                self.request(f"the time limit of Slurm job {deadline.job_id} ({left:.0f} s left, "
                             f"pretrain.stop_before_limit_s = {margin})")

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
