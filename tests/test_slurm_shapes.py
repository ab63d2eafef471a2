"""Pretraining job shapes on Slurm (GPUs per node x nodes): the sbatch lines, and a real launch.

1. The sbatch command for 1x1, Gx1, 1xN, GxN (and CPU-only) is built by snakemake-executor-plugin-slurm's
   OWN code (2.8.0: ``submit_string.get_submit_command`` + ``utils.set_gres_string``, validated by
   ``validation.validate_slurm_extra``, in the order ``Executor.run_job`` calls them) from the pretrain
   resources as Snakemake itself parses them: profiles/slurm's default-resources, the rule's own
   ``resources:`` (workflow/rules/pretrain.smk) and profiles/default's set-resources (YTE-rendered by
   ``snakemake.profiles.ProfileConfigFileParser``, parsed by ``snakemake.cli.parse_set_resources``,
   evaluated by ``snakemake.resources.Resource.evaluate``). The expected options come from sbatch(1)
   (Slurm 22.05): ``--gres`` is allocated "on each node", ``--gpus`` is "the total number of GPUs
   required for the job", ``--ntasks-per-node``, ``--ntasks``.
2. On one node, the jobstep plugin (snakemake-executor-plugin-slurm-jobstep 0.6.1) runs the rule in
   ``srun -n1 --cpu-bind=q <cpus> <gpus> <nodes>`` built by its ``get_cpu_setting`` /
   ``get_gpu_setting`` / ``get_node_setting``: the step must hold every GPU (torchrun uses them all).
3. On the local cluster (tests/slurm/start_cluster.sh, one node, 2 CPUs, no GPU): a one-rule workflow
   with the ``mpi`` resource goes through the plugin and the jobstep for real; the jobstep strips
   ``SLURM_*`` from the rule, and ``pclbench.pretrain.launch --launcher srun`` still finds the node, starts
   2 gloo ranks with ``srun`` and they all-reduce. Skipped without a cluster unless
   PCLBENCH_REQUIRE_SLURM=1 (the fixture of tests/test_slurm.py).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_slurm import ROOT, slurm_cluster  # noqa: F401  (the fixture)

plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
from snakemake_executor_plugin_slurm import ExecutorSettings  # noqa: E402
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra  # noqa: E402
from snakemake_executor_plugin_slurm_jobstep import (  # noqa: E402
    get_cpu_setting, get_gpu_setting, get_node_setting)
from snakemake_interface_common.exceptions import WorkflowError  # noqa: E402

PRETRAIN_SMK = ROOT / "workflow" / "rules" / "pretrain.smk"

# (GPUs per node, nodes): the shapes of the issue, and CPU-only clusters (PCLBENCH_GPUS=0).
SHAPES = [(1, 1), (4, 1), (1, 2), (4, 2), (0, 1), (0, 2)]


# --- the resources Snakemake gives the pretrain job ----------------------------------------------


class _Resources(dict):
    """job.resources as the plugin uses it: ``.get(name)`` and attribute access (AttributeError if unset)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _profile(path: Path, env: dict) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with open(path) as fh:
            return ProfileConfigFileParser().parse(fh)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rule_resources() -> list[str]:
    """The pretrain rule's own ``resources:`` entries (``name=value``), read from pretrain.smk."""
    text = PRETRAIN_SMK.read_text()
    block = re.search(r"^rule pretrain:.*?^    resources:\n((?:        \w+=[^\n]*\n)+)", text, flags=re.S | re.M)
    assert block, "workflow/rules/pretrain.smk: no resources: block in rule pretrain"
    return [line.strip().rstrip(",") for line in block.group(1).splitlines()]


def pretrain_resources(gpus: int, nodes: int) -> _Resources:
    """Evaluated resources of the pretrain job: default-resources < rule resources < set-resources."""
    from snakemake.cli import parse_set_resources
    from snakemake.resources import Resources

    env = {"PCLBENCH_GPUS": str(gpus), "PCLBENCH_NODES": str(nodes)}
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "PCLBENCH_GPU_PARTITION"):
        env[var] = ""  # no site settings
    site = _profile(ROOT / "profiles" / "slurm" / "config.yaml", env)
    workflow = _profile(ROOT / "profiles" / "default" / "config.yaml", env)
    merged = dict(Resources.parse(site["default-resources"], allow_expressions=True))
    merged.update(Resources.parse(_rule_resources(), allow_expressions=True))
    merged.update(parse_set_resources(workflow["set-resources"])["pretrain"])
    out = _Resources()
    for name, res in merged.items():
        value = res.evaluate(wildcards={}, input=[], attempt=1, threads=1, rulename="pretrain",
                             async_run=None).value if res.is_evaluable() else res.value
        out[name] = value
    return out


