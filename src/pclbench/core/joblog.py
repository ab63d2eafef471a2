"""A job's log file, owned by the pclbench process: ``pclbench <stage> ... --log FILE``.

Why not the shell's ``> {log} 2>&1``: when the log's file system is full (or the log cannot be
created), the shell redirection loses every byte of the job's output, its error message included,
and Snakemake's ``show-failed-logs`` then prints only ``Logfile ... empty file`` or ``Logfile ... not
found.`` (snakemake 9.27.1, ``snakemake/logging.py`` ``show_logs``). The job's own stderr is a
different place: the Snakemake console for a local job, ``.snakemake/slurm_logs/<rule>/<wildcards>/
<jobid>.log`` for the Slurm executor plugin (snakemake-executor-plugin-slurm 2.8.0, ``__init__.py``,
the ``sbatch --output`` file under ``slurm_logdir``), usually on another file system.

So with ``--log FILE`` this module:

- opens FILE for appending (Snakemake deletes a rule's log before every attempt:
  ``snakemake/jobs.py`` ``Job.remove_existing_output``; appending keeps the pretrain rule's former
  ``>>`` behaviour for a manual rerun) and points file descriptors 1 and 2 at it, so that output from
  native code and child processes lands there too, as with the shell redirection;
- replaces ``sys.stdout`` / ``sys.stderr`` by a stream that writes through to that descriptor and,
  on the first ``OSError`` (``ENOSPC`` on a full disk, ``EDQUOT``, ``EIO``), puts descriptors 1 and 2
  back on the job's real stdout / stderr, says once on stderr why the log was given up, and writes
  everything from then on there: nothing is lost;
- when the command fails (non-zero exit status or an uncaught exception, whose traceback goes to the
  log), always writes one final line to the real stderr: ``pclbench <stage>: failed (exit N): <first
  line of the last message the command wrote>`` and where the log is, so the reason reaches the user
  even when the log is empty.

The exit status is kept (75 = requeue and 73 = locked from the trainer matter to Snakemake's retries).
"""
from __future__ import annotations

import io
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

LAST_CHARS = 8192  # how much of the last write is kept in memory (it holds the error message)


class JobLog:
    """Owns descriptors 1 and 2 of this process for the duration of one command (see module doc)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.real_out = -1  # duplicates of the job's own stdout / stderr (Snakemake's or Slurm's)
        self.real_err = -1
        self.log_fd: Optional[int] = None
        self.error: Optional[OSError] = None  # why the log was given up, if it was
        self.last_write = ""  # the last non-blank text written: print() and logging write a message at once
        self._saved_streams = None

    # -- setup / teardown -------------------------------------------------------------------------
    def start(self) -> None:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except (OSError, ValueError, AttributeError):
                pass
        self.real_out, self.real_err = os.dup(1), os.dup(2)
        self._saved_streams = (sys.stdout, sys.stderr)
        stream = _LogStream(self)
        sys.stdout = sys.stderr = stream
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NONBLOCK: a FIFO without a reader in the log's place fails (ENXIO, open(2)) instead of
            # hanging the job; cleared at once, it changes nothing for a regular file
            self.log_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666)
            os.set_blocking(self.log_fd, True)
        except OSError as e:  # a file in the way of its folder, no inode left, read-only file system
            self._give_up(e)
            return
        os.dup2(self.log_fd, 1)
        os.dup2(self.log_fd, 2)

    def close(self) -> None:
        """Put descriptors and streams back (matters for in-process callers such as tests)."""
        if self._saved_streams is not None:
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
        if self.real_out >= 0:
            os.dup2(self.real_out, 1)
            os.dup2(self.real_err, 2)
            os.close(self.real_out)
            os.close(self.real_err)
            self.real_out = self.real_err = -1
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None

    # -- writing ------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        if text.strip():
            self.last_write = text[:LAST_CHARS]
        data = text.encode("utf-8", "backslashreplace")
        if self.error is None:
            try:
                _write_all(2, data)
                return
            except OSError as e:
                self._give_up(e)
        self._to_real_stderr(data)

    def _give_up(self, err: OSError) -> None:
        """The log cannot be written: descriptors 1 and 2 go back to the job's own, with a note."""
        self.error = err
        if self.real_out >= 0:
            os.dup2(self.real_out, 1)
            os.dup2(self.real_err, 2)
        why = err.strerror or str(err)
        if err.filename is not None and str(err.filename) != str(self.path):
            why += f": {err.filename}"  # e.g. a file in the way of the log's folder
        self._to_real_stderr(f"pclbench: cannot write the log {self.path} ({why}); the output goes to "
                             f"stderr instead\n".encode())

    def _to_real_stderr(self, data: bytes) -> None:
        try:
            _write_all(self.real_err if self.real_err >= 0 else 2, data)
        except OSError:
            pass  # the job's stderr is unwritable too: nothing is left to report to

    def last_line(self) -> str:
        """The first line of the last message written: the error's summary (a several-line message,
        such as the one saying what to obtain for a licence-gated dataset, starts with it; a traceback
        ends with its ``Type: message`` line, written on its own)."""
        for line in self.last_write.splitlines():
            if line.strip():
                return line.strip()[:1000]
        return ""

    def final_line(self, command: str, rc: int) -> str:
        where = (f"the log {self.path} could not be written" if self.error is not None
                 else f"log: {self.path}")
        last = self.last_line() or "(no message)"
        return f"pclbench {command}: failed (exit {rc}): {last} [{where}]\n"


class _LogStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` while a :class:`JobLog` is active: unbuffered, never raises."""

    def __init__(self, joblog: JobLog):
        super().__init__()
        self._log = joblog

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._log.write(s)
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 2  # the log, or the job's stderr after the log was given up


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # sys.exit("message"): Python prints the message and exits 1


def run_logged(path: str | os.PathLike, command: str, fn: Callable[[], int]) -> int:
    """Run ``fn`` with its output going to the log ``path`` (module doc); returns the exit status.

    An uncaught exception is written to the log as a traceback and gives status 1 (130 for
    KeyboardInterrupt); a ``SystemExit`` keeps its status.
    """
    jl = JobLog(path)
    jl.start()
    rc = 1
    try:
        try:
            rc = _exit_code(fn())
        except SystemExit as e:
            rc = _exit_code(e.code)
            message = getattr(e, "message", None) or (e.code if isinstance(e.code, str) else None)
            if message:
                jl.write(f"{message}\n")
        except KeyboardInterrupt:
            traceback.print_exc()
            rc = 130
        except BaseException:  # noqa: BLE001 - every failure must reach the user as a line
            traceback.print_exc()
            rc = 1
        if rc != 0:
            jl._to_real_stderr(jl.final_line(command, rc).encode("utf-8", "backslashreplace"))
        return rc
    finally:
        jl.close()
