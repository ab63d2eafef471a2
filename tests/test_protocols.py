"""Evaluation protocols: clean vs paper selection, L-BFGS convergence, seeds and summary statistics,
the probe CLI and its result contract (COMMON probe-result JSON)."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from test_probes import (BENCHMARKS, TRAIN, config, make_au, make_expression, make_pose, make_verification, run,
                         run_all)

from pclbench.core.config import from_dict
from pclbench.evaluate import run_benchmark, sample_stats, summarize
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe, standardizer, train_linear


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one torch thread (conftest.one_torch_thread)."""


def _probe(**over) -> ProbeConfig:
    return from_dict(ProbeConfig, {**config()["probe"], **over}, "probe")


def _train(**over) -> TrainConfig:
    return from_dict(TrainConfig, {**TRAIN, **over}, "train").check("train")


def _acc(o: np.ndarray, y: np.ndarray) -> float:
    return float((o.argmax(1) == y).mean())


# ---------------------------------------------------------------------------------------------------
# L-BFGS reaches the regularised optimum (the defect: a one-evaluation line search froze it)

def test_lbfgs_reaches_the_logistic_regression_optimum():
    """Raw (``probe.standardize: false``) large-scale features: the L-BFGS probe converges to the
    multinomial logistic-regression optimum that sklearn computes independently. Objectives: ours
    mean CE + wd/2 ||W||^2; sklearn's sum CE + 1/(2C) ||W||^2, so C = 1 / (wd N)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, k, wd = 300, 20, 5, 1e-2
    y = rng.integers(0, k, n)
    x = 20 * (rng.normal(size=(n, d)) + 0.7 * np.eye(k, d)[y])
    xs = torch.tensor(x, dtype=torch.float32)
    cp = train_linear(xs, torch.tensor(y), "ce", k, lr=1.0, weight_decay=wd, cfg=_train(epochs=100, eval_every=100),
                      seed=0, eval_sets={"x": xs})[-1]
    ours = torch.softmax(torch.tensor(cp.outputs["x"], dtype=torch.float64), 1).numpy()
    ref = LogisticRegression(C=1.0 / (wd * n), tol=1e-10, max_iter=10000).fit(x, y)
    assert np.abs(ours - ref.predict_proba(x)).max() < 2e-3


def test_lbfgs_line_search_is_not_starved():
    """torch's default max_eval (max_iter * 5 // 4 = 1 for one iteration per call) leaves the
    strong-Wolfe line search no evaluation: when the unit step overshoots it returns step 0, the
    curvature history never updates and the probe stays at its zero initialisation (loss ln K) for
    ever -- what froze the expression probe on ill-conditioned random-encoder features."""
    rng = np.random.default_rng(0)
    n, d, k, wd = 400, 40, 5, 1e-3
    y = rng.integers(0, k, n)
    basis = rng.normal(size=(10, d))  # rank-10 features plus small isotropic noise, at a large scale
    x = (rng.normal(size=(n, 10)) + 0.5 * np.eye(k, 10)[y]) @ basis + 0.01 * rng.normal(size=(n, d))
    xs = torch.tensor(20 * (x - x.mean(0)) / x.std(0), dtype=torch.float32)
    m = torch.nn.Linear(d, k)
    torch.nn.init.zeros_(m.weight), torch.nn.init.zeros_(m.bias)
    opt = torch.optim.LBFGS(m.parameters(), lr=1.0, max_iter=1, line_search_fn="strong_wolfe")  # as before

    def closure():
        opt.zero_grad()
        v = torch.nn.functional.cross_entropy(m(xs), torch.tensor(y)) + 0.5 * wd * m.weight.pow(2).sum()
        v.backward()
        return v

    for _ in range(40):
        opt.step(closure)
    assert float(closure().detach()) == pytest.approx(np.log(k), abs=1e-4)
    # the probe's trainer on the same problem: the weights are not returned, so refit its outputs
    cp = train_linear(xs, torch.tensor(y), "ce", k, lr=1.0, weight_decay=wd, cfg=_train(epochs=40, eval_every=40),
                      seed=0, eval_sets={"x": xs})[-1]
    ce = float(torch.nn.functional.cross_entropy(torch.tensor(cp.outputs["x"]), torch.tensor(y)))
    assert ce < np.log(k) - 0.1


# ---------------------------------------------------------------------------------------------------
# clean vs paper protocol

def _random_problem(seed=0, n=200, n_test=300, d=30):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, n),
            rng.normal(size=(n_test, d)).astype(np.float32), rng.integers(0, 4, n_test))


def test_paper_protocol_reports_the_best_test_checkpoint():
    """Paper = train on all training data, score test at every checkpoint of the grid, keep the max:
    compared with a hand loop over train_linear."""
    x, y, xt, yt = _random_problem()
    train = _train(weight_decay_grid=[1e-3, 1e-1], epochs=20, eval_every=5)
    out = fit_probe(x, y, xt, loss="ce", out_dim=4, probe=_probe(protocol="paper"), train=train, score=_acc,
                    higher_is_better=True, seed=0, y_test=yt)
    std = standardizer(torch.tensor(x), True)
    curve = []
    for wd in train.weight_decay_grid:
        for cp in train_linear(std(torch.tensor(x)), torch.tensor(y), "ce", 4, lr=1.0, weight_decay=wd, cfg=train,
                               seed=0, eval_sets={"t": std(torch.tensor(xt))}):
            curve.append(((wd, cp.epoch), _acc(cp.outputs["t"], yt)))
    best = max(curve, key=lambda c: c[1])  # first maximum, grid order then epoch
    assert out.selected["test_score"] == pytest.approx(best[1]) == pytest.approx(_acc(out.test_outputs, yt))
    assert (out.selected["weight_decay"], out.selected["epoch"]) == best[0]
    assert out.selected["selected_on"] == "test" and out.n_val == 0 and out.n_fit == out.n_train == 200
    assert [g["test_score"] for g in out.grid] == pytest.approx([c[1] for c in curve])
    with pytest.raises(ValueError, match="y_test"):
        fit_probe(x, y, xt, loss="ce", out_dim=4, probe=_probe(protocol="paper"), train=train, score=_acc,
                  higher_is_better=True, seed=0)


def test_paper_is_optimistic_and_clean_is_not_on_random_labels():
    """Random features and labels: every test accuracy is chance up to noise. The clean refit model is
    one of the paper protocol's candidates (same data, same deterministic L-BFGS path), so paper >=
    clean always, and here strictly: picking the max of noisy test scores inflates the number."""
    x, y, xt, yt = _random_problem(seed=1)
    train = _train(weight_decay_grid=[1e-4, 1e-2, 1.0], epochs=30, eval_every=3)
    clean = fit_probe(x, y, xt, loss="ce", out_dim=4, probe=_probe(), train=train, score=_acc,
                      higher_is_better=True, seed=0)
    paper = fit_probe(x, y, xt, loss="ce", out_dim=4, probe=_probe(protocol="paper"), train=train, score=_acc,
                      higher_is_better=True, seed=0, y_test=yt)
    a_clean, a_paper = _acc(clean.test_outputs, yt), _acc(paper.test_outputs, yt)
    clean_setting = [g for g in paper.grid if (g["weight_decay"], g["epoch"]) ==
                     (clean.selected["weight_decay"], clean.selected["epoch"])]
    assert clean_setting[0]["test_score"] == pytest.approx(a_clean)  # the same model, scored the same
    assert a_paper > a_clean + 0.02
    assert a_paper == pytest.approx(max(g["test_score"] for g in paper.grid))
    assert "test_score" not in clean.selected and clean.selected["selected_on"] == "validation"


def test_every_task_states_its_protocol(tmp_path):
    make_expression(tmp_path / "e", signal=0.5)
    make_au(tmp_path / "a")
    make_pose(tmp_path / "p", "all", n_train=200, n_test=100)
    for task, root in (("expression", tmp_path / "e"), ("au", tmp_path / "a"), ("pose", tmp_path / "p")):
        res = run_all(task, root, config(protocol="paper"))
        assert res["protocol"] == "paper" and "best test" in res["protocol_description"].lower()
        r = res["runs"][0]
        sel = r["selected"]["per_fold"] if task == "au" else [r["selected"]]
        assert all(s["selected_on"] == "test" for s in sel) and r["n_val"] == 0
        clean = run_all(task, root, config())
        assert clean["protocol"] == "clean" and "validation" in clean["protocol_description"]


def test_au_paper_protocol_with_validation_thresholds(tmp_path):
    """No validation split under the paper protocol: the per-AU thresholds come from the training
    folds' predictions (so they still differ from the fixed 0.5)."""
    make_au(tmp_path, feature_noise=6.0, base=1.0, scale=1.0, n=300)
    c = config(protocol="paper")
    c["tasks"]["au"]["threshold"] = "validation"
    r = run("au", tmp_path, c)
    th = [t for f in r["per_fold"] for t in f["thresholds"].values()]
    assert len(set(th)) > 1 and all(f["n_val"] == 0 for f in r["per_fold"])


