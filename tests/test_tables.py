"""Comparison tables from fake probe results: rows, "not run" cells, directions, provenance notes."""
from __future__ import annotations

import csv

import pytest

from pclbench.tables import NOT_RUN, build_tables


def result(task, method, metrics, seed=0, readout="trunk", **extra):
    return {"task": task, "method": method, "dataset": f"synth_{task}", "readout": readout,
            "protocol": "validation-selected", "metrics": metrics, "seed": seed,
            "method_info": {"pose_negatives": "fixed", "optimizer": "faithful", "noise_std": 0.4,
                            "dwa": {"enabled": True}} if method == "pcl" else None, "source": f"{method}/{task}.json",
            **extra}


RESULTS = [
    result("expression", "pcl", {"accuracy_pct": 80.0, "mean_class_accuracy_pct": 70.0}),
    result("expression", "simclr", {"accuracy_pct": 75.0, "mean_class_accuracy_pct": 72.0}),
    result("pose", "pcl", {"mae_yaw_deg": 5.0, "mae_pitch_deg": 6.0, "mae_roll_deg": 4.0, "mae_mean_deg": 5.0}),
    result("pose", "simclr", {"mae_yaw_deg": 4.0, "mae_pitch_deg": 7.0, "mae_roll_deg": 5.0,
                              "mae_mean_deg": 16 / 3}),
    result("au", "pcl", {"mean_f1_pct": 50.0}, per_au={"AU1": {"f1_pct": 40.0}, "AU12": {"f1_pct": None}}),
    result("verification", "pcl", {"accuracy_mean_pct": 90.0, "accuracy_std_pct": 1.0}, seed=0),
    result("verification", "pcl", {"accuracy_mean_pct": 92.0, "accuracy_std_pct": 1.0}, seed=1),
]
CONFIG = {"workflow": {"tasks": ["expression", "verification", "au", "pose"],
                       "methods": ["pcl", "simclr", "moco"]},
          "tasks": {"expression": {}, "verification": {}, "au": {}, "pose": {}}}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def tables(tmp_path):
    paths = build_tables(RESULTS, tmp_path, CONFIG)
    return tmp_path, paths


def test_files_written(tables):
    out, paths = tables
    names = sorted(p.name for p in paths)
    assert names == sorted([f"{t}.{e}" for t in ("expression", "verification", "au", "pose", "summary")
                            for e in ("md", "csv")])
    assert not list(out.glob(".*tmp"))


def test_task_csv_rows_and_not_run(tables):
    out, _ = tables
    rows = read_csv(out / "expression.csv")
    assert [r["method"] for r in rows] == ["pcl", "simclr", "moco"]
    assert float(rows[0]["accuracy_pct"]) == 80.0 and float(rows[1]["mean_class_accuracy_pct"]) == 72.0
    assert rows[2]["accuracy_pct"] == NOT_RUN and rows[2]["n_seeds"] == "0"
    au = read_csv(out / "au.csv")
    assert float(au[0]["per_au:AU1"]) == 40.0 and au[0]["per_au:AU12"] == "n/a"
    assert au[1]["mean_f1_pct"] == NOT_RUN  # simclr has no AU result


def test_seeds_are_averaged(tables):
    out, _ = tables
    v = read_csv(out / "verification.csv")
    assert v[0]["n_seeds"] == "2" and float(v[0]["accuracy_mean_pct"]) == pytest.approx(91.0)
    assert float(v[0]["accuracy_mean_pct_seed_std"]) == pytest.approx(1.0)
    md = (out / "verification.md").read_text()
    assert "91.00 ± 1.00" in md


def test_markdown_best_cells_follow_direction(tables):
    out, _ = tables
    pose = (out / "pose.md").read_text()
    lines = {l.split("|")[1].strip(): l for l in pose.splitlines() if l.startswith("| ")}
    # lower MAE is better: simclr's yaw 4.00 and pcl's pitch 6.00 / mean 5.00 are bold
    assert "**4.00**" in lines["simclr"] and "**6.00**" in lines["pcl"] and "**5.00**" in lines["pcl"]
    assert "**5.33**" not in lines["simclr"]
    assert NOT_RUN in lines["moco"]
    assert "Yaw MAE (°) ↓" in pose
    expr = (out / "expression.md").read_text()
    assert "**80.00**" in expr and "**72.00**" in expr and "Accuracy (%) ↑" in expr


def test_summary_direction_and_notes(tables):
    out, _ = tables
    rows = read_csv(out / "summary.csv")
    header = list(rows[0])
    assert header[0] == "method"
    assert "expression:accuracy_pct (higher is better)" in header
    assert "pose:mae_mean_deg (lower is better)" in header
    by = {r["method"]: r for r in rows}
    assert by["moco"]["expression:accuracy_pct (higher is better)"] == NOT_RUN
    assert by["simclr"]["au:mean_f1_pct (higher is better)"] == NOT_RUN
    assert float(by["pcl"]["verification:accuracy_mean_pct (higher is better)"]) == pytest.approx(91.0)
    md = (out / "summary.md").read_text()
    assert "Pose mean MAE (°) ↓" in md and "Expression accuracy (%) ↑" in md
    pcl_line = next(l for l in md.splitlines() if l.startswith("| pcl "))
    assert "**5.00**" in pcl_line and "**80.00**" in pcl_line
    assert "Dataset: synth_expression" in (out / "expression.md").read_text()
    for text in ("Readout: trunk", "Protocol: validation-selected", "pcl: pose_negatives=fixed, optimizer=faithful",
                 "simclr: no method_info recorded", "pcl/expression.json"):
        assert text in md


def test_multiple_readouts_get_separate_rows(tmp_path):
    res = [result("expression", "pcl", {"accuracy_pct": 80.0, "mean_class_accuracy_pct": 70.0}),
           result("expression", "pcl", {"accuracy_pct": 85.0, "mean_class_accuracy_pct": 75.0}, readout="face")]
    build_tables(res, tmp_path, {"tasks": {"expression": {}}})
    md = (tmp_path / "expression.md").read_text()
    assert "| pcl [trunk] |" in md and "| pcl [face] |" in md
    summary = read_csv(tmp_path / "summary.csv")
    assert float(summary[0]["expression:accuracy_pct (higher is better)"]) == 80.0  # trunk = authors' readout


def test_bad_result_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="task/method"):
        build_tables([{"metrics": {}}], tmp_path, {})
