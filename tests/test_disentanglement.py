"""The disentanglement table (pclbench.report.disentanglement) from hand-written probe results in the
contract format (docs/architecture.md): face / pose cells, Δ oriented so that > 0 = PCL's claim holds,
its standard error sqrt(s_f²/n_f + s_p²/n_p) and the |Δ| > 2 SE mark, all computed by hand below;
a method without heads left out, a readout not probed (n/a), a benchmark not run, the four formats,
and a tiny table's Markdown line by line."""
from __future__ import annotations

import csv
import math

from pclbench.report.published import Published
from pclbench.report.render import to_latex, to_markdown
from pclbench.report.tables import Comparison, build_tables, table_names
from pclbench.report.disentanglement import disentanglement_table

TABLES = {"primary_readout": "trunk", "decimals": 2, "metrics": {}, "published": "unused.yaml"}
BENCHMARKS = {"synth_expression": {"task": "expression"}, "lfw": {"task": "verification"},
              "synth_pose": {"task": "pose"}}
# workflow order puts pose first: the table orders benchmarks by task (expression, verification, au, pose)
CONFIG = {"tables": TABLES, "benchmarks": BENCHMARKS,
          "workflow": {"methods": ["simclr", "pcl", "pcl_half"],
                       "benchmarks": ["synth_pose", "synth_expression", "lfw"]}}
LFW_REASON = "data/raw/lfw missing"


def s(mean, std, n):
    return {"mean": mean, "std": std, "n": n}


def probe(method, benchmark, task, primary, summary):
    return {"benchmark": benchmark, "task": task, "method": method, "protocol": "clean", "readouts": list(summary),
            "seeds": [1, 2, 3], "runs": [], "summary": summary, "std_over": "seeds", "primary_metric": primary,
            "method_info": {"method": method}}


PROBES = [
    # a method without heads: only the trunk is probed -> left out of the table, named in a note
    probe("simclr", "synth_expression", "expression", "accuracy_pct", {"trunk": {"accuracy_pct": s(70.0, 1.0, 4)}}),
    probe("simclr", "synth_pose", "pose", "mae_mean_deg", {"trunk": {"mae_mean_deg": s(9.0, 0.1, 3)}}),
    probe("pcl", "synth_expression", "expression", "accuracy_pct",
          {"trunk": {"accuracy_pct": s(65.0, 1.0, 4)}, "face": {"accuracy_pct": s(60.0, 2.0, 4)},
           "pose": {"accuracy_pct": s(50.0, 1.0, 4)}}),
    probe("pcl", "synth_pose", "pose", "mae_mean_deg",
          {"face": {"mae_mean_deg": s(12.0, 0.3, 3)}, "pose": {"mae_mean_deg": s(11.9, 0.4, 3)}}),
    probe("pcl_half", "synth_expression", "expression", "accuracy_pct",
          {"face": {"accuracy_pct": s(40.0, 0.5, 2)}, "pose": {"accuracy_pct": s(45.0, 0.5, 2)}}),
    # the pose readout was not probed here -> pose cell and Δ n/a
    probe("pcl_half", "synth_pose", "pose", "mae_mean_deg", {"face": {"mae_mean_deg": s(13.0, 0.2, 3)}}),
]


def table():
    comp = Comparison(PROBES, CONFIG, {"lfw": LFW_REASON}, Published({}, []))
    return disentanglement_table(comp)


