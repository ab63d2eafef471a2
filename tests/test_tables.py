"""Comparison tables from hand-made probe results in the contract format (docs/architecture.md):
mean +- std (n) cells, published numbers and differences, "not run" cells with their reason, LaTeX
structure, the ablation rows, summary and metrics.json, the published-results schema."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pclbench.core.config import ConfigError
from pclbench.report.published import load_published
from pclbench.report.render import latex_escape
from pclbench.report.results import NOT_RUN
from pclbench.report.tables import build_tables

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"primary_readout": "trunk", "decimals": 2,
          "metrics": {"expression": ["accuracy_pct", "mean_class_accuracy_pct"], "verification": ["accuracy_pct"],
                      "au": ["mean_f1_pct"], "pose": ["mae_yaw_deg", "mae_mean_deg"]},
          "published": "unused.yaml"}
BENCHMARKS = {"synth_expression": {"task": "expression"}, "raf_db": {"task": "expression"},
              "lfw": {"task": "verification"}, "synth_pose": {"task": "pose"}}
CONFIG = {"tables": TABLES, "benchmarks": BENCHMARKS,
          "workflow": {"methods": ["random", "pcl", "pcl_wo_pdd"],
                       "benchmarks": ["synth_expression", "raf_db", "lfw", "synth_pose"]}}


def stat(mean, std, n=3):
    return {"mean": mean, "std": std, "n": n}


def probe(method, benchmark, task, summary, primary, higher=True, ablation="full", protocol="clean",
          std_over="seeds"):
    info = {"method": "pcl", "variant": {"pose_negatives": "fixed", "optimizer": "faithful"}, "ablation": ablation} \
        if method.startswith("pcl") else {"method": method}
    return {"benchmark": benchmark, "task": task, "method": method,
            "datasets": {"train": f"{benchmark}/train", "test": f"{benchmark}/test"}, "protocol": protocol,
            "readouts": list(summary), "seeds": [3456, 3457, 3458], "runs": [], "summary": summary,
            "std_over": std_over, "primary_metric": primary, "higher_is_better": higher, "method_info": info,
            "provenance": {}}


PROBES = [
    probe("pcl", "synth_expression", "expression",
          {"trunk": {"accuracy_pct": stat(80.0, 1.0), "mean_class_accuracy_pct": stat(70.0, 2.0)},
           "face": {"accuracy_pct": stat(85.0, 0.5), "mean_class_accuracy_pct": stat(75.0, 0.25)}}, "accuracy_pct"),
    probe("random", "synth_expression", "expression",
          {"trunk": {"accuracy_pct": stat(50.0, 0.0), "mean_class_accuracy_pct": stat(40.0, 0.0)}}, "accuracy_pct"),
    probe("pcl_wo_pdd", "synth_expression", "expression",
          {"trunk": {"accuracy_pct": stat(77.5, 1.5), "mean_class_accuracy_pct": stat(66.0, 1.0)}}, "accuracy_pct",
          ablation="w/o PDD, w/o DWA"),
    probe("pcl", "raf_db", "expression",
          {"trunk": {"accuracy_pct": stat(72.0, 0.5), "mean_class_accuracy_pct": stat(60.0, 0.5)}}, "accuracy_pct",
          protocol="paper"),
    probe("pcl", "synth_pose", "pose",
          {"trunk": {"mae_yaw_deg": stat(5.0, 0.1), "mae_mean_deg": stat(6.0, 0.2)}}, "mae_mean_deg", higher=False),
    probe("random", "synth_pose", "pose",
          {"trunk": {"mae_yaw_deg": stat(9.0, 0.3), "mae_mean_deg": stat(10.0, 0.4)}}, "mae_mean_deg", higher=False),
]
NOT_RUN_REASON = "manual dataset lfw is not under data/sources/lfw"
PUBLISHED = {
    "sources": {"paper": {"title": "A paper", "url": "https://example.org", "where": "Table 2"},
                "readme": {"title": "A README", "where": "results section"}},
    "columns": {"RAF-DB": {"benchmark": "raf_db", "metric": "accuracy_pct"},
                "LFW": {"benchmark": "lfw", "metric": "accuracy_pct"}},
    "methods": [
        {"name": "PCL (paper)", "matches": ["pcl"], "source": "paper", "protocol": "best test epoch",
         "results": {"RAF-DB": 75.25, "LFW": None}},
        {"name": "FaceCycle", "matches": [], "source": "readme", "results": {"RAF-DB": 71.01, "LFW": 73.72}},
    ],
}


def write_published(tmp_path, data=PUBLISHED):
    p = tmp_path / "published.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def tables(tmp_path):
    out = tmp_path / "tables"
    paths = build_tables(PROBES, out, CONFIG, not_run={"lfw": NOT_RUN_REASON},
                         published=load_published(write_published(tmp_path)), metrics_json=tmp_path / "metrics.json")
    return out, paths


def md_rows(text):
    """Markdown table rows as {label: [cells]} (the bold marks stripped)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def md_header(text):
    line = next(l for l in text.splitlines() if l.startswith("| Method"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")][1:]


def test_files_written(tables):
    out, paths = tables
    names = {p.name for p in paths}
    for base in ("expression", "expression_readouts", "verification", "verification_readouts", "pose",
                 "pose_readouts", "ablation"):
        assert {f"{base}.{e}" for e in ("md", "csv", "tex", "html")} <= names, base
    assert {"summary.md", "summary.csv", "summary.html", "metrics.json"} <= names
    assert not list(out.glob(".*tmp"))


def test_expression_cells_published_and_difference(tables):
    out, _ = tables
    md = (out / "expression.md").read_text()
    header, rows = md_header(md), md_rows(md)
    assert header[:2] == ["synth_expression: Acc. (%) ↑", "synth_expression: Mean-class acc. (%) ↑"]
    # raf_db has published numbers: ours, published, difference (PCL (paper) matches our pcl)
    assert header[2:5] == ["raf_db: Acc. (%) ↑", "raf_db: Acc. (%) published", "raf_db: Acc. (%) Δ"]
    assert rows["pcl"][:5] == ["80.00 ± 1.00 (3)", "70.00 ± 2.00 (3)", "72.00 ± 0.50 (3)", "75.25", "-3.25"]
    # random has no raf_db result although raf_db ran: "not run", no published number of its own
    assert rows["random"][2:5] == [NOT_RUN, "", ""]
    # FaceCycle matches none of our methods: a published-only row, no reproduced values
    assert rows["FaceCycle (published)"][:5] == ["—", "—", "—", "71.01", ""]
    assert "Published (PCL (paper)): A paper, Table 2 (https://example.org)." in md
    assert "Published (FaceCycle): A README, results section." in md
    assert "Published protocol (PCL (paper)): best test epoch." in md and "pcl: protocol clean/paper" in md
    assert "pose_negatives=fixed" in md and "variant.optimizer=faithful" in md


def test_best_cell_is_bold_by_direction(tables):
    out, _ = tables
    pose = (out / "pose.md").read_text()
    pcl_line = next(l for l in pose.splitlines() if l.startswith("| pcl |"))
    assert "**6.00 ± 0.20 (3)**" in pcl_line and "**5.00 ± 0.10 (3)**" in pcl_line  # lower MAE wins
    assert "Yaw MAE (°) ↓" in pose
    expr = (out / "expression.md").read_text()
    assert "**80.00 ± 1.00 (3)**" in expr and "**50.00" not in expr


def test_not_run_benchmark(tables):
    out, _ = tables
    md = (out / "verification.md").read_text()
    rows = md_rows(md)
    assert rows["pcl"][0] == f"{NOT_RUN} [a]" and rows["random"][0] == f"{NOT_RUN} [a]"
    assert f"[a] lfw: {NOT_RUN} -- {NOT_RUN_REASON}" in md
    # the published LFW number of FaceCycle is still shown, ours never gets a number
    assert rows["FaceCycle (published)"][:2] == ["—", "73.72"]
    assert not re.search(r"\| pcl \|[^\n]*\d", md.replace("[a]", "")), "a not-run row holds a number"
    csv_rows = {r["method"]: r for r in read_csv(out / "verification.csv")}
    assert csv_rows["pcl"]["lfw:accuracy_pct"] == NOT_RUN


def test_csv_full_precision(tables):
    out, _ = tables
    rows = {r["method"]: r for r in read_csv(out / "expression.csv")}
    assert float(rows["pcl"]["raf_db:accuracy_pct"]) == 72.0 and rows["pcl"]["raf_db:accuracy_pct:n"] == "3"
    assert float(rows["pcl"]["raf_db:accuracy_pct:published"]) == 75.25
    assert float(rows["pcl"]["raf_db:accuracy_pct:difference"]) == pytest.approx(-3.25)
    assert rows["FaceCycle (published)"]["kind"] == "published"


def test_readouts_table(tables):
    out, _ = tables
    rows = md_rows((out / "expression_readouts.md").read_text())
    assert rows["pcl [trunk]"][0] == "80.00 ± 1.00 (3)" and rows["pcl [face]"][0] == "85.00 ± 0.50 (3)"
    assert rows["random [trunk]"][1] == NOT_RUN


def test_ablation_rows(tables):
    out, _ = tables
    md = (out / "ablation.md").read_text()
    rows = md_rows(md)
    assert list(rows) == ["PCL (full)", "PCL w/o PDD, w/o DWA"]  # full first, then the variants; not random
    assert rows["PCL w/o PDD, w/o DWA"][0] == "77.50 ± 1.50 (3)"
    assert rows["PCL (full)"][3] == "6.00 ± 0.20 (3)"  # synth_pose primary metric (mean MAE)
    assert "No ablation variant ran" not in md


def test_summary_and_metrics_json(tables, tmp_path):
    out, _ = tables
    rows = {r["method"]: r for r in read_csv(out / "summary.csv")}
    assert float(rows["pcl"]["synth_pose:mae_mean_deg"]) == 6.0
    assert rows["random"]["raf_db:accuracy_pct"] == NOT_RUN
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"pcl/synth_expression/accuracy_pct": 80.0, "random/synth_expression/accuracy_pct": 50.0,
                       "pcl_wo_pdd/synth_expression/accuracy_pct": 77.5, "pcl/raf_db/accuracy_pct": 72.0,
                       "pcl/synth_pose/mae_mean_deg": 6.0, "random/synth_pose/mae_mean_deg": 10.0}


def _strip_escaped(tex):
    return re.sub(r"\\[{}_%&#$]", "", tex)


def test_latex_structure(tables):
    out, _ = tables
    for name in ("expression", "verification", "pose", "ablation", "expression_readouts"):
        tex = (out / f"{name}.tex").read_text()
        bare = _strip_escaped(tex)
        assert bare.count("{") == bare.count("}"), name
        assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1, name
        assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
        assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex and r"\end{table}" in tex
        # no unescaped underscore, percent or unicode math outside math mode
        assert not re.search(r"(?<!\\)_", tex.replace(r"\_", "")), name
        assert not re.search(r"(?<!\\)%", tex), name
        assert "±" not in tex and "Δ" not in tex and "°" not in tex
        # every row has as many cells as the column spec says
        ncols = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1))
        body = tex[tex.index(r"\midrule") + 8:tex.index(r"\bottomrule")]
        for line in body.strip().splitlines():
            assert line.count(" & ") == ncols - 1, line
    tex = (out / "expression.tex").read_text()
    assert r"72.00 $\pm$ 0.50 (3)" in tex and r"synth\_expression" in tex and r"\cmidrule(lr)" in tex
    assert r"$-$3.25" in tex


