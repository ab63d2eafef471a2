"""dvc.yaml's stages are Snakemake's jobs grouped (dvc_export.GROUP_BY), and DVC's own graph is
Snakemake's job graph with the jobs of each stage merged; `dvc dag` stays readable.

The expected edges come from Snakemake's DAG (``dag.dependencies`` of each job, read by
``dvc_export.snakemake_jobs``), the actual ones from ``dvc dag --dot`` (DVC matches outs to deps
itself); the two are built independently of each other.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from pclbench.core import dvc_export

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")


@pytest.fixture(scope="module")
def jobs():
    return dvc_export.snakemake_jobs()


@pytest.fixture(scope="module")
def stages(repo_root):
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


def dvc(repo_root, *args):
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_stages_partition_the_jobs(jobs, stages):
    by_stage = {}
    for job in jobs:
        by_stage.setdefault(dvc_export.stage_name(job), []).append(job)
    assert set(by_stage) == set(stages)
    for name, members in by_stage.items():
        st = stages[name]
        outputs = {o for j in members for o in j["output"]}
        assert set(st["outs"]) | set(st.get("metrics", [])) == outputs, name
        words = shlex.split(st["cmd"])
        rules = words[words.index("--allowed-rules") + 1:]
        targets = words[1:words.index("--cores")]
        assert words[0] == "snakemake" and sorted(targets) == sorted(outputs), name
        assert sorted(rules) == sorted({j["rule"] for j in members}), name
        data_deps = {d for d in st["deps"] if not d.startswith(("src/", "workflow/rules/"))}
        assert data_deps == {i for j in members for i in j["input"]} - outputs, name
    # each output is made by exactly one stage
    made = [o for st in stages.values() for o in st["outs"] + st.get("metrics", [])]
    assert len(made) == len(set(made))


def test_dvc_graph_is_the_snakemake_graph_merged(repo_root, jobs, stages):
    stage_of = {(j["rule"], tuple(j["output"])): dvc_export.stage_name(j) for j in jobs}
    expected = {(stage_of[up], dvc_export.stage_name(j)) for j in jobs for up in j["upstream"]}
    expected = {(a, b) for a, b in expected if a != b}
    dot = dvc(repo_root, "dag", "--dot")
    nodes = set(re.findall(r'^"([^"]+)";$', dot, re.M))
    edges = set(re.findall(r'^"([^"]+)" -> "([^"]+)";$', dot, re.M))
    assert nodes == set(stages)
    assert edges == expected


def test_dvc_dag_is_readable(repo_root, jobs):
    """One node per dataset's alignment, two per method, three more; before grouping, 57 nodes and
    2,862-character lines."""
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    methods = config["workflow"]["methods"]
    datasets = {j["wildcards"]["dataset"] for j in jobs if j["rule"] == "align"}
    text = dvc(repo_root, "dag")
    boxes = set(re.findall(r"\| (\S+) \|", text))
    assert len(boxes) == 3 + len(datasets) + 2 * len(methods) == len({dvc_export.stage_name(j) for j in jobs})
    width = max(len(line.rstrip()) for line in text.splitlines())
    assert width <= 400, f"`dvc dag` is {width} characters wide"


def test_per_job_gives_one_stage_per_job(jobs):
    doc = dvc_export.dvc_document(jobs, per_job=True)
    assert len(doc["stages"]) == len(jobs)