def test_rows_columns_and_hand_computed_cells():
    t = table()
    assert [r.label for r in t.rows] == ["pcl", "pcl_half"]  # simclr (no heads) left out
    assert t.groups == [("synth_expression", 3), ("lfw", 3), ("synth_pose", 3)]
    assert t.columns == ["Acc. (%) face ↑", "Acc. (%) pose ↑", "Δ (claim: face) ± SE",
                         "Acc. (%) face ↑", "Acc. (%) pose ↑", "Δ (claim: face) ± SE",
                         "Mean MAE (°) face ↓", "Mean MAE (°) pose ↓", "Δ (claim: pose) ± SE"]
    pcl, half = t.rows
    # expression: Δ = face - pose = 60 - 50 = +10; SE = sqrt(2²/4 + 1²/4) = sqrt(1.25) = 1.118 -> 10 > 2.236: *
    # pose: Δ = MAE(face) - MAE(pose) = 12.0 - 11.9 = +0.1; SE = sqrt(.09/3 + .16/3) = 0.2887 -> 0.1 < 0.577: no *
    assert pcl.cells == ["60.00 ± 2.00 (4)", "50.00 ± 1.00 (4)", "+10.00 ± 1.12 *",
                         "not run [a]", "not run [a]", "",
                         "12.00 ± 0.30 (3)", "11.90 ± 0.40 (3)", "+0.10 ± 0.29"]
    # expression: Δ = 40 - 45 = -5 (the pose head is better: the claim fails); SE = sqrt(.25/2 + .25/2) = 0.5 -> *
    assert half.cells == ["40.00 ± 0.50 (2)", "45.00 ± 0.50 (2)", "-5.00 ± 0.50 *",
                          "not run [a]", "not run [a]", "",
                          "13.00 ± 0.20 (3)", "n/a", "n/a"]
    assert pcl.csv["synth_expression:accuracy_pct:face"] == repr(60.0)
    assert pcl.csv["synth_expression:accuracy_pct:pose:std"] == repr(1.0)
    assert pcl.csv["synth_expression:accuracy_pct:difference"] == repr(10.0)
    assert math.isclose(float(pcl.csv["synth_expression:accuracy_pct:difference:se"]), math.sqrt(1.25))
    assert pcl.csv["synth_expression:accuracy_pct:difference:gt_2se"] == "yes"
    assert math.isclose(float(pcl.csv["synth_pose:mae_mean_deg:difference"]), 0.1)
    assert math.isclose(float(pcl.csv["synth_pose:mae_mean_deg:difference:se"]), math.sqrt(0.25 / 3))
    assert pcl.csv["synth_pose:mae_mean_deg:difference:gt_2se"] == "no"
    assert pcl.csv["lfw:accuracy_pct:face"] == "not run"
    assert half.csv["synth_pose:mae_mean_deg:difference"] == "n/a"


def test_mark_is_strictly_more_than_two_se_and_needs_two_samples():
    # SE = sqrt(1/2 + 1/2) = 1 exactly: Δ = 2 is not marked, Δ = 2.5 is; n = 1 on a side: SE n/a, no mark
    def row(face_mean, pose_mean, n=2, std=1.0, pose=None):
        ps = [probe("pcl", "synth_expression", "expression", "accuracy_pct",
                    {"face": {"accuracy_pct": s(face_mean, std, n)},
                     "pose": {"accuracy_pct": pose or s(pose_mean, std, 2)}})]
        comp = Comparison(ps, {"tables": TABLES, "benchmarks": BENCHMARKS}, None, Published({}, []))
        return disentanglement_table(comp).rows[0]

    assert row(52.0, 50.0).cells[2] == "+2.00 ± 1.00"
    assert row(52.5, 50.0).cells[2] == "+2.50 ± 1.00 *"
    # unequal n: SE = sqrt(2²/4 + 3²/9) = sqrt(2) = 1.414; Δ = 3 > 2.83: *
    assert row(50.0, None, n=4, std=2.0, pose=s(47.0, 3.0, 9)).cells[2] == "+3.00 ± 1.41 *"
    r = row(52.5, 50.0, n=1, std=None)
    assert r.cells[2] == "+2.50 ± n/a"
    assert r.csv["synth_expression:accuracy_pct:difference:se"] == ""
    assert r.csv["synth_expression:accuracy_pct:difference:gt_2se"] == ""


