"""The label-only floor of each task (``pclbench.evaluate.<task>.trivial`` / ``floor``):
majority class (expression), best constant decision of the training folds (verification), all-positive
(AU), training mean (pose). Each floor is checked against a value computed by hand on a tiny hand-made
dataset; ``floor`` against the rows the probe reads (feature-cache rows, excluded labels, dropped
pairs, occurrence threshold); the probe result records it once per job; the tables show it as a first
row (n/a for results without it) and every other row stays as it was."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pclbench.evaluate import au, expression, pose, run_benchmark, verification
from pclbench.evaluate.benchmark import Roots, parse_benchmark
from pclbench.report.tables import build_tables
from test_probes import write_split as write_probe_split

TRAIN = {"optimizer": "lbfgs", "lr_grid": [1.0], "weight_decay_grid": [1e-3], "epochs": 5, "batch_size": 0,
         "lr_schedule": "constant", "eval_every": 5, "lr_step": "step", "init": "zeros", "shuffle": True,
         "decay_bias": False, "standardize": None}
CONFIG = {
    "seed": 0,
    "probe": {"readouts": ["trunk", "face"], "n_seeds": 1, "protocol": "clean", "device": "cpu",
              "standardize": True, "refit": "train_val", "val_fraction": 0.25, "num_threads": 1},
    "tasks": {
        "expression": {"selection_metric": "accuracy", "train": dict(TRAIN)},
        "verification": {"pairs_file": "pairs.csv", "n_folds": 3, "mode": "cosine", "margin": 0.0,
                         "train": dict(TRAIN)},
        "au": {"occurrence_threshold": 2, "threshold": "fixed", "fixed_threshold": 0.5, "train": dict(TRAIN)},
        "pose": {"standardize_targets": True, "train": dict(TRAIN)},
    },
}


def write_split(root: Path, dataset: str, split: str, manifest: pd.DataFrame, rows=None) -> None:
    """Aligned manifest (with its ``row`` column) + a feature cache holding only ``rows`` (default all):
    a manifest row without features is one the probe never sees (the probe tests' writer)."""
    x = np.random.default_rng(0).normal(size=(len(manifest), 4)).astype(np.float32)  # never read by a floor
    write_probe_split(root, split, manifest, x, rows=rows, dataset=dataset)


def roots(root: Path) -> Roots:
    return Roots(root / "features", root / "aligned", root / "raw")


def test_roots_rows_are_the_rows_load_returns(tmp_path):
    """The floors read only the cache's row key: the same manifest rows, in the same order, as the
    probe's features; a row unknown to the manifest is an error as in load_split."""
    m = pd.DataFrame({"expression": [3, 1, 4, 1, 5, 9], "subject": 0})
    write_split(tmp_path, "d", "s", m, rows=[4, 0, 2])  # a subset, out of order
    r = roots(tmp_path)
    ref = parse_benchmark("e", {"task": "expression", "train": {"dataset": "d", "split": "s"},
                                "test": {"dataset": "d", "split": "s"}, "labels": ["a", "b"],
                                "description": "t"}).test
    got = r.rows(ref)
    assert got["expression"].tolist() == [5, 3, 4]
    pd.testing.assert_frame_equal(got, r.load(ref, "trunk")[1])
    np.savez(tmp_path / "features" / "d" / "s.npz", trunk=np.zeros((1, 4), np.float32), row=np.array([7]))
    with pytest.raises(ValueError, match="not in"):
        r.rows(ref)


# ---------------------------------------------------------------------------------------------------
# expression: majority class of the training labels

def test_expression_majority_class_by_hand():
    y_train = [2, 2, 2, 0, 1, 1, 3]  # majority 2 (three votes)
    y_test = [2, 0, 2, 1, 3, 2, 4]  # 7 test labels, three of class 2
    r = expression.trivial(y_train, y_test, num_classes=5)
    assert r["majority_class"] == 2
    assert r["metrics"]["accuracy_pct"] == pytest.approx(100 * 3 / 7)
    # recall 1 for class 2, 0 for classes 0, 1, 3, 4 (all present in the test labels): 1/5
    assert r["metrics"]["mean_class_accuracy_pct"] == pytest.approx(20.0)
    assert r["metrics"]["chance_pct"] == pytest.approx(20.0)


def test_expression_tie_goes_to_the_lowest_label():
    r = expression.trivial([3, 1, 3, 1], [1, 1, 3], num_classes=4)
    assert r["majority_class"] == 1
    assert r["metrics"]["accuracy_pct"] == pytest.approx(100 * 2 / 3)


def test_expression_floor_reads_the_probe_rows(tmp_path):
    """Labels >= K are excluded and a test row without features is not scored, as in the probe."""
    names = ["a", "b", "c"]
    train = pd.DataFrame({"expression": [1, 1, 1, 0, 2, 5, 5, 5, 5], "subject": 0})  # 5: outside, excluded
    test = pd.DataFrame({"expression": [1, 1, 0, 2, 0, 1, 1], "subject": 1})
    write_split(tmp_path, "expr", "train", train)
    write_split(tmp_path, "expr", "test", test, rows=[0, 1, 2, 3, 4, 5])  # row 6 has no features
    bench = parse_benchmark("e", {"task": "expression", "train": {"dataset": "expr", "split": "train"},
                                  "test": {"dataset": "expr", "split": "test"}, "labels": names,
                                  "description": "t"})
    r = expression.floor(bench, roots(tmp_path), CONFIG)
    assert r["majority_class"] == 1  # not 5: outside the benchmark's classes
    assert r["metrics"]["accuracy_pct"] == pytest.approx(50.0)  # 3 of the 6 rows with features
    assert r["metrics"]["mean_class_accuracy_pct"] == pytest.approx(100 / 3)  # recalls 0, 1, 0
    assert r["metrics"]["chance_pct"] == pytest.approx(100 / 3)


# ---------------------------------------------------------------------------------------------------
# verification: the training folds' majority answer per fold

def test_verification_constant_decision_by_hand():
    same = [1, 1, 1, 0] + [0, 0, 0, 1] + [1, 1, 0]
    folds = [0] * 4 + [1] * 4 + [2] * 3
    r = verification.trivial(np.array(same), np.array(folds))
    # fold 0: other folds 3 same / 4 different -> "different", 1 of 4 right
    # fold 1: other folds 5 same / 2 different -> "same", 1 of 4 right
    # fold 2: other folds 4 / 4 -> no majority: mean of the two constants' accuracies (2/3 + 1/3) / 2
    assert [f["decision"] for f in r["per_fold"]] == ["different", "same", None]
    assert [f["accuracy_pct"] for f in r["per_fold"]] == pytest.approx([25.0, 25.0, 50.0])
    assert r["metrics"]["accuracy_pct"] == pytest.approx(100 / 3)


def test_verification_balanced_pairs_give_chance():
    rng = np.random.default_rng(1)
    folds = np.repeat(np.arange(10), 60)
    same = np.tile(np.r_[np.ones(30), np.zeros(30)], 10)
    order = rng.permutation(len(same))
    assert verification.trivial(same[order], folds[order])["metrics"]["accuracy_pct"] == 50.0


def _verification_data(root: Path):
    """9 images (image 8 failed alignment), 3 folds of pairs; returns the pairs table."""
    m = pd.DataFrame({"path": [f"images/{i}.png" for i in range(9)], "subject": range(9)})
    write_split(root, "ver", "all", m.iloc[:8].reset_index(drop=True))
    p = pd.DataFrame([(0, 0, 1, 1), (0, 2, 3, 1), (0, 0, 2, 0),
                      (1, 4, 5, 0), (1, 4, 6, 0), (1, 5, 7, 1), (1, 6, 8, 1),  # (6, 8) is dropped
                      (2, 1, 3, 1), (2, 5, 6, 0)], columns=["fold", "a", "b", "same"])
    p["path_a"] = [f"images/{i}.png" for i in p["a"]]
    p["path_b"] = [f"images/{i}.png" for i in p["b"]]
    (root / "raw" / "ver").mkdir(parents=True)
    p[["fold", "path_a", "path_b", "same"]].to_csv(root / "raw" / "ver" / "pairs.csv", index=False)
    return {"task": "verification", "train": None, "test": {"dataset": "ver", "split": "all"}, "labels": None,
            "description": "t"}


def test_verification_floor_is_recorded_once_in_the_probe_result(tmp_path):
    """The floor uses the pairs the probe scores (a pair with an unaligned image dropped) and the
    probe result carries it as ``trivial``, the other keys as before."""
    entry = _verification_data(tmp_path)
    res = run_benchmark("ver", entry, tmp_path / "features", tmp_path / "aligned", tmp_path / "raw",
                        copy.deepcopy(CONFIG), "m")
    # kept pairs: fold 0 = 2 same / 1 diff; fold 1 = 1 same / 2 diff; fold 2 = 1 same / 1 diff
    # fold 0: others 2 same / 3 diff -> different, 1/3; fold 1: others 3 / 2 -> same, 1/3;
    # fold 2: others 3 / 3 -> tie, 50 %
    assert res["trivial"]["metrics"]["accuracy_pct"] == pytest.approx((100 / 3 + 100 / 3 + 50) / 3)
    assert [f["decision"] for f in res["trivial"]["per_fold"]] == ["different", "same", None]
    assert res["runs"][0]["n_pairs_dropped"] == 1
    assert {"benchmark", "runs", "summary", "std_over", "primary_metric", "method_info"} <= set(res)


# ---------------------------------------------------------------------------------------------------
# AU: all-positive

def test_au_all_positive_f1_by_hand():
    y = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]])  # base rates 2/5, 5/5, 0/5
    r = au.trivial(y, ["AU1", "AU2", "AU4"])["metrics"]
    # all-positive: precision = base rate p, recall 1 -> F1 = 2p / (1 + p); p = 0 -> F1 = 0 (5 false positives)
    assert r["f1_AU1_pct"] == pytest.approx(100 * 4 / 7)
    assert r["f1_AU2_pct"] == pytest.approx(100.0)
    assert r["f1_AU4_pct"] == pytest.approx(0.0)
    assert r["mean_f1_pct"] == pytest.approx(100 * (4 / 7 + 1 + 0) / 3)


