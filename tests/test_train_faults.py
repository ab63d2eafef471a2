"""Faults around the trainer's output folder (pclbench.pretrain.trainer, resume, run_folder): torn state files, two trainers on one folder,
a full disk, and the per-attempt log that survives Snakemake's deletion of the job log on retries."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from pclbench.pretrain.checkpoint import DiskFullError, load_checkpoint
from pclbench.pretrain.preemption import Preempted
from pclbench.pretrain.run_folder import EXIT_LOCKED, OutputLocked
from pclbench.pretrain.trainer import train

from test_resume import _signal_at
from test_train import config, write_shard

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("shard"))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _stopped_run(out, shard, monkeypatch, k=3):
    """A run stopped by SIGTERM in iteration k: state/last.pt (iteration k) and prev.pt (iteration 2)."""
    _signal_at(monkeypatch, k, signal.SIGTERM)
    with pytest.raises(Preempted):
        train("pcl", shard, out, config())
    monkeypatch.undo()


def test_torn_last_pt_falls_back_to_prev_pt(tmp_path, shard, monkeypatch, caplog):
    out = tmp_path / "pcl"
    _stopped_run(out, shard, monkeypatch)
    assert load_checkpoint(out / "state" / "prev.pt")["iteration"] == 2  # the epoch-1 state, rotated
    _truncate(out / "state" / "last.pt")
    summary = train("pcl", shard, out, config())
    assert summary["resumed"] and summary["resumed_from_iteration"] == 2
    assert "last.pt cannot be read" in caplog.text and "falling back" in caplog.text
    bad = list((out / "state").glob("bad-*/last.pt"))
    assert len(bad) == 1  # kept, not deleted
    assert load_checkpoint(out / "checkpoint.pt")["finished"]


def test_both_states_torn_restart_from_scratch(tmp_path, shard, monkeypatch, caplog):
    out = tmp_path / "pcl"
    _stopped_run(out, shard, monkeypatch)
    for name in ("last.pt", "prev.pt"):
        _truncate(out / "state" / name)
    summary = train("pcl", shard, out, config())
    assert not summary["resumed"] and summary["iterations"] == 4
    assert "restarting from scratch" in caplog.text
    assert sorted(p.name for p in (out / "state").glob("bad-*/*")) == ["last.pt", "prev.pt"]
    # a second rerun finds the finished run: nothing loops on the bad files
    assert train("pcl", shard, out, config())["already_finished"]


def test_a_second_trainer_on_the_folder_waits_then_exits_with_a_distinct_status(tmp_path, shard, caplog):
    """pretrain.lock_wait_s: the second trainer waits that long for the lock (one log line), then exits 73
    (was: exit 73 at once; tests/test_preempt.py covers a lock released during the wait)."""
    out = tmp_path / "pcl"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as locked:
            train("pcl", shard, out, config(epochs=1, lock_wait_s=1))
        assert locked.value.code == EXIT_LOCKED != 0 and str(out) in str(locked.value)
        assert "waiting up to 1 s" in caplog.text and "waited 1 s" in str(locked.value)
        assert not (out / "metrics.jsonl.partial").exists()  # nothing written by the refused trainer
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder is gone: its lock died with it
    assert train("pcl", shard, out, config(epochs=1))["iterations"] == 2


def test_disk_full_removes_the_tmp_file_and_says_so(tmp_path, shard, monkeypatch):
    out = tmp_path / "pcl"

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as e:
        train("pcl", shard, out, config(epochs=2))
    msg = str(e.value)
    assert "disk full" in msg and str(out / "state") in msg
    assert not list((out / "state").iterdir())  # the temporary (pclbench.core.io.atomic_file's) is gone


def test_stale_tmp_files_are_removed_on_start(tmp_path, shard):
    out = tmp_path / "pcl"
    (out / "state").mkdir(parents=True)
    # pclbench.core.io.atomic_file's temporaries of killed trainers, on this host or another (shared file system)
    stale = [out / "state" / ".last.pt.tmp-otherhost-12345-a1b2c3", out / ".checkpoint.pt.tmp-node7-999-x9y8",
             out / ".metrics.csv.tmp-node7-7-q1"]
    for p in stale:
        p.write_bytes(b"x")
    keep = out / "notes.tmp"  # not a name the trainer writes
    keep.write_text("mine")
    train("pcl", shard, out, config(epochs=1))
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_attempts_log_keeps_every_attempt(tmp_path, shard, monkeypatch):
    out = tmp_path / "pcl"
    _stopped_run(out, shard, monkeypatch, k=1)
    train("pcl", shard, out, config())
    text = (out / "attempts.log").read_text()
    headers = [ln for ln in text.splitlines() if ln.startswith("=== attempt ")]
    assert [h.split(":")[0] for h in headers] == ["=== attempt 1", "=== attempt 2"]
    assert f"pid {os.getpid()}" in headers[0]
    assert "starts from scratch" in text and "resumes from iteration 1" in text
    assert "exit status 75" in text and "attempt finished" in text
    assert text.index("=== attempt 2") < text.index("resumes from iteration 1")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full (every write fails ENOSPC)")
def test_save_checkpoint_on_a_really_full_device(tmp_path, monkeypatch):
    """/dev/full (Linux full(4) man page: every write fails with ENOSPC): torch.save into it raises a
    plain OSError 28, which save_checkpoint turns into DiskFullError; the old file stays."""
    import builtins

    from pclbench.pretrain import checkpoint as ck
    from test_checkpoint import make_state
    from pclbench.models import build_encoder

    enc = build_encoder("facecycle", width=8)
    path = ck.save_checkpoint(tmp_path / "c.pt", make_state(enc, epoch=1))
    real_open = builtins.open
    monkeypatch.setattr(ck, "open", lambda p, mode="r", *a, **k: real_open("/dev/full", mode), raising=False)
    with pytest.raises(DiskFullError, match="disk full"):
        ck.save_checkpoint(path, make_state(enc, epoch=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_atomic_dir_removes_a_dead_writers_tmp_folder_only(tmp_path):
    from pclbench.core.io import _tmp_prefix, atomic_dir

    final = tmp_path / "split"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    mine = _tmp_prefix("split")  # .split.tmp-<host>-<this pid>-
    stale = tmp_path / (mine.rsplit("-", 2)[0] + f"-{dead}-abc")
    alive = tmp_path / (mine + "xyz")  # this (running) process: kept
    other_host = tmp_path / ".split.tmp-someotherhost-1-abc"  # another host's writer: kept
    for d in (stale, alive, other_host):
        d.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and alive.is_dir() and other_host.is_dir() and (final / "x").read_text() == "1"