def test_latex_escape():
    assert latex_escape("a_b 50% & #1 {x} ±Δ°") == r"a\_b 50\% \& \#1 \{x\} $\pm$$\Delta$$^\circ$"


def test_std_over_folds_and_single_run(tmp_path):
    p = probe("pcl", "lfw", "verification", {"trunk": {"accuracy_pct": stat(90.0, 1.25, n=10)}}, "accuracy_pct",
              std_over="folds")
    q = probe("random", "lfw", "verification", {"trunk": {"accuracy_pct": stat(60.0, 0.0, n=1)}}, "accuracy_pct")
    build_tables([p, q], tmp_path, {"tables": TABLES}, published=load_published(None))
    md = (tmp_path / "verification.md").read_text()
    rows = md_rows(md)
    assert rows["pcl"] == ["90.00 ± 1.25 (10)"] and rows["random"] == ["60.00 (1)"]
    assert "lfw: std over folds/seeds" in md


def test_bad_probe_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="missing key"):
        build_tables([{"task": "expression", "summary": {}}], tmp_path, {"tables": TABLES},
                     published=load_published(None))
    with pytest.raises(ValueError, match="two probe results"):
        build_tables([PROBES[0], PROBES[0]], tmp_path, {"tables": TABLES}, published=load_published(None))
    with pytest.raises(ValueError, match="marked not run"):
        build_tables([PROBES[0]], tmp_path, {"tables": TABLES}, not_run={"synth_expression": "x"},
                     published=load_published(None))