def test_verification_linear_paper_protocol(tmp_path):
    make_verification(tmp_path, d=8, noise=0.3, nuisance=8)
    c = config(protocol="paper")
    c["tasks"]["verification"]["mode"] = "linear"
    c["tasks"]["verification"]["train"].update(epochs=10, eval_every=5)
    r = run("verification", tmp_path, c)
    assert all(s["selected_on"] == "test" and s["validation_fold"] is None for s in r["selected"]["per_fold"])
    for f, s in zip(r["per_fold"], r["selected"]["per_fold"]):
        assert f["accuracy_pct"] == pytest.approx(100 * s["test_score"])


# ---------------------------------------------------------------------------------------------------
# seeds and summary statistics

def test_sample_stats_against_statistics_module():
    v = [31.2, 29.8, 33.5, None, float("nan")]
    s = sample_stats(v)
    assert s == {"mean": pytest.approx(statistics.mean(v[:3])), "std": pytest.approx(statistics.stdev(v[:3])), "n": 3}
    assert sample_stats([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}
    assert sample_stats([None]) == {"mean": None, "std": None, "n": 0}
    runs = [{"readout": "trunk", "metrics": {"a": 1.0, "b": 2.0}}, {"readout": "trunk", "metrics": {"a": 3.0, "b": None}},
            {"readout": "face", "metrics": {"a": 5.0}}]
    assert summarize(runs, ["trunk", "face"]) == {
        "trunk": {"a": {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}, "b": {"mean": 2.0, "std": 0.0, "n": 1}},
        "face": {"a": {"mean": 5.0, "std": 0.0, "n": 1}}}


def test_seeds_readouts_and_summary_of_a_job(tmp_path):
    make_expression(tmp_path, signal=0.6)
    c = config(readouts=["trunk", "face"], n_seeds=3)
    c["seed"] = 100
    res = run_all("expression", tmp_path, c)
    assert res["seeds"] == [100, 101, 102] and res["std_over"] == "seeds"
    assert [(r["readout"], r["seed"]) for r in res["runs"]] == [(ro, s) for ro in ("trunk", "face")
                                                               for s in (100, 101, 102)]
    for ro in ("trunk", "face"):
        for metric in ("accuracy_pct", "mean_class_accuracy_pct"):
            vals = [r["metrics"][metric] for r in res["runs"] if r["readout"] == ro]
            assert res["summary"][ro][metric] == {"mean": pytest.approx(statistics.mean(vals)),
                                                  "std": pytest.approx(statistics.stdev(vals)), "n": 3}
    # seeds draw different validation splits (whole subjects), so the runs are not copies
    assert len({r["n_val"] for r in res["runs"]}) > 1 or len({r["selected"]["val_score"] for r in res["runs"]}) > 1
    again = run_all("expression", tmp_path, c)
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in res["runs"]]  # reproducible
    explicit = run_benchmark("expression", BENCHMARKS["expression"], tmp_path / "features", tmp_path / "aligned",
                             tmp_path / "raw", c, "pcl", seeds=[7], readouts=["face"])
    assert explicit["seeds"] == [7] and explicit["readouts"] == ["face"] and len(explicit["runs"]) == 1


