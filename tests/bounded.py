"""Run code that might block on a FIFO without letting it hang the test suite."""
from __future__ import annotations

import os
import threading

import pytest


def run_bounded(fn, fifos=(), timeout: float = 120.0):
    """``fn()`` in a daemon thread: its result, or its exception re-raised; a run still blocked after
    ``timeout`` (it opened a FIFO) fails the test after unblocking the FIFOs."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail("blocked on a FIFO")
    if "error" in box:
        raise box["error"]
    return box["result"]
