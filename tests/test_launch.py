"""pclbench.pretrain.launch: which process tree runs the trainer for a given GPU / node request.

The expected command lines are written out by hand from the launchers' documented interfaces
(torchrun: --standalone, --nproc_per_node; srun(1): --nodes, --ntasks, --ntasks-per-node,
--cpus-per-task, --mem=0, --distribution=block).

Several nodes: the launcher gets only ``SLURM_JOB_ID`` (snakemake-executor-plugin-slurm-jobstep
0.6.1 strips every other ``SLURM_*`` variable from an ``mpi`` job's rule), so these tests put a fake
``scontrol`` on ``PATH`` and give the launcher nothing else. The fake prints what the real one prints:
``show hostnames tux[1-2]`` one host per line (scontrol(1), EXAMPLES: ``show hostnames tux[1-3]``),
``show job -o <id>`` one ``Key=Value`` line per job (scontrol(1) ``-o, --oneliner``), copied from
Slurm 22.05's output on the test cluster with the node list, CPU count and TRES of a GPU job put
in (``TRES=`` in 22.05; ``ReqTRES=``/``AllocTRES=`` with typed ``gres/gpu:<type>=`` entries in later
versions, as in public scontrol output); an unknown job gets the real error message and status 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pclbench.pretrain import launch

PY = "/opt/py/bin/python"
ARGS = ["pretrain", "--params", "{}", "--method", "pcl"]

# One line of `scontrol show job -o` (Slurm 22.05, the test cluster's own output) for a running job.
RECORD_2205 = (
    "JobId={job} JobName=RUN-UUID UserId=u(1000) GroupId=g(1000) MCS_label=N/A Priority=4294901759 Nice=0 "
    "Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
    "Reboot=0 ExitCode=0:0 RunTime=00:00:03 TimeLimit=2-00:00:00 TimeMin=N/A SubmitTime=2026-12-07T22:36:05 "
    "EligibleTime=2026-12-07T22:36:05 AccrueTime=2026-12-07T22:36:05 StartTime=2026-12-07T22:36:05 "
    "EndTime=2026-12-09T22:36:05 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-07T22:36:05 "
    "Scheduler=Backfill Partition=gpu AllocNode:Sid=login1:1410 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList={nodelist} BatchHost={first} NumNodes={nodes} NumCPUs={cpus} NumTasks={tasks} CPUs/Task=N/A "
    "ReqB:S:C:T=0:0:*:* TRES={tres} Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 "
    "MinMemoryNode=128000M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/work StdErr=/work/x.log StdIn=/dev/null "
    "StdOut=/work/x.log Power="
)
# The same job as later scontrol versions print it (request and allocation apart, typed GPU entry).
RECORD_NEW = RECORD_2205.replace(
    "TRES={tres}", "ReqTRES=cpu=2,mem=128000M,node=2,billing=2,gres/gpu=2 AllocTRES={tres},gres/gpu:a100={gpus}")

FAKE_SCONTROL = '''\
#!{python}
"""A fake scontrol: `show job -o <id>` and `show hostnames <list>` from {data}; every call logged."""
import json, sys
data = json.load(open({data!r}))
with open({data!r} + ".calls", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:3] == ["show", "job", "-o"] and args[3] in data["jobs"]:
    print(data["jobs"][args[3]])
elif args[:2] == ["show", "hostnames"] and len(args) == 3 and args[2] in data["hosts"]:
    print("\\n".join(data["hosts"][args[2]]))
else:
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    sys.exit(1)
'''


def fake_slurm(tmp_path: Path, jobs: dict[str, str], hosts: dict[str, list[str]]) -> Path:
    """A folder with a fake `scontrol` (and a recording `srun`) to put first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    data = tmp_path / "slurm.json"
    data.write_text(json.dumps({"jobs": jobs, "hosts": hosts}))
    scontrol = bindir / "scontrol"
    scontrol.write_text(FAKE_SCONTROL.format(python=sys.executable, data=str(data)))
    scontrol.chmod(0o755)
    # srun: records its argv and the rendezvous variables, exits 75 (the trainer's "requeue me").
    srun = bindir / "srun"
    srun.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        keep = {{k: v for k, v in os.environ.items() if k.startswith(("MASTER_", "SLURM_"))}}
        json.dump({{"argv": sys.argv[1:], "env": keep}}, open({str(tmp_path / "srun.json")!r}, "w"))
        sys.exit(75)
        """))
    srun.chmod(0o755)
    return bindir


def job(job_id="4242", nodelist="tux[1-2]", first="tux1", nodes=2, cpus=64, tasks=8,
        tres="cpu=64,mem=256000M,node=2,billing=64,gres/gpu=8", gpus=8, record=RECORD_2205) -> str:
    return record.format(job=job_id, nodelist=nodelist, first=first, nodes=nodes, cpus=cpus, tasks=tasks,
                         tres=tres, gpus=gpus)


def srun_line(nodes, tasks_per_node, cpus_per_task):
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes * tasks_per_node}", f"--ntasks-per-node={tasks_per_node}",
            f"--cpus-per-task={cpus_per_task}", "--mem=0", "--distribution=block", PY, "-m", "pclbench", *ARGS]


# --- one node ------------------------------------------------------------------------------------


def test_one_gpu_or_cpu_runs_the_trainer_itself():
    for gpus in (0, 1, "0", "1", None, ""):
        cmd, env = launch.launch_command(gpus, 1, ARGS, {}, python=PY)
        assert cmd == [PY, "-m", "pclbench", *ARGS] and env == {}


def test_several_gpus_on_one_node_use_torchrun():
    cmd, env = launch.launch_command(4, 1, ARGS, {"SLURM_JOB_ID": "7"}, python=PY)
    assert cmd == [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "pclbench", *ARGS]
    assert env == {}


# --- several nodes: discovery through scontrol, with only SLURM_JOB_ID ---------------------------

STRIPPED = {"SLURM_JOB_ID": "4242", "SLURM_JOBID": "4242", "SLURM_CLUSTER_NAME": "c",
            "SLURM_SUBMIT_DIR": "/work", "SLURM_SUBMIT_HOST": "login1"}  # what the jobstep keeps


@pytest.mark.parametrize("record", [RECORD_2205, RECORD_NEW], ids=["slurm-22.05", "AllocTRES"])
def test_gpus_x_nodes_ask_slurm_for_hosts_and_gpus(tmp_path, monkeypatch, record):
    """4 GPUs x 2 nodes, as profiles/default asks (gres gpu:4, so the rule passes --gpus 0)."""
    bindir = fake_slurm(tmp_path, {"4242": job(record=record)}, {"tux[1-2]": ["tux1", "tux2"]})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cmd, env = launch.launch_command(0, 2, ARGS, STRIPPED, python=PY)
    assert cmd == srun_line(2, 4, 8)  # 64 CPUs / (2 nodes x 4 tasks)
    assert env == {"MASTER_ADDR": "tux1", "MASTER_PORT": str(29500 + 242)}
    assert (tmp_path / "slurm.json.calls").read_text().splitlines() == ["show job -o 4242", "show hostnames tux[1-2]"]
    # the total, when the rule passes it, must be what Slurm allocated
    assert launch.launch_command(8, 2, ARGS, STRIPPED, python=PY)[0] == srun_line(2, 4, 8)
    with pytest.raises(ValueError, match="--gpus 4, but Slurm job 4242 holds 8"):
        launch.launch_command(4, 2, ARGS, STRIPPED, python=PY)


def test_one_gpu_x_nodes_and_cpu_only_nodes_run_one_task_per_node(tmp_path, monkeypatch):
    jobs = {"11": job("11", "gpu[07,09-10]", "gpu07", 3, 24, 3, "cpu=24,mem=96000M,node=3,billing=24,gres/gpu=3"),
            "12": job("12", "cn[1-2]", "cn1", 2, 4, 2, "cpu=4,mem=64000M,node=2,billing=4")}
    bindir = fake_slurm(tmp_path, jobs, {"gpu[07,09-10]": ["gpu07", "gpu09", "gpu10"], "cn[1-2]": ["cn1", "cn2"]})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cmd, env = launch.launch_command(0, 3, ARGS, {"SLURM_JOB_ID": "11"}, python=PY)
    assert cmd == srun_line(3, 1, 8) and env["MASTER_ADDR"] == "gpu07"
    cmd, env = launch.launch_command(0, 2, ARGS, {"SLURM_JOB_ID": "12"}, python=PY)
    assert cmd == srun_line(2, 1, 2) and env["MASTER_ADDR"] == "cn1"
    # CPU-only nodes may run several processes each
    cmd, _ = launch.launch_command(0, 2, ARGS, {"SLURM_JOB_ID": "12"}, python=PY, procs_per_node=2)
    assert cmd == srun_line(2, 2, 1)
    # an exported rendezvous wins
    _, env = launch.launch_command(0, 2, ARGS, {"SLURM_JOB_ID": "12", "MASTER_ADDR": "h", "MASTER_PORT": "1234"},
                                   python=PY)
    assert env == {"MASTER_PORT": "1234"}


def test_parse_job_record_reads_the_allocation_not_the_request():
    record = job(record=RECORD_NEW, tres="cpu=64,mem=256000M,node=2,billing=64,gres/gpu=8")
    assert launch.parse_job_record(record, "4242") == ("tux[1-2]", 64, 8)  # ReqTRES says gres/gpu=2
    assert launch.parse_job_record(job(tres="cpu=4,mem=1G,node=2,billing=4"), "4242") == ("tux[1-2]", 64, 0)
    with pytest.raises(ValueError, match="no NodeList"):
        launch.parse_job_record(job(nodelist="(null)"), "4242")


@pytest.mark.parametrize("gpus, nodes, env, jobkw, words", [
    (0, 2, {}, {}, "SLURM_JOB_ID"),                                    # several nodes outside Slurm
    (0, 2, {"SLURM_JOB_ID": "4242"}, {"tres": "cpu=64,node=2,gres/gpu=3"}, "not the same number on each"),
    (0, 3, {"SLURM_JOB_ID": "4242"}, {}, "--nodes 3, but Slurm job 4242 has 2 node"),
    (0, 2, {"SLURM_JOB_ID": "999"}, {}, "Invalid job id specified"),  # scontrol's own error
    ("two", 1, {}, {}, "--gpus"),
    (1, -1, {}, {}, "--nodes"),
])
def test_bad_requests_name_the_problem(tmp_path, monkeypatch, gpus, nodes, env, jobkw, words):
    bindir = fake_slurm(tmp_path, {"4242": job(**jobkw)}, {"tux[1-2]": ["tux1", "tux2"]})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        launch.launch_command(gpus, nodes, ARGS, env, python=PY)


def test_procs_per_node_must_match_the_gpus(tmp_path, monkeypatch):
    bindir = fake_slurm(tmp_path, {"4242": job()}, {"tux[1-2]": ["tux1", "tux2"]})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ValueError, match="one process per GPU"):
        launch.launch_command(0, 2, ARGS, STRIPPED, python=PY, procs_per_node=2)
    with pytest.raises(ValueError, match="runs on one node"):
        launch.launch_command(2, 2, ARGS, STRIPPED, python=PY, launcher="torchrun")


# --- the command line ----------------------------------------------------------------------------


def test_main_execs_the_trainer_and_keeps_its_exit_status():
    """`python -m pclbench.pretrain.launch -- <args>` replaces itself by `python -m pclbench <args>`: the exit
    status and messages are the trainer's (here its argument parser rejecting an unknown subcommand)."""
    proc = subprocess.run([sys.executable, "-m", "pclbench.pretrain.launch", "--gpus", "1", "--", "no-such-command"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pclbench.pretrain.launch: " in proc.stderr  # the launcher said what it runs ...
    assert "invalid choice: 'no-such-command'" in proc.stderr  # ... and `pclbench`'s own parser answered


def test_main_on_several_nodes_with_the_jobsteps_environment(tmp_path):
    """The launcher as the jobstep runs it: SLURM_* stripped but SLURM_JOB_ID; it execs srun (here a
    fake that records what it got and exits 75), whose status is the launcher's."""
    bindir = fake_slurm(tmp_path, {"4242": job()}, {"tux[1-2]": ["tux1", "tux2"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_", "MASTER_"))}
    env.update(STRIPPED, PATH=f"{bindir}{os.pathsep}{env['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "pclbench.pretrain.launch", "--gpus", "0", "--nodes", "2", "--", *ARGS],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 75, proc.stderr
    assert "pclbench.pretrain.launch: MASTER_ADDR=tux1 MASTER_PORT=29742 srun --nodes=2" in proc.stderr
    got = json.loads((tmp_path / "srun.json").read_text())
    assert got["argv"] == srun_line(2, 4, 8)[1:-len(ARGS) - 3] + [sys.executable, "-m", "pclbench", *ARGS]
    assert got["env"]["MASTER_ADDR"] == "tux1" and got["env"]["MASTER_PORT"] == "29742"
    assert "SLURM_JOB_NODELIST" not in got["env"]
    # outside Slurm: a clear message and status 2, nothing started
    env.pop("SLURM_JOB_ID"), env.pop("SLURM_JOBID")
    proc = subprocess.run([sys.executable, "-m", "pclbench.pretrain.launch", "--nodes", "2", "--", *ARGS],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "needs a Slurm allocation" in proc.stderr


def test_launcher_line_goes_into_the_job_log_the_command_owns(tmp_path):
    """The rule passes `--log FILE` to the trainer (pclbench.core.joblog owns it); the launcher's own line
    is appended there first so the log says how the trainer was started, and the command's output
    follows it. A FIFO in the log's place never blocks the launcher."""
    log = tmp_path / "pretrain.log"
    proc = subprocess.run([sys.executable, "-m", "pclbench.pretrain.launch", "--gpus", "1", "--",
                           "validate-config", "--log", str(log)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0].startswith("pclbench.pretrain.launch: ") and " validate-config " in lines[0] + " ", lines
    assert any("config OK" in line for line in lines[1:]), lines
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "pclbench.pretrain.launch", "--gpus", "1", "--",
                           "no-such-command", "--log", str(fifo)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pclbench.pretrain.launch: " in proc.stderr
