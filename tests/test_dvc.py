"""dvc.yaml is generated from the Snakemake DAG; it must match the workflow exactly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pclbench.core import dvc_export


@pytest.fixture(scope="module")
def jobs():
    return dvc_export.snakemake_jobs()


def test_committed_dvc_yaml_matches_workflow(repo_root, jobs):
    committed = (repo_root / "dvc.yaml").read_text()
    # made with the options its header records (`make dvc-yaml` writes the default: none)
    files, per_job = dvc_export.parse_options_line(committed)
    expected = dvc_export.render([repo_root / f for f in files], per_job, jobs=None if files else jobs)
    assert committed == expected, "dvc.yaml is stale: run `make dvc-yaml` and commit it"


def test_every_job_is_a_stage_with_its_params(repo_root, jobs):
    doc = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    outs = {o for st in doc["stages"].values() for o in st["outs"] + st.get("metrics", [])}
    rules = {j["rule"] for j in jobs}
    assert {"generate", "align", "pretrain", "extract", "probe", "tables"} <= rules
    for job in jobs:
        assert set(job["output"]) <= outs
    pretrain = [st for name, st in doc["stages"].items() if name.startswith("pretrain-")]
    assert pretrain and all("pretrain" in st["params"][0]["config/config.yaml"] for st in pretrain)
    # the headline numbers under metrics: (dvc metrics show); every training curve stays a cached out
    # and is drawn by the top-level training_curves plot (test_dvc_plots.py)
    assert ["results/metrics.json"] == [m for st in doc["stages"].values() for m in st.get("metrics", [])]
    for name, st in doc["stages"].items():
        assert "plots" not in st, name
        if name.startswith("pretrain-"):
            assert f"results/pretrain/{name.split('-', 1)[1]}/metrics.csv" in st["outs"]


def test_paper_override_file_reaches_every_stage(repo_root):
    """dvc.yaml for `--configfile config/paper.yaml`: each command passes the file to Snakemake, and
    each params entry lists keys its file really holds (DVC fails on a listed key that is missing)."""
    paper = repo_root / "config" / "paper.yaml"
    doc = yaml.safe_load(dvc_export.render([paper]))
    files = {name: yaml.safe_load((repo_root / name).read_text()) for name in ("config/config.yaml", "config/paper.yaml")}

    def holds(d, dotted):
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    for name, st in doc["stages"].items():
        assert " --configfile config/paper.yaml --allowed-rules " in st["cmd"], name
        for entry in st.get("params", []):
            ((file, keys),) = entry.items()
            assert keys and all(holds(files[file], k) for k in keys), (name, file, keys)
    pcl = dict(kv for e in doc["stages"]["pretrain-pcl"]["params"] for kv in e.items())
    assert {"pretrain", "model", "pcl"} <= set(pcl["config/paper.yaml"])
    with pytest.raises(ValueError, match="outside the workflow directory"):
        dvc_export.relative_configfiles([repo_root.parent / "elsewhere.yaml"])


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_parses_the_pipeline(repo_root):
    proc = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pretrain-pcl" in proc.stdout


# ---------------------------------------------------------------------------------------------
# End to end on the tiny config: dvc repro == snakemake; push, wipe, pull; Snakemake has nothing to do.

def _tiny_repo(repo_root, dst):
    """A copy of the workflow whose config/config.yaml is config.yaml with tiny.yaml merged in.

    dvc.yaml's params name config/config.yaml, and its stage commands run Snakemake with the
    default config file, so the tiny run needs the merge in that file (Snakemake's own merge rule).
    """
    from snakemake.utils import update_config

    shutil.copy(repo_root / "Snakefile", dst / "Snakefile")
    for sub in ("workflow", "profiles", "config"):
        shutil.copytree(repo_root / sub, dst / sub)
    shutil.copytree(repo_root / "src" / "pclbench", dst / "src" / "pclbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((repo_root / "config" / "tiny.yaml").read_text()))
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    text = dvc_export.render(workdir=dst)
    (dst / "dvc.yaml").write_text(text)
    return yaml.safe_load(text)


def _run(cmd, cwd, env, timeout=1800):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


def _digests(root, pattern):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob(pattern))}


@pytest.mark.slow
def test_dvc_repro_push_pull_tiny(repo_root, tmp_path):
    import pandas as pd

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    doc = _tiny_repo(repo_root, repo)
    # the stage commands call `snakemake`: the one of this interpreter's environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    snakemake = [sys.executable, "-m", "snakemake"]

    # 1. The reference: plain snakemake on the same config, then a clean slate.
    _run(snakemake + ["--cores", "all"], repo, env)
    reference = {p.name: pd.read_csv(p) for p in sorted((repo / "results" / "tables").glob("*.csv"))}
    assert "summary.csv" in reference
    for sub in ("data", "results", ".snakemake"):
        shutil.rmtree(repo / sub)

    # 2. dvc repro runs every stage and gets the same tables.
    _run(dvc + ["init", "--no-scm", "-q"], repo, env)
    _run(dvc + ["repro"], repo, env, timeout=2400)
    tables = {p.name: pd.read_csv(p) for p in sorted((repo / "results" / "tables").glob("*.csv"))}
    assert sorted(tables) == sorted(reference)
    for name, frame in reference.items():
        pd.testing.assert_frame_equal(tables[name], frame, check_exact=False, rtol=1e-6, obj=name)
    assert (repo / "results" / "metrics.json").is_file()
    metrics = _run(dvc + ["metrics", "show", "--json"], repo, env).stdout
    assert "pcl/" in metrics, metrics[-2000:]
    # the methods' training curves on one chart, drawn from the real metrics.csv files
    plots = json.loads(_run(dvc + ["plots", "show", "--json"], repo, env).stdout)
    assert not plots.get("errors"), plots.get("errors")
    assert plots["data"]["training_curves"][0]["type"] == "vega"

    # 3. push to a local directory remote; wipe the cache and every output; pull restores them byte-identical.
    checkpoints = _digests(repo, "results/pretrain/*/checkpoint.pt")
    curves = _digests(repo, "results/pretrain/*/metrics.csv")
    assert len(checkpoints) == sum(1 for name in doc["stages"] if name.startswith("pretrain-")) > 0
    _run(dvc + ["remote", "add", "-d", "local", str(remote)], repo, env)
    _run(dvc + ["push"], repo, env)
    for sub in (".dvc/cache", "data", "results"):
        shutil.rmtree(repo / sub)
    _run(dvc + ["pull"], repo, env)
    assert _digests(repo, "results/pretrain/*/checkpoint.pt") == checkpoints
    assert _digests(repo, "results/pretrain/*/metrics.csv") == curves
    assert _run(dvc + ["status"], repo, env).stdout.strip().endswith("up to date."), "dvc status after pull"

    # 4. Snakemake finds nothing to do. The pulled files have new, unordered mtimes: the workflow
    #    profile's rerun triggers leave out `mtime`, but Snakemake 9 still compares input and output
    #    times for inputs it cannot checksum (directories such as the aligned shards, files above
    #    --max-checksum-file-size), so the documented step after a pull is `snakemake --touch`
    #    (make dvc-pull), which re-stamps finished outputs in DAG order without running anything.
    _run(snakemake + ["--touch", "--cores", "1"], repo, env)
    # (--touch creates the jobs' log files empty; a job that ran would have written to its log)
    assert all(p.stat().st_size == 0 for p in repo.glob("results/logs/**/*.log")), "snakemake --touch ran a job"
    assert _digests(repo, "results/pretrain/*/checkpoint.pt") == checkpoints
    dry = _run(snakemake + ["-n", "--cores", "1"], repo, env)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-4000:]
    # ... and the same on a fresh machine: without Snakemake's own records (.snakemake/).
    for sub in (".dvc/cache", "data", "results", ".snakemake"):
        shutil.rmtree(repo / sub)
    _run(dvc + ["pull"], repo, env)
    _run(snakemake + ["--touch", "--cores", "1"], repo, env)
    dry = _run(snakemake + ["-n", "--cores", "1"], repo, env)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-4000:]
    assert _digests(repo, "results/pretrain/*/checkpoint.pt") == checkpoints
