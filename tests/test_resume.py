"""Exact resume after SIGTERM / SIGUSR1 (pclbench.pretrain.trainer, resume): a run stopped at iteration k and resumed ends
with bitwise the weights, optimiser state, DWA history and metrics of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pclbench.pretrain.checkpoint import load_checkpoint
from pclbench.pretrain.methods import PCL
from pclbench.pretrain.preemption import EXIT_REQUEUE, Preempted
from pclbench.pretrain.trainer import train

from test_train import config, write_shard

torch.set_num_threads(2)
# 6 videos // batch 3 = 2 iterations per epoch, 2 epochs = 4 iterations.


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("shard"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shard):
    out = tmp_path_factory.mktemp("ref") / "pcl"
    train("pcl", shard, out, config())
    return out


def _signal_at(monkeypatch, k: int, sig: signal.Signals) -> None:
    """Send ``sig`` to this process during iteration ``k`` (1-based), as Slurm would."""
    original = PCL.train_iteration
    calls = {"n": 0}

    def wrapped(self, *args):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), sig)  # handled before the iteration's step finishes
        return original(self, *args)

    monkeypatch.setattr(PCL, "train_iteration", wrapped)


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"}
            for s in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("k, sig, position", [
    (1, signal.SIGTERM, {"epoch": 1, "step": 1}),  # inside epoch 1
    (2, signal.SIGUSR1, None),  # the last iteration of epoch 1: an epoch-boundary state
    (3, signal.SIGTERM, {"epoch": 2, "step": 1}),  # inside epoch 2, after a DWA update
])
def test_stop_on_signal_then_resume_equals_an_uninterrupted_run(tmp_path, shard, reference, monkeypatch,
                                                                k, sig, position):
    out = tmp_path / "pcl"
    _signal_at(monkeypatch, k, sig)
    with pytest.raises(Preempted) as stopped:
        train("pcl", shard, out, config())
    assert stopped.value.code == EXIT_REQUEUE == 75 and sig.name in str(stopped.value)
    # the step in flight was finished and saved; checkpoint.pt (the declared output) is not written
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()
    state = load_checkpoint(out / "state" / "last.pt")
    assert state["iteration"] == k and not state["finished"]
    got_pos = None if state["position"] is None else {key: state["position"][key] for key in ("epoch", "step")}
    assert got_pos == position
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    monkeypatch.undo()
    summary = train("pcl", shard, out, config())
    assert summary["resumed"] and summary["resumed_from_iteration"] == k
    ref, got = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, v in ref["model"].items():
        assert torch.equal(got["model"][name], v), name  # bitwise
    for (_, a), (_, b) in zip(sorted(ref["optimizer"]["state"].items()), sorted(got["optimizer"]["state"].items())):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert got["extra"] == ref["extra"]  # DWA history: the epoch means include the stopped epoch's steps
    assert torch.equal(got["rng"]["views"], ref["rng"]["views"])
    assert _records(out) == _records(reference)
    # only the finished run's hard link is left (state/final.pt: restores a TIMEOUT-deleted checkpoint.pt)
    assert [p.name for p in (out / "state").iterdir()] == ["final.pt"]
    assert (out / "state" / "final.pt").samefile(out / "checkpoint.pt")


def test_a_state_with_another_config_is_set_aside(tmp_path, shard, monkeypatch):
    out = tmp_path / "pcl"
    _signal_at(monkeypatch, 1, signal.SIGTERM)
    with pytest.raises(Preempted):
        train("pcl", shard, out, config(epochs=1))
    monkeypatch.undo()
    cfg = config(epochs=1)
    cfg["pcl"]["temperature"] = 0.5
    summary = train("pcl", shard, out, cfg)
    assert not summary["resumed"] and summary["iterations"] == 2
    assert load_checkpoint(out / "checkpoint.pt")["config"]["pcl"]["temperature"] == 0.5


def test_cli_exits_with_the_requeue_status(tmp_path, shard):
    """The real process: SIGTERM during an iteration -> state saved, exit status 75."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config(epochs=1)))
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads(1)
        from pclbench.pretrain.methods import PCL
        from pclbench.cli import main
        original = PCL.train_iteration
        def wrapped(self, *args):
            os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args)
        PCL.train_iteration = wrapped
        sys.exit(main(["pretrain", "--params", open({str(params)!r}).read(), "--method", "pcl",
                       "--data", {str(shard)!r}, "--out", {str(tmp_path / "out")!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_REQUEUE, proc.stderr[-2000:]
    assert (tmp_path / "out" / "state" / "last.pt").is_file()