def test_au_floor_uses_the_occurrence_threshold_and_labels(tmp_path):
    m = pd.DataFrame({"subject": [0, 0, 1, 1, 2, 2], "fold": [0, 0, 1, 1, 2, 2],
                      "AU1": [0.0, 2.0, 1.9, 3.0, 5.0, 0.0],  # >= 2: 3 of 6
                      "AU2": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],  # 1 of 6
                      "AU9": [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]})  # not a benchmark label
    write_split(tmp_path, "au", "all", m)
    bench = parse_benchmark("a", {"task": "au", "train": None, "test": {"dataset": "au", "split": "all"},
                                  "labels": ["AU2", "AU1"], "description": "t"})
    r = au.floor(bench, roots(tmp_path), CONFIG)["metrics"]
    f1 = {"AU1": 2 * 0.5 / 1.5, "AU2": 2 * (1 / 6) / (7 / 6)}
    assert list(r) == ["mean_f1_pct", "f1_AU2_pct", "f1_AU1_pct"]
    assert r["f1_AU1_pct"] == pytest.approx(100 * f1["AU1"])
    assert r["f1_AU2_pct"] == pytest.approx(100 * f1["AU2"])
    assert r["mean_f1_pct"] == pytest.approx(50 * (f1["AU1"] + f1["AU2"]))


