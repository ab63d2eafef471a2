"""Pre-emption, signals and time limits for real: the pretrain target through `--profile profiles/slurm`
on the local Slurm cluster of tests/slurm/start_cluster.sh (fixture from tests/test_slurm.py; skipped
without a cluster unless PCLBENCH_REQUIRE_SLURM=1).

Four runs of the same config (the tiny workflow with a wider encoder, so an iteration takes about two
seconds on one core), each started once the previous one's job is queued, one Slurm job each (1 CPU:
two run at a time on the 2-CPU node):

* ``usr1``: ``scancel --signal=USR1 <job>`` once a few iterations are done (scancel(1): without
  -b/--full the signal goes to the job steps, not to the batch shell);
* ``term``: ``scancel --signal=TERM <job>`` likewise;
* ``requeue``: ``scontrol requeue <job>`` (scontrol(1): "Requeue a running ... batch job into pending
  state"; the same job id runs the batch script again);
* ``limit``: ``runtime=1`` (sbatch -t 1 minute) and ``pretrain.stop_before_limit_s: 35``: the trainer
  reads the job's time left (squeue %L) and stops itself; the next job resumes.

A requeued job waits ``cred_expire`` (120 s by default) before it starts again (slurm.conf(5), AuthInfo
cred_expire: "This also controls how long a requeued job must wait before starting again"), so the
requeue run sets the pace (about 4 minutes in all on 2 cores).

Each must end COMPLETED with the weights of one uninterrupted local run (torch.equal on every tensor),
and its run.json must record a resumed attempt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_slurm import ROOT, SUBMITTED, TINY, local_set_resources, slurm_cluster  # noqa: F401 (fixture)

SLOW = """\
model:
  width: 64          # ~2 s per iteration on one core: signals land mid-run
pretrain:
  epochs: 9
  batch_size: 10     # 20 clips -> 2 iterations per epoch: 18 iterations
  num_threads: 1
  swap_grid_every: 0
  checkpoint_every: 100   # no periodic save: a resume must come from the state saved on the stop
  lock_wait_s: 300
"""
LIMIT = """\
pretrain:
  stop_before_limit_s: 35
"""
# requeue first: its job waits 2 minutes in the queue after the requeue, so it sets the pace
ACTIONS = ("requeue", "usr1", "term", "limit")
AFTER_ITERATIONS = 3  # send the signal once the trainer has logged this many iterations


def _snakemake(workdir: Path, extra_config: list[str], node_mem_mb: int, runtime: int, log: Path):
    env = {**os.environ, "PCLBENCH_GPUS": "0", "PCLBENCH_NODES": "1"}
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "PCLBENCH_GPU_PARTITION", "SLURM_CONF"):
        env.pop(var, None)
    resources = [r for r in local_set_resources(node_mem_mb, {"PCLBENCH_GPUS": "0"})
                 if not r.startswith(("pretrain:cpus_per_task=", "pretrain:runtime="))]
    resources += ["pretrain:cpus_per_task=1", f"pretrain:runtime={runtime}"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", *TINY, *extra_config, "--profile", str(ROOT / "profiles" / "slurm"), "--cores", "2",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs", "--default-resources", "mem_mb=256", "runtime=30",
           "--set-resources", *resources, "--", "results/pretrain/pcl/checkpoint.pt"]
    fh = open(log, "w")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, text=True), fh


def _iterations(workdir: Path) -> int:
    """The last iteration the trainer logged (tiny.yaml: log_every 1) in attempts.log, which every
    attempt appends to (metrics.jsonl.partial is buffered until a save)."""
    p = workdir / "results" / "pretrain" / "pcl" / "attempts.log"
    try:
        found = re.findall(r"pclbench\.pretrain\.trainer: epoch \d+/\d+ it (\d+):", p.read_text())
    except OSError:
        return 0
    return int(found[-1]) if found else 0


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workdir holding the aligned tiny shard (made locally, no Slurm) and the override files."""
    d = tmp_path_factory.mktemp("template")
    (d / "slow.yaml").write_text(SLOW)
    (d / "limit.yaml").write_text(LIMIT)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(d),
                           "--configfile", *TINY, str(d / "slow.yaml"), "--cores", "2",
                           "data/aligned/synth_vox/train"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return d


