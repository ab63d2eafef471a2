"""The Slurm path for real: the tiny workflow through `--profile profiles/slurm` on a local Slurm cluster.

tests/slurm/start_cluster.sh starts a single-node cluster on this machine (Debian's slurm-wlm and
munge; .ci/run calls it before the suite, and this test calls it when it may: root and no cluster
running). Without a cluster the test is skipped with the reason, unless PCLBENCH_REQUIRE_SLURM=1
(CI), where that is a failure. It only ever submits to the cluster that script configured, never to
a site's Slurm.

What it proves: every job of the workflow (except the local `all`) was submitted by
snakemake-executor-plugin-slurm with sbatch, ran on the cluster and finished COMPLETED there (read
back from slurmctld's job-completion log, not from Snakemake), the pretrain job went through
pclbench.pretrain.launch, and the tables came out. The cluster has no GPU, so it runs with PCLBENCH_GPUS=0
(profiles/default then asks for none), and memory requests are cut to what the node has.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tests" / "slurm" / "start_cluster.sh"
STATE = Path(os.environ.get("PCLBENCH_SLURM_DIR", "/var/tmp/pclbench-slurm"))
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by tests/slurm/start_cluster.sh"
TINY = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "tiny.yaml")]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)")


def _ours() -> bool:
    return SLURM_CONF.is_file() and MARKER in SLURM_CONF.read_text()


def _cluster_up() -> bool:
    if not (shutil.which("scontrol") and shutil.which("sinfo") and _ours()):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in ping.stdout and state.stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"])


def _unavailable() -> str | None:
    """Why the test cannot run here (None: it can)."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (`make venv` installs requirements.txt)"
    if SLURM_CONF.is_file() and not _ours():
        return f"{SLURM_CONF} belongs to a real Slurm site; this test only runs on tests/slurm/start_cluster.sh's cluster"
    if _cluster_up():
        return None
    if os.geteuid() != 0:
        return "no local Slurm cluster; start one with `sudo tests/slurm/start_cluster.sh` (needs root and apt)"
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0 or not _cluster_up():
        return f"tests/slurm/start_cluster.sh could not start a cluster ({proc.returncode}): {proc.stderr[-2000:]}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _unavailable()
    if reason:
        if os.environ.get("PCLBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"PCLBENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %m %c"], capture_output=True, text=True, check=True)
    name, mem_mb, cpus = node.stdout.split()[:3]
    return {"node": name, "mem_mb": int(mem_mb), "cpus": int(cpus)}


def local_set_resources(node_mem_mb: int, env: dict) -> list[str]:
    """profiles/default's per-rule resources, as Snakemake reads them, with memory cut to the node.

    A command-line --set-resources replaces the profile's whole key, so this passes the profile's
    own entries (GPUs, CPUs, time limits, slurm_extra, nodes) and changes only mem_mb.
    """
    from snakemake.profiles import ProfileConfigFileParser

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with open(ROOT / "profiles" / "default" / "config.yaml") as fh:
            parsed = ProfileConfigFileParser().parse(fh)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    cap = max(256, node_mem_mb // 8)
    out = []
    for item in parsed["set-resources"]:
        rule_key, value = item.split("=", 1)
        if rule_key.endswith(":mem_mb"):
            value = str(min(int(value), cap))
        out.append(f"{rule_key}={value}")
    return out


def _jobcomp_states(offset: int) -> dict[str, str]:
    """JobId -> JobState of the jobs slurmctld finished after byte `offset` of its completion log."""
    log = STATE / "jobcomp.log"
    text = log.read_bytes()[offset:].decode(errors="replace") if log.is_file() else ""
    return {m.group(1): m.group(2) for m in re.finditer(r"JobId=(\d+) .*?JobState=(\S+)", text)}


@pytest.mark.slow
def test_tiny_workflow_through_slurm(tmp_path, slurm_cluster):
    env = {**os.environ, "PCLBENCH_GPUS": "0", "PCLBENCH_NODES": "1"}
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "PCLBENCH_GPU_PARTITION", "SLURM_CONF"):
        env.pop(var, None)  # the local cluster's default partition, no account
    jobcomp = STATE / "jobcomp.log"
    offset = jobcomp.stat().st_size if jobcomp.is_file() else 0
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "--configfile", *TINY, "--profile", str(ROOT / "profiles" / "slurm"), "--cores", "2",
           # no slurmdbd on the test cluster: job states from squeue (MinJobAge is a day there)
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs",
           "--default-resources", "mem_mb=256", "runtime=30",
           "--set-resources", *local_set_resources(slurm_cluster["mem_mb"], {"PCLBENCH_GPUS": "0"})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-12000:]}"

    # Every workflow job went through sbatch; the plugin names each log .snakemake/slurm_logs/rule_<rule>/...
    submitted = {jobid: re.search(r"slurm_logs/rule_([^/]+)/", log).group(1) for jobid, log in SUBMITTED.findall(out)}
    rules = set(submitted.values())
    assert {"generate", "align", "pretrain", "extract", "probe"} <= rules, rules
    # Tables, figures and contact sheets are `localrules` (Snakefile): run on the submitting node.
    local_rules = {"tables", "figure_bars", "figure_curves", "figure_swap_grid", "figure_embedding", "contact_sheet"}
    assert not rules & local_rules, rules & local_rules
    assert re.search(r"^localrule tables:", out, flags=re.M), "tables did not run as a local rule"
    n_local = len(re.findall(r"^localrule ", out, flags=re.M))
    n_jobs = len(re.findall(r"^Finished jobid: ", out, flags=re.M))
    assert n_jobs == len(submitted) + n_local, (n_jobs, len(submitted), n_local)
    # ... and slurmctld itself recorded each of them as COMPLETED on this node.
    states = _jobcomp_states(offset)
    for jobid, rule in submitted.items():
        assert states.get(jobid) == "COMPLETED", (jobid, rule, states.get(jobid))
    log_text = jobcomp.read_bytes()[offset:].decode(errors="replace")
    assert f"NodeList={slurm_cluster['node']}" in log_text

    # The pretrain job ran the launcher (one CPU process here: PCLBENCH_GPUS=0) inside its Slurm job.
    pretrain_logs = [Path(log) for jobid, log in SUBMITTED.findall(out) if "/rule_pretrain/" in log]
    assert pretrain_logs and all(p.is_file() for p in pretrain_logs)
    for method_log in (tmp_path / "results" / "logs" / "pretrain").glob("*.log"):
        assert "pclbench.pretrain.launch:" in method_log.read_text() and " pretrain " in method_log.read_text()
    assert (tmp_path / "results" / "pretrain" / "pcl" / "checkpoint.pt").stat().st_size > 0

    # The tables came out.
    tables = tmp_path / "results" / "tables"
    assert (tables / "summary.md").is_file() and (tables / "summary.csv").is_file(), sorted(tables.glob("*"))
    probes = sorted((tmp_path / "results" / "probes").glob("*/*.json"))
    assert len(probes) == sum(1 for r in submitted.values() if r == "probe") > 0


def test_local_set_resources_cuts_memory_only():
    """The override the test passes keeps profiles/default's per-rule resources except memory."""
    items = local_set_resources(4000, {"PCLBENCH_GPUS": "0"})
    assert "pretrain:gpu=0" in items and "pretrain:mem_mb=500" in items
    assert "pretrain:cpus_per_task=2" in items and not any(i.startswith("pretrain:cpus_per_gpu") for i in items)
    gpu = local_set_resources(10 ** 7, {"PCLBENCH_GPUS": "4", "PCLBENCH_NODES": "2"})
    # several nodes: GPUs per node as gres (tests/test_slurm_shapes.py has the sbatch lines)
    assert {"pretrain:gpu=0", "pretrain:gres='gpu:4'", "pretrain:nodes=2", "pretrain:mpi=srun",
            "pretrain:tasks_per_node=4", "pretrain:cpus_per_gpu=8", "pretrain:mem_mb=128000",
            "align:gpu=1"} <= set(gpu), gpu

