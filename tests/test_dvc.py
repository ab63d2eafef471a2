"""dvc.yaml is generated from the Snakemake DAG; it must match the workflow exactly."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from pclbench import dvc_export


@pytest.fixture(scope="module")
def jobs():
    return dvc_export.snakemake_jobs()


def test_committed_dvc_yaml_matches_workflow(repo_root, jobs):
    expected = dvc_export.HEADER + yaml.safe_dump(dvc_export.dvc_document(jobs), sort_keys=False, width=120)
    committed = (repo_root / "dvc.yaml").read_text()
    assert committed == expected, "dvc.yaml is stale: run `make dvc-yaml` and commit it"


def test_every_job_is_a_stage_with_its_params(repo_root, jobs):
    doc = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    outs = {o for st in doc["stages"].values() for o in st["outs"]}
    rules = {j["rule"] for j in jobs}
    assert {"generate", "align", "pretrain", "extract", "probe", "tables"} <= rules
    for job in jobs:
        assert set(job["output"]) <= outs
    pretrain = [st for name, st in doc["stages"].items() if name.startswith("pretrain-")]
    assert pretrain and all("pretrain" in st["params"][0]["config/config.yaml"] for st in pretrain)


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_parses_the_pipeline(repo_root):
    proc = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pretrain-pcl" in proc.stdout