# ---------------------------------------------------------------------------------------------------
# pose: the training mean

def test_pose_training_mean_mae_by_hand():
    y_train = np.array([[10.0, 0.0, -4.0], [30.0, 6.0, 4.0]])  # mean (20, 3, 0)
    y_test = np.array([[20.0, 3.0, 0.0], [-10.0, 9.0, 2.0], [26.0, 0.0, -1.0]])
    r = pose.trivial(y_train, y_test)
    # |errors|: yaw 0, 30, 6 -> 12; pitch 0, 6, 3 -> 3; roll 0, 2, 1 -> 1
    assert r["train_mean_deg"] == {"yaw": 20.0, "pitch": 3.0, "roll": 0.0}
    assert r["metrics"] == pytest.approx({"mae_yaw_deg": 12.0, "mae_pitch_deg": 3.0, "mae_roll_deg": 1.0,
                                          "mae_mean_deg": 16 / 3})


def test_pose_floor_reads_angles_by_name(tmp_path):
    # columns deliberately in another order than (yaw, pitch, roll)
    write_split(tmp_path, "pose", "train", pd.DataFrame({"roll": [-4.0, 4.0], "yaw": [10.0, 30.0],
                                                         "pitch": [0.0, 6.0]}))
    write_split(tmp_path, "pose", "test", pd.DataFrame({"pitch": [3.0, 9.0, 0.0], "roll": [0.0, 2.0, -1.0],
                                                        "yaw": [20.0, -10.0, 26.0]}))
    bench = parse_benchmark("p", {"task": "pose", "train": {"dataset": "pose", "split": "train"},
                                  "test": {"dataset": "pose", "split": "test"}, "labels": None,
                                  "description": "t"})
    r = pose.floor(bench, roots(tmp_path), CONFIG)["metrics"]
    assert r == pytest.approx({"mae_yaw_deg": 12.0, "mae_pitch_deg": 3.0, "mae_roll_deg": 1.0,
                               "mae_mean_deg": 16 / 3})


# ---------------------------------------------------------------------------------------------------
# tables: the first row

