"""Report figures from hand-made inputs: bar charts per task, training curves, the swap-grid copy, the
t-SNE embedding; each a valid PNG of the expected pixel size, deterministic, with clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pclbench.report import figures as F
from pclbench.cli import main
from pclbench.report.published import Published
from pclbench.report.tables import Comparison

from test_tables import CONFIG, PROBES

EMB = F.EmbeddingConfig(dataset="synth_expression", split="test", methods=["pcl"], readouts=["face", "pose"],
                        color_by=["yaw", "expression"], perplexity=5.0, max_points=40, seed=0)
FIG = {"dpi": 50, "curve_prefixes": ["loss_"], "smooth": 3, "swap_grid_methods": ["pcl"],
       "embedding": {"dataset": "synth_expression", "split": "test", "methods": ["pcl"], "readouts": ["face", "pose"],
                     "color_by": ["yaw", "expression"], "perplexity": 5.0, "max_points": 40, "seed": 0}}


def png_ok(path, size=None):
    assert F.is_png(path), path
    w, h = F.png_size(path)
    if size is not None:
        assert (w, h) == size, (path, (w, h), size)
    return w, h


def test_bar_chart_per_task(tmp_path):
    comp = Comparison(PROBES, CONFIG, {"lfw": "not in place"}, Published({}, []))
    for task in comp.tasks:
        p = F.bar_chart(comp, task, tmp_path / f"bars_{task}.png", dpi=50)
        w, h = png_ok(p)
        # figure size (max(4.5, 1.5 + 1.4 * benchmarks) x 3.2 inches) at 50 dpi
        n_bench = sum(1 for b in comp.benchmarks if comp.task_of[b] == task)
        assert (w, h) == (round(max(4.5, 1.5 + 1.4 * n_bench) * 50), 160)
    # deterministic: the same inputs give the same bytes
    again = F.bar_chart(comp, "expression", tmp_path / "again.png", dpi=50)
    assert again.read_bytes() == (tmp_path / "bars_expression.png").read_bytes()


def test_training_curves_one_panel_per_loss(tmp_path):
    csv = tmp_path / "metrics.csv"
    n = 30
    pd.DataFrame({"epoch": np.repeat([1, 2, 3], 10), "iteration": np.arange(1, n + 1), "step": np.tile(range(10), 3),
                  "loss_pfe": np.linspace(2, 1, n), "loss_orth": np.linspace(1, 0, n), "loss_face": np.ones(n),
                  "loss_pose": np.linspace(3, 2, n), "lr": 1e-3, "seconds": 0.1}).to_csv(csv, index=False)
    p = F.training_curves(csv, tmp_path / "curves.png", "pcl", ["loss_"], smooth=3, dpi=50)
    png_ok(p, (3 * 160, 2 * 120))  # 4 losses -> 2 rows x 3 columns of 3.2 x 2.4 in
    # the random baseline trains nothing: its metrics.csv is empty -> a placeholder, not an error
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    png_ok(F.training_curves(empty, tmp_path / "none.png", "random", dpi=50), (250, 60))


def test_moving_average_known_answer():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    out = F._moving_average(y, 2)
    assert np.isnan(out[0]) and out[1:].tolist() == [1.5, 2.5, 3.5]


def test_swap_grid_latest_copied(tmp_path):
    import torch

    run = tmp_path / "pretrain"
    grid = torch.rand(2, 6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for epoch in (2, 10):  # epoch 10 is the latest (numeric, not lexical, order)
        F.save_swap_grid(grid * (epoch / 10), run / f"swap_grid_epoch{epoch}.png")
    assert F.latest_swap_grid(run).name == "swap_grid_epoch10.png"
    out = F.collect_swap_grid(run, tmp_path / "grid.png", "pcl")
    assert out.read_bytes() == (run / "swap_grid_epoch10.png").read_bytes()
    png_ok(F.collect_swap_grid(tmp_path / "nothing", tmp_path / "none.png", "pcl", dpi=50), (250, 60))


def fake_features(tmp_path, n=40, seed=0):
    """Features where F_p encodes yaw and F_f encodes the expression, plus the aligned manifest."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-60, 60, n)
    expr = np.arange(n) % 7
    expr[:3] = -1  # no single expression: dropped
    rows = np.arange(100, 100 + n)[::-1]  # feature order differs from manifest order
    face = np.eye(7)[expr % 7] * 5 + rng.normal(0, 0.1, (n, 7))
    pose = np.stack([yaw, yaw ** 2 / 60], 1) + rng.normal(0, 0.1, (n, 2))
    npz = tmp_path / "test.npz"
    np.savez(npz, row=rows, trunk=np.concatenate([face, pose], 1), face=face, pose=pose)
    man = pd.DataFrame({"path": [f"img{r}.png" for r in rows], "yaw": yaw, "expression": expr, "row": rows})
    man.sample(frac=1.0, random_state=0).to_csv(tmp_path / "manifest.csv", index=False)
    return npz, tmp_path / "manifest.csv"


