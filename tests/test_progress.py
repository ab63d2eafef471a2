"""core/progress.py: the one progress reporter (tqdm on a terminal, log lines elsewhere), against
hand-written expectations of which lines appear when."""
from __future__ import annotations

import logging
import types

import pytest

import pclbench.core.progress as progress_mod
from pclbench.core.progress import Progress, fmt_bytes

LOGGER = logging.getLogger("pclbench.test_progress")


class Clock:
    """A hand-driven ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.setattr(progress_mod, "on_terminal", lambda: False)


@pytest.fixture
def tty(monkeypatch):
    monkeypatch.setattr(progress_mod, "on_terminal", lambda: True)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER.name]


def test_fmt_bytes():
    assert [fmt_bytes(n) for n in (None, 0, 1023, 1024, 1536, 5 * 1024 ** 2, 3 * 1024 ** 3, 2048 * 1024 ** 3)] == \
        ["?", "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB", "2048.0 GiB"]


def test_count_cadence_logs_every_tenth_and_the_end(no_tty, clock, caplog):
    with caplog.at_level(logging.INFO, LOGGER.name), Progress("gen", 30, unit="img", logger=LOGGER) as p:
        for i in range(30):
            clock.now += 0.5
            p.update(1)
        assert p.bar is None
    # 30 // 10 = 3: lines at 3, 6, ..., 30; elapsed 0.5 s per unit
    assert messages(caplog) == [f"gen: {n}/30 img ({0.5 * n:.1f} s)" for n in range(3, 31, 3)]


def test_count_cadence_with_big_steps_and_a_small_total(no_tty, clock, caplog):
    with caplog.at_level(logging.INFO, LOGGER.name):
        p = Progress("prep", 10, unit="clip", logger=LOGGER)
        for _ in range(2):
            p.update(4)  # 4, 8: each past the next mark (n + 1)
        p.update(2)      # 10: the end
        p.close()
        p.close()        # idempotent
    assert messages(caplog) == ["prep: 4/10 clip (0.0 s)", "prep: 8/10 clip (0.0 s)", "prep: 10/10 clip (0.0 s)"]


def test_time_cadence_bytes_with_resume(no_tty, clock, caplog):
    with caplog.at_level(logging.INFO, LOGGER.name):
        p = Progress("ds/file", 4096, unit="B", logger=LOGGER, every_s=10.0, initial=1024)
        clock.now += 4.0
        p.update(1024)   # 4 s since the start: no line
        clock.now += 6.0
        p.update(1024)   # 10 s: a line; 2048 bytes in 10 s
        clock.now += 1.0
        p.update(1024)   # 1 s since the last line: none
        p.close()
    assert messages(caplog) == ["ds/file: resuming at 1.0 KiB of 4.0 KiB",
                                "ds/file: 3.0 KiB (75.0 %) at 205 B/s"]  # 204.8 B/s, whole bytes
    assert p.n == 4096


def test_time_cadence_unknown_total(no_tty, clock, caplog):
    with caplog.at_level(logging.INFO, LOGGER.name):
        p = Progress("x", None, unit="B", logger=LOGGER, every_s=1.0)
        clock.now += 2.0
        p.update(4096)
        p.close()
    assert messages(caplog) == ["x: starting", "x: 4.0 KiB at 2.0 KiB/s"]
    with pytest.raises(ValueError, match="every_s"):
        Progress("x", None, unit="B", logger=LOGGER)


def test_time_cadence_counts(no_tty, clock, caplog):
    with caplog.at_level(logging.INFO, LOGGER.name):
        p = Progress("t", 8, unit="it", logger=LOGGER, every_s=2.0)
        clock.now += 2.0
        p.update(4)
    assert messages(caplog) == ["t: starting of 8 it", "t: 4 it (50.0 %) at 2.00 it/s"]


def test_disabled_and_log_lines_off_write_nothing(no_tty, clock, caplog, capsys):
    with caplog.at_level(logging.INFO, LOGGER.name):
        for kw in ({"enabled": False}, {"log_lines": False}):
            with Progress("q", 4, unit="it", logger=LOGGER, **kw) as p:
                for _ in range(4):
                    p.update()
                p.set_postfix({"loss": "1"})
                assert p.bar is None and p.n == 4
    assert messages(caplog) == []
    assert capsys.readouterr().err == ""


def test_terminal_draws_a_tqdm_bar_on_stderr_and_logs_nothing(tty, caplog, capsys):
    with caplog.at_level(logging.INFO, LOGGER.name):
        with Progress("pretrain", 5, unit="it", logger=LOGGER) as p:
            assert p.bar is not None and p.bar.total == 5
            for _ in range(5):
                p.update()
            p.set_postfix({"loss_face": "0.5"})
        assert p.bar is None
    err = capsys.readouterr().err
    assert "pretrain" in err and "5/5" in err and "loss_face=0.5" in err
    assert messages(caplog) == []


def test_terminal_byte_bar_starts_at_initial_and_scales(tty, capsys):
    with Progress("dl", 4 * 1024 ** 2, unit="B", logger=LOGGER, every_s=1.0, initial=1024 ** 2) as p:
        assert p.bar.n == 1024 ** 2 and p.bar.unit_divisor == 1024 and p.bar.unit_scale
        p.update(1024 ** 2)
    assert "dl" in capsys.readouterr().err


def test_terminal_but_disabled_rank_draws_nothing(tty, capsys):
    with Progress("pretrain", 5, unit="it", logger=LOGGER, enabled=False) as p:
        p.update(5)
        assert p.bar is None
    assert capsys.readouterr().err == ""