TABLES = {"primary_readout": "trunk", "decimals": 2,
          "metrics": {"expression": ["accuracy_pct", "mean_class_accuracy_pct"], "au": ["mean_f1_pct"]},
          "published": "unused.yaml"}
TCONFIG = {"tables": TABLES, "benchmarks": {"expr": {"task": "expression"}, "aus": {"task": "au"},
                                            "gone": {"task": "au"}},
           "workflow": {"methods": ["random", "pcl"], "benchmarks": ["expr", "aus", "gone"]}}


def _probe(method, bench, task, summary, primary, trivial=None):
    p = {"benchmark": bench, "task": task, "method": method, "protocol": "clean", "readouts": ["trunk"],
         "seeds": [1, 2], "runs": [], "summary": {"trunk": summary}, "std_over": "seeds",
         "primary_metric": primary, "higher_is_better": True, "method_info": {"method": method}}
    if trivial is not None:
        p["trivial"] = {"predictor": "x", "metrics": trivial}
    return p


def _build(tmp_path, with_floor: bool) -> Path:
    from pclbench.report.published import Published

    floor = {"accuracy_pct": 100 / 7, "mean_class_accuracy_pct": 100 / 7, "chance_pct": 100 / 7}
    s = lambda m, sd: {"mean": m, "std": sd, "n": 2}  # noqa: E731
    probes = [
        _probe("random", "expr", "expression", {"accuracy_pct": s(20.0, 1.0), "mean_class_accuracy_pct": s(19.0, 1.0)},
               "accuracy_pct", floor if with_floor else None),
        _probe("pcl", "expr", "expression", {"accuracy_pct": s(30.0, 2.0), "mean_class_accuracy_pct": s(29.0, 2.0)},
               "accuracy_pct", floor if with_floor else None),
        # older result: no "trivial" key
        _probe("pcl", "aus", "au", {"mean_f1_pct": s(25.0, 0.5)}, "mean_f1_pct"),
    ]
    out = tmp_path / ("with" if with_floor else "without")
    build_tables(probes, out, TCONFIG, not_run={"gone": "dataset missing"}, published=Published({}, []))
    return out


def test_tables_first_row_is_the_floor(tmp_path):
    new, old = _build(tmp_path, True), _build(tmp_path, False)
    expr = (new / "expression.md").read_text().splitlines()
    head = expr.index("|---|---:|---:|")
    assert expr[head + 1] == "| trivial predictor | 14.29 | 14.29 |"  # no ± (n): deterministic
    assert expr[head + 2] == "| random | 20.00 ± 1.00 (2) | 19.00 ± 1.00 (2) |"
    n_notes = sum(1 for x in expr if x[:1].isdigit())
    assert expr[-1].startswith(f"{n_notes}. trivial predictor = the task's floor from the labels alone")  # last note
    au_md = (new / "au.md").read_text().splitlines()
    head = au_md.index("|---|---:|---:|")
    assert au_md[head + 1] == "| trivial predictor | n/a | not run [a] |"  # older result: n/a
    summary = (new / "summary.md").read_text().splitlines()
    head = summary.index("|---|---:|---:|---:|")
    assert summary[head + 1] == "| trivial predictor | 14.29 | n/a | not run [a] |"
    csv_lines = (new / "summary.csv").read_text().splitlines()
    assert csv_lines[1].startswith(f"trivial predictor,trivial predictor,{100 / 7!r},,,n/a,,,not run")
    # without the key the values are n/a; every other line is the same with or without the floor
    assert "| trivial predictor | n/a | n/a |" in (old / "expression.md").read_text().splitlines()
    # (au has no floor in either build: identical files)
    for name, n_diff in (("expression.md", 1), ("au.md", 0), ("summary.md", 1), ("expression.csv", 1),
                         ("expression.tex", 1), ("summary.csv", 1)):
        a, b = (new / name).read_text().splitlines(), (old / name).read_text().splitlines()
        rest = lambda lines: [x for x in lines if "trivial predictor" not in x]  # noqa: E731
        assert rest(a) == rest(b), name
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == n_diff, name  # only the floor row


def test_tables_latex_floor_row_is_plain(tmp_path):
    """LaTeX: the floor row has plain numbers (no bold, no ±), the best method keeps its bold."""
    new = _build(tmp_path, True)
    tex = (new / "expression.tex").read_text()
    assert "\\midrule\ntrivial predictor & 14.29 & 14.29 \\\\\nrandom & " in tex
    assert "pcl & \\textbf{30.00 $\\pm$ 2.00 (2)}" in tex