def sbatch_line(resources: _Resources) -> str:
    """The sbatch command the plugin builds for a job with these resources (as Executor.run_job does,
    up to the --wrap'ed command); the plugin's own validation runs first."""
    job = SimpleNamespace(resources=resources, threads=1, name="pretrain", is_group=lambda: False)
    validate_slurm_extra(job)
    params = {"run_uuid": "RUN-UUID", "slurm_logfile": ".snakemake/slurm_logs/rule_pretrain/pcl/%j.log",
              "comment_str": "rule_pretrain_wildcards_pcl", "account": "", "partition": "",
              "workdir": "/work/pclbench"}
    settings = ExecutorSettings(requeue=True)  # profiles/slurm: slurm-requeue: true
    call = get_submit_command(job, params, settings=settings)
    return re.sub(r"\s+", " ", call + set_gres_string(job))


def _options(line: str) -> dict[str, str]:
    """``--name=value`` / ``--name value`` / ``-t value`` options of an sbatch line."""
    words, opts, i = shlex.split(line)[1:], {}, 0
    while i < len(words):
        word = words[i]
        if "=" in word:
            key, value = word.split("=", 1)
            opts[key] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("-"):
            opts[word] = words[i + 1]
            i += 1
        else:
            opts[word] = ""
        i += 1
    return opts


# --- 1. the sbatch lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("gpus, nodes", SHAPES)
def test_sbatch_line_asks_for_the_shape(gpus, nodes):
    res = pretrain_resources(gpus, nodes)
    line = sbatch_line(res)
    opts = _options(line)
    assert opts["--nodes"] == str(nodes), line
    assert opts["--mem"] == str(max(gpus, 1) * 32000), line  # per node (sbatch(1) --mem)
    assert opts["-t"] == "2880" and "--requeue" in opts, line
    # no --signal: USR1 would reach the job step's Snakemake, which dies of it (the trainer reads its
    # own time left instead; README, "Clusters")
    assert "--signal" not in opts, line
    # GPUs: a total with --gpus on one node; per node with --gres on several (never both).
    if gpus == 0:
        assert not any(k in opts for k in ("--gpus", "--gres", "--cpus-per-gpu")), line
        assert opts["--cpus-per-task"] == "2", line
    elif nodes == 1:
        assert opts["--gpus"] == str(gpus) and "--gres" not in opts, line
        assert opts["--cpus-per-gpu"] == "8", line
    else:
        assert opts["--gres"] == f"gpu:{gpus}" and "--gpus" not in opts, line
        assert opts["--cpus-per-gpu"] == "8", line
    assert "--ntasks-per-gpu" not in opts, line
    # Tasks: the allocation holds one task per process the launcher starts (one per GPU, at least
    # one per node), and only the multi-node shapes carry `mpi` (the jobstep then runs the rule in
    # the batch script).
    if nodes > 1:
        assert res.get("mpi") == "srun", res
        per_node = int(opts.get("--ntasks-per-node", 0)) or int(opts["--ntasks"]) // nodes
        assert per_node == max(gpus, 1) and int(opts.get("--ntasks", per_node * nodes)) == per_node * nodes, line
    else:
        assert "mpi" not in res and "--ntasks-per-node" not in opts, res
        if gpus == 0:
            assert opts["--ntasks"] == "1", line
        else:
            assert "--ntasks" not in opts, line  # the plugin sets no task count for GPU jobs


def test_the_old_one_gpu_per_node_request_is_what_the_plugin_refused():
    """The request profiles/default used to make for 1 GPU x 2 nodes (mpi + tasks_per_node 1): the
    plugin's own check refuses it, which is why 1xN now asks for `tasks`."""
    res = _Resources(pretrain_resources(1, 2))
    del res["tasks"], res["tasks_per_gpu"]
    res["tasks_per_node"] = 1
    with pytest.raises(WorkflowError, match="tasks_per_node' must be greater than 1"):
        sbatch_line(res)
    res = _Resources(pretrain_resources(1, 2))
    del res["tasks_per_gpu"]  # without it, `tasks` would also become --ntasks-per-gpu=<nodes>
    assert "--ntasks-per-gpu=2" in sbatch_line(res)


@pytest.mark.parametrize("gpus", [1, 4])
def test_one_node_jobstep_holds_every_gpu(gpus):
    """One node: the jobstep runs the rule (and the launcher's torchrun) in `srun -n1 ...`; that step
    must hold all GPUs and the CPUs per GPU of the job."""
    res = pretrain_resources(gpus, 1)
    job = SimpleNamespace(resources=res, threads=1)
    step = " ".join(["srun -n1 --cpu-bind=q", get_cpu_setting(job, str(gpus)), get_gpu_setting(job),
                     get_node_setting(job)])
    assert step == f"srun -n1 --cpu-bind=q --cpus-per-gpu=8 --gpus={gpus} --nodes=1"


# --- 3. the srun launch on the local cluster -------------------------------------------------------

