"""One trainer per output folder: the folder's lock (exit 73), its stale temporaries and ``attempts.log``.

README, "Clusters". The output folder is locked for the whole run (``.lock``,
:func:`lock_out_dir`): a trainer waits up to ``pretrain.lock_wait_s`` for the lock (an orphaned
earlier attempt may still be saving) and then resumes from what it saved. Holding the lock, it
removes the temporary files a killed trainer left (:func:`remove_stale_tmp`) and appends every
attempt's log lines to ``attempts.log`` (:class:`AttemptLog`). :func:`guard_out_dir` does all of
it for the trainer.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pclbench.pretrain import distributed as ddp
from pclbench.pretrain.preemption import ExitWithMessage, JobDeadline, check_time_left

log = logging.getLogger(__name__)

# Exit status when another trainer holds the output folder's lock: EX_CANTCREAT of sysexits.h ("a
# (user specified) output file cannot be created"); not 0, so the second job is reported as failed.
EXIT_LOCKED = 73
LOCK_NAME = ".lock"
ATTEMPTS_LOG = "attempts.log"
LOCK_POLL_S = 1.0
# The temporary names of pclbench.core.io.atomic_file, through which the trainer writes every file:
# ``.<name>.tmp-<host>-<pid>-<random>``.
TMP_NAME = re.compile(r"^\..+\.tmp-.+-[0-9]+-.+$")


class OutputLocked(ExitWithMessage):
    """Another process trains into the same output folder; exit status EXIT_LOCKED."""

    status = EXIT_LOCKED


@contextmanager
def guard_out_dir(out_dir: Path, lock_wait_s: float, stop_before_limit_s: float) -> Iterator[JobDeadline | None]:
    """Hold ``out_dir`` for one training attempt; yields the Slurm job's deadline (rank 0 only, else None).

    The main rank first takes an exclusive, non-blocking ``flock`` on ``out_dir/.lock``
    (:func:`lock_out_dir`). A second trainer on the same folder waits for it up to ``lock_wait_s``
    (``pretrain.lock_wait_s``, polling), then raises :class:`OutputLocked` (exit status
    :data:`EXIT_LOCKED`) before touching anything. Before that, inside a Slurm job with less than
    ``stop_before_limit_s`` left, it raises :class:`pclbench.pretrain.preemption.TimeLimitNear` (exit
    75). With several ranks, rank 0 decides and broadcasts its decision, so every rank exits with the
    same status (a wait longer than the process group's timeout would still fail the other ranks).
    Holding the lock, it removes the temporary files a killed trainer left (:func:`remove_stale_tmp`),
    then appends this attempt's log lines to ``out_dir/attempts.log`` (:class:`AttemptLog`).
    """
    if ddp.rank() != 0:
        code = ddp.broadcast_object(None)  # rank 0's start decision: 0 = go, else its exit status
        if code:
            raise SystemExit(code)
        yield None
        return
    deadline = JobDeadline.from_env() if stop_before_limit_s > 0 else None
    try:
        check_time_left(deadline, stop_before_limit_s)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = lock_out_dir(out_dir, lock_wait_s, deadline, stop_before_limit_s)
    except SystemExit as e:
        ddp.broadcast_object(e.code)  # the other ranks exit with the same status instead of hanging
        raise
    ddp.broadcast_object(0)
    try:
        remove_stale_tmp(out_dir)
        with AttemptLog(out_dir / ATTEMPTS_LOG):
            yield deadline
    finally:
        os.close(fd)  # releases the lock (it would die with the process anyway)


def lock_out_dir(out_dir: Path, wait_s: float = 0.0, deadline: JobDeadline | None = None,
                 margin: float = 0.0) -> int:
    """The descriptor of ``out_dir/.lock`` with an exclusive flock held (written: ``pid <pid> on <host>``).

    Linux flock(2): the lock belongs to the open file description and is released when the process
    exits or is killed, so a crash never leaves it stale; Python docs, ``fcntl.flock``: with
    ``LOCK_NB`` a held lock raises ``BlockingIOError``. While another process holds it (e.g. the
    previous attempt of a signalled job, orphaned by the job-step Snakemake and still saving its
    state, README "Clusters"), waits up to ``wait_s`` seconds (one log line), polling every
    :data:`LOCK_POLL_S`, then raises :class:`OutputLocked` (exit status :data:`EXIT_LOCKED`);
    :class:`pclbench.pretrain.preemption.TimeLimitNear` if the job's time runs out meanwhile.
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
                check_time_left(deadline, margin, "while waiting for the lock")
                time.sleep(min(LOCK_POLL_S, max(wait_s - waited, 0.01)))
    except BaseException:
        os.close(fd)
        raise
    if waiting:
        log.warning("%s released after %.1f s; this trainer holds it now", path, time.monotonic() - t0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def remove_stale_tmp(out_dir: Path) -> None:
    """Remove the temporary files (:data:`TMP_NAME`) in ``out_dir`` and ``out_dir/state``: only a trainer
    holding the folder's lock writes them, and this one holds it now, so every one found is a killed
    writer's, whatever its host (``pclbench.core.io.atomic_file`` removes only this host's by itself)."""
    for folder in (out_dir, out_dir / "state"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
                log.warning("removing %s, a temporary file left by an earlier attempt", p)
                p.unlink(missing_ok=True)


class AttemptLog:
    """Appends the ``pclbench`` log records of one attempt to ``path``, after a header line (attempt
    number, time, pid, host): Snakemake deletes a job's ``log:`` file before every attempt
    (snakemake/jobs.py, ``Job.remove_existing_output``, called from ``Job.prepare``), this file keeps
    them all."""

    def __init__(self, path: Path):
        self.path = path
        self.handler: logging.Handler | None = None
        self.logger = logging.getLogger("pclbench")
        self.level = self.logger.level

    def __enter__(self) -> "AttemptLog":
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
