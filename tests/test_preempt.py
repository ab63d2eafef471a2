"""The trainer's own stop before a Slurm time limit, the wait for the output folder's lock, and the
finished run kept for a job that fails after training (pclbench.pretrain.preemption.JobDeadline, pclbench.pretrain.run_folder.lock_out_dir,
state/final.pt of pclbench.pretrain.resume).

The fake ``squeue`` prints what squeue(1) documents for ``%L`` ("days-hours:minutes:seconds ... NOT_SET
... UNLIMITED") in the forms squeue's ``_print_secs`` writes (SchedMD/slurm, src/squeue/print.c:
``D-HH:MM:SS``, ``H:MM:SS``, ``M:SS``, ``INVALID`` for a negative time).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pclbench.pretrain import preemption as preempt_mod
from pclbench.pretrain import resume as resume_mod
from pclbench.pretrain.checkpoint import load_checkpoint
from pclbench.pretrain.preemption import EXIT_REQUEUE, JobDeadline, Preempted, TimeLimitNear, parse_time_left
from pclbench.pretrain.trainer import train

from test_resume import _signal_at, reference, shard  # noqa: F401 (module fixtures)
from test_train import config

torch.set_num_threads(2)


@pytest.mark.parametrize("text, seconds", [
    ("1-02:03:04", 93784.0), ("12-00:00:00", 12 * 86400.0), ("2:03:04", 7384.0), ("23:59:59", 86399.0),
    ("2:03", 123.0), ("0:05", 5.0), ("59:59", 3599.0), (" 4:00\n", 240.0),
    ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", 0.0),
])
def test_parse_time_left_reads_squeue_forms(text, seconds):
    assert parse_time_left(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1-02", "a:bc", "1:2:3:4", "-1:00", "1-2:3", "slurm_load_jobs error"])
def test_parse_time_left_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_time_left(text)


def _fake_squeue(bin_dir: Path, answers: list[str], fail_after: int | None = None) -> Path:
    """An executable ``squeue`` on PATH: call i prints answers[min(i, len - 1)] (exit 1 from call
    ``fail_after`` on) and appends its arguments to calls.txt."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "answers.json").write_text(json.dumps({"answers": answers, "fail_after": fail_after}))
    (bin_dir / "calls.txt").unlink(missing_ok=True)
    script = bin_dir / "squeue"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        d = {str(bin_dir)!r}
        spec = json.load(open(d + "/answers.json"))
        with open(d + "/calls.txt", "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        n = sum(1 for _ in open(d + "/calls.txt")) - 1
        if spec["fail_after"] is not None and n >= spec["fail_after"]:
            print("squeue: error: Invalid job id specified", file=sys.stderr)
            sys.exit(1)
        print(spec["answers"][min(n, len(spec["answers"]) - 1)])
    """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _calls(bin_dir: Path) -> list[str]:
    p = bin_dir / "calls.txt"
    return p.read_text().splitlines() if p.is_file() else []


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    """SLURM_JOB_ID set and a fake squeue first on PATH; returns a function that sets its answers."""
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda answers, fail_after=None: _fake_squeue(bin_dir, answers, fail_after)


def test_deadline_queries_the_job_and_rechecks(slurm_env):
    bin_dir = slurm_env(["1-00:00:00", "2:00"])
    now = [100.0]
    d = JobDeadline.from_env()
    d.clock = lambda: now[0]
    assert d.job_id == "4242"
    assert d.time_left() == 86400.0
    now[0] += 30  # within recheck_s: no query, the monotonic clock counts down
    assert d.time_left() == 86400.0 - 30
    now[0] += preempt_mod.LIMIT_RECHECK_S  # due: re-read (the limit was shortened, e.g. pre-emption GraceTime)
    assert d.time_left() == 120.0
    assert _calls(bin_dir) == ["-h -j 4242 -o %L"] * 2


def test_deadline_unlimited_and_failing_squeue(slurm_env, caplog):
    slurm_env(["UNLIMITED"])
    assert JobDeadline.from_env().time_left() is None
    slurm_env(["NOT_SET"])
    assert JobDeadline.from_env().time_left() is None

    bin_dir = slurm_env(["10:00"], fail_after=1)  # first call answers, the later ones fail
    now = [0.0]
    d = JobDeadline("4242", recheck_s=1, clock=lambda: now[0])
    assert d.time_left() == 600.0
    now[0] = 5.0
    with caplog.at_level(logging.WARNING, "pclbench"):
        assert d.time_left() == 595.0  # squeue failed: the last known deadline is kept
        now[0] = 9.0
        assert d.time_left() == 591.0
    assert caplog.text.count("cannot read the time limit") == 1 and "keeping the last known" in caplog.text
    assert len(_calls(bin_dir)) == 3

    slurm_env(["x"], fail_after=0)  # failing from the start: no limit known, the run is not stopped
    assert JobDeadline("4242").time_left() is None


def test_no_deadline_outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    assert JobDeadline.from_env() is None


def test_too_little_time_left_exits_75_without_touching_anything(tmp_path, shard, slurm_env):  # noqa: F811
    slurm_env(["0:29"])
    out = tmp_path / "pcl"
    with pytest.raises(TimeLimitNear) as e:
        train("pcl", shard, out, config(stop_before_limit_s=30))
    assert e.value.code == EXIT_REQUEUE and "29 s left" in str(e.value)
    assert not out.exists()  # no lock file, no attempts.log, no state
    # 0 = off: the same job trains
    assert train("pcl", shard, out, config(stop_before_limit_s=0, epochs=1))["iterations"] == 2


def test_stop_before_the_limit_then_resume_equals_an_uninterrupted_run(tmp_path, shard, reference, slurm_env,  # noqa: F811
                                                                      monkeypatch):
    # start check + iterations 1, 2: 10 min left; from the query after iteration 3 on: 20 s left
    bin_dir = slurm_env(["10:00", "10:00", "10:00", "0:20"])
    monkeypatch.setattr(preempt_mod, "LIMIT_RECHECK_S", 0.0)  # re-read squeue after every iteration
    out = tmp_path / "pcl"
    with pytest.raises(Preempted) as stopped:
        train("pcl", shard, out, config(stop_before_limit_s=60))
    assert stopped.value.code == EXIT_REQUEUE and "time limit of Slurm job 4242" in str(stopped.value)
    state = load_checkpoint(out / "state" / "last.pt")
    assert state["iteration"] == 3 and state["position"]["epoch"] == 2 and state["position"]["step"] == 1
    assert len(_calls(bin_dir)) == 4
    assert "time limit" in state["attempts"][0]["stop"] and state["attempts"][0]["saved_at_iteration"] == 3

    monkeypatch.delenv("SLURM_JOB_ID")  # the next job: no limit known here
    summary = train("pcl", shard, out, config(stop_before_limit_s=60))
    assert summary["resumed_from_iteration"] == 3
    ref, got = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, v in ref["model"].items():
        assert torch.equal(got["model"][name], v), name
    run = json.loads((out / "run.json").read_text())
    assert [a["resumed_from_iteration"] for a in run["attempts"]] == [0, 3]
    assert "time limit" in run["attempts"][0]["stop"] and run["attempts"][1]["stop"] == "finished"
    text = (out / "attempts.log").read_text()
    assert "exit status 75" in text and "time limit" in text


def test_waits_for_the_lock_then_resumes_from_what_the_holder_saved(tmp_path, shard, reference, monkeypatch,  # noqa: F811
                                                                   caplog):
    """An orphaned trainer still saving: it holds the lock and its state/last.pt appears only when it
    releases. The waiting trainer must wait, then resume from that state (never train beside it)."""
    out = tmp_path / "pcl"
    _signal_at(monkeypatch, 3, signal.SIGUSR1)
    with pytest.raises(Preempted):
        train("pcl", shard, out, config())
    monkeypatch.undo()
    hidden = tmp_path / "saving.pt"
    os.replace(out / "state" / "last.pt", hidden)
    (out / "state" / "prev.pt").unlink()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"pid %d (the orphan)" % os.getpid(), 0)
        print("locked", flush=True)
        time.sleep(2)  # "saving"
        os.replace({str(hidden)!r}, {str(out / 'state' / 'last.pt')!r})
        os.close(fd)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.INFO, "pclbench"):
            summary = train("pcl", shard, out, config(lock_wait_s=120))
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert "(the orphan)" in caplog.text and "waiting up to 120 s" in caplog.text and "released after" in caplog.text
    assert summary["resumed_from_iteration"] == 3  # the state the holder put in place while holding the lock
    ref, got = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, v in ref["model"].items():
        assert torch.equal(got["model"][name], v), name
    assert "SIGUSR1" in summary["attempts"][0]["stop"]


def test_a_finished_run_whose_outputs_were_deleted_is_restored_not_retrained(tmp_path, shard, caplog):  # noqa: F811
    out = tmp_path / "pcl"
    first = train("pcl", shard, out, config(epochs=1))
    weights = load_checkpoint(out / "checkpoint.pt")["model"]
    csv = (out / "metrics.csv").read_text()
    # Snakemake deletes a failed job's declared outputs (a TIMEOUT after training finished) and reruns it
    (out / "checkpoint.pt").unlink()
    (out / "metrics.csv").unlink()
    with caplog.at_level(logging.INFO, "pclbench"):
        again = train("pcl", shard, out, config(epochs=1))
    assert again.get("already_finished") and "restored the finished run" in caplog.text
    assert (out / "metrics.csv").read_text() == csv
    got = load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(got[k], v) for k, v in weights.items())
    assert first["iterations"] == again["iterations"] == 2


def test_a_finished_run_of_other_code_or_config_is_not_restored(tmp_path, shard, monkeypatch, caplog):  # noqa: F811
    out = tmp_path / "pcl"
    train("pcl", shard, out, config(epochs=1))
    (out / "checkpoint.pt").unlink()
    monkeypatch.setattr(resume_mod, "code_fingerprint", lambda: "other code")
    with caplog.at_level(logging.INFO, "pclbench"):
        summary = train("pcl", shard, out, config(epochs=1))
    assert not summary.get("already_finished") and summary["iterations"] == 2 and not summary["resumed"]
    assert "pclbench code changed" in caplog.text
    assert sorted(p.name for p in (out / "state").iterdir()) == ["final.pt"]  # the stale one is gone

    (out / "checkpoint.pt").unlink()
    caplog.clear()
    summary = train("pcl", shard, out, config(epochs=1, lr=2e-3))  # another config: trains
    assert not summary.get("already_finished") and "config differs" in caplog.text
