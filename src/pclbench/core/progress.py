"""The progress reporter of every long loop: a tqdm bar on a terminal, log lines elsewhere.

One class, :class:`Progress`, replaces the five copies that stage-1 parsing, SynthFaces generation,
downloads, alignment and pretraining each had. What it does:

- On a terminal (``sys.stderr.isatty()``) it draws a tqdm bar on stderr (tqdm's default stream).
  With ``unit="B"`` the bar counts bytes (``unit_scale``, base 1024: rate and ETA in KiB/MiB/GiB).
- Off a terminal (a cluster job's log, a pipe) tqdm would write one carriage-return line per update
  into the log file, so instead it writes ``logger.info`` lines through the CALLER's logger (the
  caller's ``caplog``/logging configuration keeps working):
  every ~10 % of ``total`` (``every_s=None``), or every ``every_s`` seconds (time cadence: for
  downloads, whose total may be unknown). With ``log_lines=False`` it writes none (the caller logs
  its own lines: the trainer's per-``log_every`` line with losses and rate; see :attr:`Progress.bar`).
- ``enabled=False`` (e.g. every rank but rank 0 of a distributed run) shows and logs nothing.

Count lines read ``"<desc>: <n>/<total> <unit> (<elapsed> s)"``; byte lines read
``"<desc>: <done> (<pct> %) at <rate>/s"`` after a first ``"<desc>: starting|resuming at <done> of
<total>"`` line (time cadence only).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Mapping, Optional

from tqdm import tqdm


def fmt_bytes(n: float | None) -> str:
    """``1536 -> "1.5 KiB"``; whole bytes below 1 KiB; ``None -> "?"`` (an unknown size)."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def on_terminal() -> bool:
    """Whether stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


class Progress:
    """Progress of ``total`` units of work (see the module docstring for what is shown where).

    ``desc``: the label of the bar / log lines. ``total``: units expected (``None``: unknown, only
    with ``every_s``). ``unit``: ``"img"``, ``"it"``, ``"clip"`` ...; ``"B"`` counts bytes.
    ``logger``: the caller's module logger, used for the lines off a terminal. ``every_s``: log
    every this many seconds instead of every ~10 % of ``total``. ``initial``: units already done
    (a resumed download). ``enabled``: False shows and logs nothing. ``log_lines``: False logs
    nothing off a terminal. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, desc: str, total: Optional[int], *, unit: str, logger: logging.Logger,
                 every_s: Optional[float] = None, initial: int = 0, enabled: bool = True,
                 log_lines: bool = True):
        if total is None and every_s is None:
            raise ValueError("Progress: an unknown total needs the time cadence every_s")
        self.desc, self.unit, self.logger, self.every_s = desc, unit, logger, every_s
        self.total = None if total is None else max(int(total), 0)
        self.n = self.start_n = int(initial)
        self.t0 = self.t_last = time.monotonic()
        self.bar: Optional[tqdm] = None  # None: no bar is drawn (off a terminal, or disabled)
        self._log = enabled and log_lines and not on_terminal()
        self._next = self.n + self._step()
        if enabled and on_terminal():
            extra = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True, **extra)
        elif self._log and every_s is not None:
            self.logger.info("%s: %s%s", desc, f"resuming at {self._amount(self.n)}" if self.n else "starting",
                             f" of {self._amount(self.total)}" if self.total else "")

    def _step(self) -> int:
        return max(1, (self.total or 0) // 10)

    def _amount(self, n: float | None) -> str:
        return fmt_bytes(n) if self.unit == "B" else f"{n} {self.unit}"

    def update(self, k: int = 1) -> None:
        """``k`` more units done."""
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif not self._log:
            return
        elif self.every_s is not None:
            now = time.monotonic()
            if now - self.t_last >= self.every_s:
                self.t_last = now
                rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
                pct = f" ({100.0 * self.n / self.total:.1f} %)" if self.total else ""
                self.logger.info("%s: %s%s at %s/s", self.desc, self._amount(self.n), pct, self._amount(rate)
                                 if self.unit == "B" else f"{rate:.2f} {self.unit}")
        elif self.n >= self._next or self.n == self.total:
            self.logger.info("%s: %d/%d %s (%.1f s)", self.desc, self.n, self.total, self.unit,
                             time.monotonic() - self.t0)
            self._next = self.n + self._step()

    def set_postfix(self, values: Mapping[str, str]) -> None:
        """Values shown after the bar (e.g. the current losses); nothing off a terminal."""
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
