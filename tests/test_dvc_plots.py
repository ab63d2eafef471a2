"""`dvc plots show` draws the methods' training curves on one chart (dvc.yaml's top-level
``training_curves`` plot) and `dvc metrics show` the headline numbers.

A field a plot names but a file lacks fails the whole plot in DVC (FieldNotFoundError), so the column
drawn for each method (dvc_export.COMPARED_LOSS) must be one every run of that method logs: checked on
one real iteration of every registered method and every PCL variant of config/config.yaml, and on a
real trainer's metrics.csv rendered by the installed dvc.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from pclbench.core import dvc_export


def registered(repo_root):
    schema = yaml.safe_load((repo_root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return schema["properties"]["variants"]["additionalProperties"]["properties"]["method"]["enum"]


def test_every_registered_method_has_a_compared_loss_or_is_untrained(repo_root):
    assert set(registered(repo_root)) == set(dvc_export.COMPARED_LOSS) | dvc_export.UNTRAINED


@pytest.mark.parametrize("name", ["simclr", "moco", "byol"])
def test_baselines_log_their_compared_loss(name, one_torch_thread):
    from test_baselines import build, iterate

    method = build(name)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    assert dvc_export.COMPARED_LOSS[name] in iterate(method, opt, 0)


def test_every_pcl_variant_logs_the_compared_loss(repo_root, one_torch_thread):
    from test_pcl import build, run_iterations
    from tiny_sections import PCL

    from pclbench.core.config import deep_merge

    variants = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())["variants"]
    pcl_overrides = [{}] + [v["overrides"].get("pcl", {}) for v in variants.values() if v["method"] == "pcl"]
    assert len(pcl_overrides) > 3
    for overrides in pcl_overrides:
        _, (out,) = run_iterations(build(pcl=deep_merge(PCL, overrides)))
        assert dvc_export.COMPARED_LOSS["pcl"] in out, overrides


def test_training_curves_plot_lists_the_trained_methods(jobs_default):
    plot = dvc_export.training_curves_plot(jobs_default)["training_curves"]
    trained = [j for j in jobs_default if j["rule"] == "pretrain" and j["base_method"] not in dvc_export.UNTRAINED]
    assert len(trained) >= 2 and plot["x"] == "iteration"
    assert plot["y"] == {f"results/pretrain/{j['wildcards']['method']}/metrics.csv":
                         dvc_export.COMPARED_LOSS[j["base_method"]] for j in trained}


@pytest.fixture(scope="module")
def jobs_default():
    return dvc_export.snakemake_jobs()


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_renders_real_training_curves(repo_root, tmp_path, jobs_default):
    """Two real tiny pcl runs (pcl and the pcl_wo_pdd variant) -> `dvc plots show --json`."""
    cfg = ["--config", str(repo_root / "config" / "config.yaml"), "--config", str(repo_root / "config" / "tiny.yaml")]
    pm = [sys.executable, "-m", "pclbench"]

    def run(*args):
        proc = subprocess.run([*pm, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("generate", *cfg, "--dataset", "synth_vox", "--out", "raw")
    run("align", *cfg, "--raw", "raw", "--dataset", "synth_vox", "--split", "train", "--out", "aligned")
    repo = tmp_path / "repo"
    variants = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())["variants"]
    overrides = json.dumps(variants["pcl_wo_pdd"]["overrides"])
    run("pretrain", *cfg, "--method", "pcl", "--data", "aligned", "--out", str(repo / "results/pretrain/pcl"))
    run("pretrain", *cfg, "--params", overrides, "--method", "pcl", "--data", "aligned",
        "--out", str(repo / "results/pretrain/pcl_wo_pdd"))
    jobs = [j for j in jobs_default if j["rule"] == "pretrain" and j["wildcards"]["method"] in ("pcl", "pcl_wo_pdd")]
    assert len(jobs) == 2, "the default methods include pcl and pcl_wo_pdd"
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [dvc_export.training_curves_plot(jobs)]}))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    proc = subprocess.run([*dvc, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown["errors"]
    (chart,) = shown["data"]["training_curves"]
    rows = chart["content"]["data"]["values"]
    # one line per method's file (DVC labels a series by the shortest distinguishing tail of its path
    # when every file gives the same field)
    assert {row["filename"] for row in rows} == {"pcl/metrics.csv", "pcl_wo_pdd/metrics.csv"}
    assert all(float(row["loss_face"]) > 0 for row in rows)