def test_embedding_figure(tmp_path):
    npz, man = fake_features(tmp_path)
    names = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    p = F.embedding_figure(npz, man, tmp_path / "emb.png", "pcl", EMB, names, dpi=50)
    png_ok(p, (2 * 160, 2 * 150))  # 2 readouts x 2 colourings of 3.2 x 3.0 in


def test_tsne_separates_known_clusters():
    """Two far-apart Gaussian blobs stay apart in the 2-D map (an independent check of the embedding)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(20, 1, (20, 5))])
    xy = F.tsne_2d(x, perplexity=5.0, seed=0)
    assert np.array_equal(xy, F.tsne_2d(x, perplexity=5.0, seed=0))  # seeded: the same map every run
    a, b = xy[:20].mean(0), xy[20:].mean(0)
    spread = max(xy[:20].std(0).max(), xy[20:].std(0).max())
    assert np.linalg.norm(a - b) > 3 * spread


def test_embedding_missing_column_is_a_clear_error(tmp_path):
    npz, man = fake_features(tmp_path)
    pd.read_csv(man).drop(columns=["yaw"]).to_csv(man, index=False)
    with pytest.raises(ValueError, match="no column 'yaw'.*figures.embedding"):
        F.embedding_figure(npz, man, tmp_path / "emb.png", "pcl", EMB, dpi=50)


def test_cli_figures_bars_and_missing_argument(tmp_path, capsys):
    probes = []
    for i, p in enumerate(PROBES):
        path = tmp_path / f"p{i}.json"
        path.write_text(json.dumps(p))
        probes.append(str(path))
    benchmarks = {b: {"task": e["task"], "train": None, "test": {"dataset": b, "split": "test"}, "labels": None,
                      "description": b} for b, e in CONFIG["benchmarks"].items()}
    params = json.dumps({"figures": FIG, "tables": CONFIG["tables"], "benchmarks": benchmarks})
    out = tmp_path / "figs"
    # in-process (a subprocess would pay the torch import twice)
    rc = main(["figures", "--params", params, "bars", *probes, "--out", str(out), "--tasks", "expression", "au",
               "--not-run", "lfw=absent"])
    assert rc == 0
    png_ok(out / "bars_expression.png")
    png_ok(out / "bars_au.png")  # no benchmark of this task: a placeholder
    assert main(["figures", "--params", params, "curves", "--out", str(out / "c.png")]) == 2
    assert "missing --method, --metrics" in capsys.readouterr().err


def test_figures_config_of_the_repo(default_config):
    from pclbench.core.config import from_dict

    cfg = from_dict(F.FiguresConfig, default_config["figures"], "figures")
    assert cfg.embedding.color_by == ["yaw", "expression"] and cfg.embedding.readouts == ["face", "pose"]
    assert cfg.embedding.dataset in default_config["datasets"]
