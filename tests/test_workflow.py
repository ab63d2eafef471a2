"""The workflow itself: DAG shape, config errors, and the end-to-end run on the tiny config.

The end-to-end test is the README's `make run` in miniature (config/tiny.yaml merged on the default):
SynthFaces -> alignment -> PCL + random-init pretraining -> features -> four probes -> tables.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
TINY = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "tiny.yaml")]
CHAIN = ["generate", "align", "pretrain", "extract", "probe", "tables"]


def run_snakemake(workdir: Path, *args: str, configfiles=TINY, check=True) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-d", str(workdir), "--configfile", *configfiles, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}")
    return proc


def test_dag_chain(tmp_path):
    """`snakemake -n` plans generate -> align -> pretrain -> extract -> probe -> tables."""
    proc = run_snakemake(tmp_path, "--d3dag", "--cores", "1", configfiles=TINY)
    dag = json.loads(proc.stdout[proc.stdout.index("{"):])
    rule_of = {n["id"]: n["value"]["rule"] for n in dag["nodes"]}
    edges = {(rule_of[e["u"]], rule_of[e["v"]]) for e in dag["edges"]}
    for a, b in zip(CHAIN, CHAIN[1:]):
        assert (a, b) in edges, f"no {a} -> {b} dependency in the DAG; edges: {sorted(edges)}"
    dry = run_snakemake(tmp_path, "-n", "--cores", "1")
    for rule in CHAIN:
        assert rule in dry.stdout, rule


def test_wrong_config_value_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  synth_vox:\n    size: seventy\n")
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfiles=TINY + [str(bad)], check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "size" in out and "seventy" in out, out[-3000:]


def test_wrong_reference_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow:\n  pretrain_dataset: nosuchset\n")
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfiles=TINY + [str(bad)], check=False)
    assert proc.returncode != 0
    assert "workflow.pretrain_dataset" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    """Run the whole workflow on the tiny config and check every table and provenance file."""
    run_snakemake(tmp_path, "--cores", "2")
    res = tmp_path / "results"
    methods = ["random", "pcl", "pcl_wo_pdd"]
    # benchmark -> task, {metric -> (lowest, highest) valid value}
    benchmarks = {
        "synth_expression": ("expression", {"accuracy_pct": (0, 100), "mean_class_accuracy_pct": (0, 100)}),
        "synth_verification": ("verification", {"accuracy_pct": (0, 100)}),
        "synth_au": ("au", {"mean_f1_pct": (0, 100)}),
        "synth_pose": ("pose", {"mae_yaw_deg": (0, 180), "mae_pitch_deg": (0, 180), "mae_roll_deg": (0, 180),
                                "mae_mean_deg": (0, 180)}),
    }
    for b, (task, metrics) in benchmarks.items():
        md = (res / "tables" / f"{task}.md").read_text()
        table = pd.read_csv(res / "tables" / f"{task}.csv").set_index("method")
        # the methods' rows, and first the task's label-only floor (pclbench.evaluate.<task>.trivial)
        assert table.index[0] == "trivial predictor" and table.loc["trivial predictor", "kind"] == "trivial", table
        assert sorted(table.index[1:]) == sorted(methods), table
        floors = {json.dumps(json.loads((res / "probes" / m / f"{b}.json").read_text())["trivial"], sort_keys=True)
                  for m in methods}
        assert len(floors) == 1, floors  # from labels only: the same for every method
        floor = json.loads(floors.pop())["metrics"]
        for m in methods:
            assert f"| {m} " in md, md
            probe = json.loads((res / "probes" / m / f"{b}.json").read_text())
            assert probe["benchmark"] == b and probe["task"] == task and probe["method"] == m
            assert probe["protocol"] == "clean" and probe["provenance"]["versions"]["torch"]
            assert probe["readouts"] == ["trunk", "face", "pose", "concat"]
            assert len(probe["runs"]) == len(probe["readouts"]) * (1 if task == "verification" else len(probe["seeds"]))
            for metric, (lo, hi) in metrics.items():
                for ro in probe["readouts"]:
                    value = probe["summary"][ro][metric]["mean"]
                    assert isinstance(value, float) and lo <= value <= hi, (b, m, ro, metric, value)
                col = f"{b}:{metric}"
                if col in table.columns:  # the table shows the primary readout's mean, not another number
                    assert table.loc[m, col] == pytest.approx(probe["summary"]["trunk"][metric]["mean"]), (b, m, col)
                    assert lo <= floor[metric] <= hi and table.loc["trivial predictor", col] == pytest.approx(floor[metric])
        # No cell says "not run": every method x benchmark produced a number.
        for line in md.splitlines():
            if line.startswith("| ") and not line.startswith("| Method"):
                assert "not run" not in line, line
    summary = pd.read_csv(res / "tables" / "summary.csv").set_index("method")
    assert summary.index[0] == "trivial predictor" and sorted(summary.index[1:]) == sorted(methods), summary
    assert summary.loc[methods].notna().all().all(), summary  # the floor row has no std / n (deterministic)
    values = [c for c in summary.columns if c.count(":") == 1]
    assert summary.loc["trivial predictor", values].notna().all(), summary
    # the disentanglement table: one row per method with both heads probed (all three here)
    dis = pd.read_csv(res / "tables" / "disentanglement.csv")
    assert sorted(dis["method"]) == sorted(methods), dis
    # Pretraining wrote its provenance and per-step metrics; alignment its QC report.
    run = json.loads((res / "pretrain" / "pcl" / "run.json").read_text())
    assert run["config"] and run["versions"]["torch"]
    steps = [json.loads(line) for line in (res / "pretrain" / "pcl" / "metrics.jsonl").read_text().splitlines()]
    assert steps and all(v == v for v in steps[-1].values() if isinstance(v, float))
    qc = json.loads((tmp_path / "data" / "aligned" / "synth_vox" / "train" / "qc.json").read_text())
    assert qc["n_kept"] == qc["n_total"] > 0 and qc["n_failed"] == 0
    assert (res / "contact_sheets" / "synth_vox.png").stat().st_size > 10_000
    # A second run has nothing to do (idempotent).
    again = run_snakemake(tmp_path, "-n", "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr


# Stage 6 outputs of the tiny run besides `all` (workflow/rules/common.smk: report_targets()).
TINY_TASKS = ["expression", "verification", "au", "pose"]
TINY_TABLES = [n for t in TINY_TASKS for n in (t, f"{t}_readouts")] + ["ablation", "summary"]
TINY_FIGURES = ([f"bars_{t}.png" for t in TINY_TASKS] + ["curves_random.png", "curves_pcl.png", "swap_grid_pcl.png",
                                                        "embedding_pcl.png"])


@pytest.mark.slow
def test_report_tiny(tmp_path):
    """`snakemake --report` on the tiny run: one self-contained HTML page with every table and figure.

    Reuses the end-to-end test's run directory when that test ran earlier in this session (pytest's
    basetemp/test_end_to_end_tiny0), so only the stage-6 jobs and the report are extra.
    """
    import re

    previous = tmp_path.parent / "test_end_to_end_tiny0"
    workdir = previous if (previous / "results" / "tables" / "summary.md").is_file() else tmp_path
    targets = (["all", "results/metrics.json"] + [f"results/tables/{n}.html" for n in TINY_TABLES]
               + [f"results/figures/{f}" for f in TINY_FIGURES])
    run_snakemake(workdir, "--cores", "2", *targets)
    run_snakemake(workdir, "--cores", "1", "--report", "results/report.html", *targets)
    page = (workdir / "results" / "report.html").read_text()
    # self-contained: nothing fetched from elsewhere (scripts, styles and images are embedded)
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", page), "the report loads external resources"
    for name in TINY_TABLES:
        assert f"{name}.html" in page, name
    for name in TINY_FIGURES:
        assert name in page, name
    for f in TINY_FIGURES:
        assert (workdir / "results" / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    metrics = json.loads((workdir / "results" / "metrics.json").read_text())
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    assert "pcl/synth_expression/accuracy_pct" in metrics