# ---------------------------------------------------------------------------------------------------
# the CLI and the result file

def test_probe_cli_writes_the_result_contract(tmp_path):
    from pclbench.cli import main

    make_pose(tmp_path, "all", n_train=120, n_test=60, datasets=("lp", "aflw"))
    entry = {**BENCHMARKS["pose"], "train": {"dataset": "lp", "split": "train"},
             "test": {"dataset": "aflw", "split": "test"}}
    c = config(readouts=["trunk", "concat"], n_seeds=2)
    c["tasks"]["pose"]["train"].update(epochs=20, weight_decay_grid=[0.01])
    params = {"probe": c["probe"], "seed": 5, "tasks": {"pose": c["tasks"]["pose"]}, "benchmarks": {"aflw2000": entry}}
    out = tmp_path / "results" / "probes" / "m" / "aflw2000.json"
    argv = ["probe", "--params", json.dumps(params), "--method", "m", "--benchmark", "aflw2000",
            "--features-root", str(tmp_path / "features"), "--aligned-root", str(tmp_path / "aligned"),
            "--raw-root", str(tmp_path / "raw"), "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    for key in ("benchmark", "task", "method", "datasets", "protocol", "readouts", "seeds", "runs", "summary",
                "std_over", "primary_metric", "higher_is_better", "method_info", "provenance"):
        assert key in r, key
    assert (r["benchmark"], r["task"], r["method"], r["protocol"]) == ("aflw2000", "pose", "m", "clean")
    assert r["datasets"] == {"train": "lp/train", "test": "aflw/test"} and r["seeds"] == [5, 6]
    assert r["primary_metric"] == "mae_mean_deg" and r["higher_is_better"] is False
    assert len(r["runs"]) == 4 and set(r["summary"]) == {"trunk", "concat"}
    assert r["summary"]["trunk"]["mae_yaw_deg"]["n"] == 2
    assert all({"per_angle", "selected", "n_train", "n_val", "n_test"} <= set(run) for run in r["runs"])
    bad = [("nosuch" if a == "aflw2000" else a) for a in argv]
    assert main(bad) == 2  # unknown benchmark: a config error, exit code 2


# ---------------------------------------------------------------------------------------------------
# the shipped config

@pytest.mark.parametrize("override", [None, "tiny.yaml", "paper.yaml"])
def test_config_sections_fill_the_probe_dataclasses(override):
    """probe, tasks.<task> and every benchmark of config.yaml (+ override) build their dataclasses."""
    from pclbench.cli import load_config
    from pclbench.core.config import DEFAULT_CONFIG
    from pclbench.evaluate.au import AUConfig
    from pclbench.evaluate.benchmark import parse_benchmark
    from pclbench.evaluate.expression import ExpressionConfig
    from pclbench.evaluate.pose import PoseConfig
    from pclbench.evaluate.verification import VerificationConfig

    files = [DEFAULT_CONFIG] + ([DEFAULT_CONFIG.parent / override] if override else [])
    cfg = load_config(files)
    from_dict(ProbeConfig, cfg["probe"], "probe")
    for task, cls in (("expression", ExpressionConfig), ("verification", VerificationConfig), ("au", AUConfig),
                      ("pose", PoseConfig)):
        from_dict(cls, cfg["tasks"][task], f"tasks.{task}").train.check(f"tasks.{task}.train")
    for name, entry in cfg["benchmarks"].items():
        parse_benchmark(name, entry)
