"""Put a FIFO where a file is expected, and run code that might block on it without letting it hang
the test suite."""
from __future__ import annotations

import os
import threading

import pytest


def replace_with_fifo(path):
    """Replace the file at ``path`` by a FIFO (opening it for reading blocks until a writer comes)."""
    path.unlink()
    os.mkfifo(path)
    return path


def unblock(fifo) -> None:
    """Open a FIFO for writing once so that a reader stuck on it (if any) returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


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
            unblock(f)
        pytest.fail("blocked on a FIFO")
    if "error" in box:
        raise box["error"]
    return box["result"]