@pytest.fixture(scope="module")
def reference(template):
    """One uninterrupted local run of the same config: the weights every Slurm run must end with."""
    out = template / "reference"
    proc = subprocess.run([sys.executable, "-m", "pclbench", "pretrain", *sum((["--config", c] for c in TINY), []),
                           "--config", str(template / "slow.yaml"), "--method", "pcl",
                           "--data", str(template / "data" / "aligned" / "synth_vox" / "train"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_signals_requeue_and_time_limit_resume_exactly(tmp_path, template, reference, slurm_cluster):
    runs = {}
    deadline = time.monotonic() + 900
    try:
        while len(runs) < len(ACTIONS) or any(r["proc"].poll() is None for r in runs.values()):
            assert time.monotonic() < deadline, "the Slurm runs did not finish in 15 minutes"
            # start the runs one after the other, each once the previous one's job is submitted (queue order)
            if len(runs) < len(ACTIONS) and all(r["job"] or r["proc"].poll() is not None for r in runs.values()):
                action = ACTIONS[len(runs)]
                wd = tmp_path / action
                shutil.copytree(template, wd, symlinks=True, ignore=shutil.ignore_patterns("reference"))
                extra = [str(wd / "slow.yaml")] + ([str(wd / "limit.yaml")] if action == "limit" else [])
                proc, fh = _snakemake(wd, extra, slurm_cluster["mem_mb"], 1 if action == "limit" else 30,
                                      tmp_path / f"{action}.log")
                runs[action] = {"wd": wd, "proc": proc, "fh": fh, "sent": action == "limit", "job": None}
            for action, r in runs.items():
                if r["job"] is None:
                    found = SUBMITTED.findall((tmp_path / f"{action}.log").read_text())
                    r["job"] = found[0][0] if found else None
                if r["sent"] or r["proc"].poll() is not None:
                    continue
                if r["job"] and _iterations(r["wd"]) >= AFTER_ITERATIONS:
                    cmd = {"usr1": ["scancel", "--signal=USR1", r["job"]],
                           "term": ["scancel", "--signal=TERM", r["job"]],
                           "requeue": ["scontrol", "requeue", r["job"]]}[action]
                    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
                    r["sent"] = True
            time.sleep(0.5)
    finally:
        for r in runs.values():
            if r["proc"].poll() is None:
                r["proc"].kill()
            r["fh"].close()

    failures = []
    for action, r in runs.items():
        log = (tmp_path / f"{action}.log").read_text()
        out = r["wd"] / "results" / "pretrain" / "pcl"
        attempts_log = (out / "attempts.log").read_text() if (out / "attempts.log").is_file() else ""
        where = f"{action}:\n{log[-5000:]}\n--- attempts.log:\n{attempts_log[-5000:]}"
        if r["proc"].returncode != 0 or not (out / "checkpoint.pt").is_file():
            failures.append(f"snakemake failed ({r['proc'].returncode}) {where}")
            continue
        got = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        diff = [k for k, v in reference["model"].items() if not torch.equal(got["model"][k], v)]
        run = json.loads((out / "run.json").read_text())
        attempts = run.get("attempts") or []
        resumed = [a for a in attempts if a.get("resumed_from_iteration", 0) > 0]
        if diff or not resumed or not got["finished"]:
            failures.append(f"weights differ in {diff[:5]} / attempts {attempts} {where}")
            continue
        stops = [a.get("stop") or "" for a in attempts[:-1]]
        expect = {"usr1": "SIGUSR1", "term": "SIGTERM", "limit": "time limit"}.get(action)
        if expect and not any(expect in s for s in stops):
            failures.append(f"no attempt stopped by {expect}: {attempts} {where}")
    assert not failures, "\n\n".join(failures)