PROBE = '''
import json, os, socket, sys
import torch
import torch.distributed as dist
from pclbench.pretrain import distributed as ddp

assert ddp.init_from_env("gloo"), "no process group"
value = torch.tensor([float(ddp.rank() + 1)])
dist.all_reduce(value)
out = {"rank": ddp.rank(), "world": ddp.world_size(), "local": ddp.local_rank(), "sum": value.item(),
       "host": socket.gethostname(), "master": os.environ["MASTER_ADDR"], "port": os.environ["MASTER_PORT"],
       "procid": os.environ.get("SLURM_PROCID"), "step": os.environ.get("SLURM_STEP_ID")}
with open(os.path.join(sys.argv[1], f"rank{ddp.rank()}.json"), "w") as fh:
    json.dump(out, fh)
dist.destroy_process_group()
'''

SNAKEFILE = '''
rule ddp:
    output: "ranks/rank0.json", "ranks/rank1.json"
    log: "ddp.log"
    resources: mpi="srun", tasks=2, cpus_per_task=1, nodes=1, mem_mb=600, runtime=5
    shell:
        # what the rule sees of Slurm (the jobstep leaves SLURM_JOB_ID), then the launcher
        "(env | grep '^SLURM_' | sort > slurm_env.txt || true); "
        "PYTHONPATH={probe_dir:q}:$PYTHONPATH {python:q} -m pclbench.pretrain.launch --launcher srun --procs-per-node 2 "
        "--gpus 0 --nodes {resources.nodes} --module ddp_probe -- ranks > {log:q} 2>&1"
'''


@pytest.mark.slow
def test_srun_launch_survives_the_jobsteps_environment(tmp_path, slurm_cluster):  # noqa: F811
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "ddp_probe.py").write_text(PROBE)
    (tmp_path / "ranks").mkdir()
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE.replace("{probe_dir:q}", shlex.quote(str(probe_dir)))
                         .replace("{python:q}", shlex.quote(sys.executable)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "SLURM_CONF"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(tmp_path),
           "--profile", str(ROOT / "profiles" / "slurm"), "--workflow-profile", "none", "--retries", "0",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs", "--default-resources", "mem_mb=256", "runtime=5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    log = (tmp_path / "ddp.log").read_text() if (tmp_path / "ddp.log").is_file() else "(no ddp.log)"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}\n--- ddp.log:\n{log}"
    assert re.search(r"Job \d+ has been submitted with SLURM jobid \d+", out), out[-3000:]

    # The rule ran without the node list (the jobstep stripped it) ...
    seen = dict(line.split("=", 1) for line in (tmp_path / "slurm_env.txt").read_text().splitlines() if "=" in line)
    assert "SLURM_JOB_ID" in seen and "SLURM_JOB_NODELIST" not in seen and "SLURM_NODELIST" not in seen, seen
    # ... the launcher asked Slurm and started one srun step with two tasks ...
    assert f"MASTER_ADDR={slurm_cluster['node']}" in log and "srun --nodes=1 --ntasks=2 --ntasks-per-node=2" in log, log
    # ... whose ranks took their places from srun (SLURM_PROCID) and all-reduced 1 + 2.
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["procid"] for r in ranks] == ["0", "1"], ranks
    assert all(r["world"] == 2 and r["sum"] == 3.0 and r["master"] == slurm_cluster["node"] for r in ranks), ranks
    assert ranks[0]["step"] is not None and ranks[0]["step"] == ranks[1]["step"], ranks  # one step
    assert {r["local"] for r in ranks} == {0, 1}, ranks


# --- `snakemake --cores all --profile slurm` from the repository root ------------------------------


def test_profile_name_slurm_resolves_from_the_repository_root(tmp_path, monkeypatch):
    """Snakemake 9 resolves a bare --profile name in the working directory first, then in the user
    and site config dirs (snakemake/cli.py ``get_profile_dir``: ``search_dirs = [os.getcwd(),
    dirs.user_config_dir, dirs.site_config_dir]``). The repository root holds ``slurm``, a relative
    symlink to profiles/slurm, so a fresh clone needs no ~/.config/snakemake link."""
    import snakemake.cli as cli

    empty = tmp_path / "no-config"
    empty.mkdir()
    # no user/site profile may answer instead of the repository's
    monkeypatch.setattr(cli, "get_appdirs", lambda: SimpleNamespace(user_config_dir=str(empty),
                                                                    site_config_dir=str(empty)))
    link = ROOT / "slurm"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)), "slurm must be a relative symlink"
    assert link.resolve() == (ROOT / "profiles" / "slurm").resolve()
    monkeypatch.chdir(tmp_path)
    assert cli.get_profile_dir("slurm") is None  # elsewhere the name finds nothing (the control)
    monkeypatch.chdir(ROOT)
    _, config = cli.get_profile_dir("slurm")
    assert config.resolve() == (ROOT / "profiles" / "slurm" / "config.yaml").resolve()
    # the documented command line, parsed as Snakemake does: the Slurm executor and the site profile
    _, args = cli.parse_args(["--cores", "all", "--profile", "slurm"])
    assert args.executor == "slurm" and args.jobs == 100 and args.latency_wait == 60, args