def test_notes_name_the_claim_the_direction_the_rule_and_the_left_out_method():
    notes = table().notes
    assert notes[0].startswith("The claim (PCL, CVPR 2023; docs/method.md §1.1): the face-aware head F_f carries "
                               "identity and expression and not pose")
    assert "Δ = MAE(face) - MAE(pose), Δ > 0 = the pose head is better at pose (MAE_pose < MAE_face)" in notes[1]
    assert "Δ = face - pose, Δ > 0 = the face head is better" in notes[1]
    assert "SE = sqrt(s_f²/n_f + s_p²/n_p)" in notes[2] and "* = |Δ| > 2 SE" in notes[2]
    assert "SE is the probe noise, not the pretraining noise" in notes[2]
    assert notes[3].endswith("Left out (no face/pose heads probed): simclr.")
    assert f"[a] lfw: not run -- {LFW_REASON}" in notes


def test_build_tables_writes_all_four_formats_and_table_names_lists_it(tmp_path):
    assert table_names(["expression"])[-1] == "disentanglement"
    written = build_tables(PROBES, tmp_path, CONFIG, {"lfw": LFW_REASON}, Published({}, []))
    for ext in ("md", "csv", "tex", "html"):
        assert tmp_path / f"disentanglement.{ext}" in written
    with open(tmp_path / "disentanglement.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["pcl", "pcl_half"]
    assert rows[1]["synth_expression:accuracy_pct:difference"] == "-5.0"
    tex = (tmp_path / "disentanglement.tex").read_text()
    assert r"pcl & 60.00 $\pm$ 2.00 (4) & 50.00 $\pm$ 1.00 (4) & +10.00 $\pm$ 1.12 * & not run [a] & not run [a] &  " \
           r"& 12.00 $\pm$ 0.30 (3) & 11.90 $\pm$ 0.40 (3) & +0.10 $\pm$ 0.29 \\" in tex.splitlines()
    assert r"pcl\_half & 40.00 $\pm$ 0.50 (2) & 45.00 $\pm$ 0.50 (2) & $-$5.00 $\pm$ 0.50 * & not run [a] & " \
           r"not run [a] &  & 13.00 $\pm$ 0.20 (3) & n/a & n/a \\" in tex.splitlines()
    assert (tmp_path / "disentanglement.md").read_text() == to_markdown(table())
    assert tex == to_latex(table())


def test_tiny_markdown_line_by_line():
    ps = [probe("pcl", "synth_pose", "pose", "mae_mean_deg",
                {"face": {"mae_mean_deg": s(12.0, 0.3, 3)}, "pose": {"mae_mean_deg": s(11.0, 0.4, 3)}})]
    comp = Comparison(ps, {"tables": TABLES, "benchmarks": BENCHMARKS}, None, Published({}, []))
    lines = to_markdown(disentanglement_table(comp)).splitlines()
    # Δ = 12 - 11 = +1; SE = sqrt(.09/3 + .16/3) = 0.2887; 1 > 0.577: *
    expected = [
        "# Disentanglement: face head F_f vs pose head F_p (primary metric per benchmark)",
        "",
        "| Method | synth_pose: Mean MAE (°) face ↓ | synth_pose: Mean MAE (°) pose ↓ | "
        "synth_pose: Δ (claim: pose) ± SE |",
        "|---|---:|---:|---:|",
        "| pcl | 12.00 ± 0.30 (3) | 11.00 ± 0.40 (3) | +1.00 ± 0.29 * |",
        "",
        "Notes:",
        "",
    ]
    assert lines[:8] == expected
    notes = lines[8:]
    assert len(notes) == 6 and [n.split(". ", 1)[0] for n in notes] == ["1", "2", "3", "4", "5", "6"]
    assert notes[3] == ("4. Rows: methods with both the face and the pose readout probed on at least one benchmark; "
                        "n/a = this readout was not probed for this benchmark. Left out (no face/pose heads "
                        "probed): none.")
    assert notes[4] == "5. Cells: mean ± sample std (n) of our runs; synth_pose: std over seeds (seeds 1, 2, 3)."
    assert notes[5].startswith("6. Protocol (clean = selection on a validation split") and \
        notes[5].endswith("pcl: protocol clean; {\"method\": \"pcl\"}.")
