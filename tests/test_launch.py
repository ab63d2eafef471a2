"""pclbench.launch: which process tree runs the trainer for a given GPU / node request.

The expected command lines are written out by hand from the launchers' documented interfaces
(torchrun: --standalone, --nproc_per_node; srun: --nodes, --ntasks, --ntasks-per-node, --gpus-per-task).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from pclbench import launch

PY = "/opt/py/bin/python"
ARGS = ["pretrain", "--params", "{}", "--method", "pcl"]


def test_one_gpu_or_cpu_runs_the_trainer_itself():
    for gpus in (0, 1, "0", "1", None, ""):
        cmd, env = launch.launch_command(gpus, 1, ARGS, {}, python=PY)
        assert cmd == [PY, "-m", "pclbench", *ARGS] and env == {}


def test_several_gpus_on_one_node_use_torchrun():
    cmd, env = launch.launch_command(4, 1, ARGS, {"SLURM_JOB_ID": "7"}, python=PY)
    assert cmd == [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "pclbench", *ARGS]
    assert env == {}


def test_several_nodes_use_srun_with_the_first_host_as_rendezvous(monkeypatch):
    monkeypatch.setattr(launch, "slurm_hosts", lambda nodelist: {"gpu[03-04]": ["gpu03", "gpu04"]}[nodelist])
    cmd, env = launch.launch_command(8, 2, ARGS, {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[03-04]"}, python=PY)
    assert cmd == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--gpus-per-task=1",
                   PY, "-m", "pclbench", *ARGS]
    assert env == {"MASTER_ADDR": "gpu03", "MASTER_PORT": "29500"}
    # an address/port the user exported wins
    cmd, env = launch.launch_command(2, 2, ARGS, {"SLURM_JOB_ID": "7", "MASTER_ADDR": "h", "MASTER_PORT": "1234"},
                                     python=PY)
    assert cmd[:4] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"] and env == {"MASTER_PORT": "1234"}


@pytest.mark.parametrize("gpus, nodes, env, words", [
    (4, 2, {}, "SLURM_JOB_ID"),                       # several nodes outside Slurm
    (3, 2, {"SLURM_JOB_ID": "1"}, "does not divide"),  # uneven GPUs per node
    ("two", 1, {}, "--gpus"),
    (1, -1, {}, "--nodes"),
])
def test_bad_requests_name_the_problem(gpus, nodes, env, words):
    with pytest.raises(ValueError, match=words):
        launch.launch_command(gpus, nodes, ARGS, env, python=PY)


def test_main_execs_the_trainer_and_keeps_its_exit_status():
    """`python -m pclbench.launch -- <args>` replaces itself by `python -m pclbench <args>`: the exit
    status and messages are the trainer's (here its argument parser rejecting an unknown subcommand)."""
    proc = subprocess.run([sys.executable, "-m", "pclbench.launch", "--gpus", "1", "--", "no-such-command"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pclbench.launch: " in proc.stderr  # the launcher said what it runs ...
    assert "invalid choice: 'no-such-command'" in proc.stderr  # ... and `pclbench`'s own parser answered