def test_published_file_of_the_repo_is_valid():
    pub = load_published(ROOT / "config" / "published_results.yaml")
    face = next(r for r in pub.rows if r.name == "FaceCycle")
    assert face.values[("raf_db", "accuracy_pct")] == (71.01, "facecycle_readme")
    assert face.values[("aflw2000", "mae_yaw_deg")][0] == 11.70
    pcl = next(r for r in pub.rows if r.name == "PCL (paper)")
    assert pcl.matches == ["pcl"] and pcl.values == {}  # not transcribed: no number without a source


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["methods"][0].update(source="nowhere"), "source 'nowhere' is not under sources"),
    (lambda d: d["methods"][1]["results"].update({"AffectNet": 60.0}), "'AffectNet' is not under columns"),
    (lambda d: d["methods"][1]["results"].update({"RAF-DB": "71"}), "error at methods.1.results.RAF-DB"),
    (lambda d: d["sources"]["paper"].pop("where"), "'where' is a required property"),
])
def test_published_schema_errors(tmp_path, edit, message):
    data = json.loads(json.dumps(PUBLISHED))
    edit(data)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_published(write_published(tmp_path, data))


def test_cli_tables(tmp_path, capsys):
    from pclbench.cli import main

    paths = []
    for p in PROBES:
        path = tmp_path / "probes" / p["method"] / f"{p['benchmark']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(p))
        paths.append(str(path))
    benchmarks = {b: {"task": e["task"], "train": None, "test": {"dataset": b, "split": "test"}, "labels": None,
                      "description": b} for b, e in BENCHMARKS.items()}
    params = json.dumps({"tables": {**TABLES, "published": str(write_published(tmp_path))},
                         "benchmarks": benchmarks})
    out = tmp_path / "tables"
    rc = main(["tables", "--params", params, "--out", str(out), "--not-run", f"lfw={NOT_RUN_REASON}",
               "--metrics-json", str(tmp_path / "metrics.json"), *paths])
    assert rc == 0
    assert f"[a] lfw: {NOT_RUN} -- {NOT_RUN_REASON}" in (out / "verification.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["pcl/raf_db/accuracy_pct"] == 72.0
    # a missing published file and a malformed --not-run are clear errors (exit status 2)
    assert main(["tables", "--params", params, "--out", str(out), "--published", str(tmp_path / "nope.yaml"),
                 *paths]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    assert main(["tables", "--params", params, "--out", str(out), "--not-run", "lfw", *paths]) == 2
    assert "expected NAME=REASON" in capsys.readouterr().err
