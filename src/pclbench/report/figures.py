"""pclbench figures: the flip-swap reconstruction grid written during pretraining (docs/method.md §2.2), and
the report figures of stage 6 (bar chart per task, training curves, the latest swap grid, a 2-D t-SNE
embedding of face-aware vs pose features coloured by yaw and by expression).

The swap grid is like the paper's reconstruction figure: each row is one image s, its horizontal flip
s^ and the four decodings of the flip-swapped codes D(e_f + p_n) (target s), D(e_n + p_f) (target s^),
D(e_n + p_n) (target s) and D(e_f + p_f) (target s^). A method that disentangles pose from the face
code reconstructs s from s^'s face code and s's pose code (column 3).
"""
from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from pclbench.core.config import setting
from pclbench.core.io import atomic_file

if TYPE_CHECKING:  # the report figures run without importing torch
    from torch import Tensor

SWAP_GRID_COLUMNS = ("s", "flip s^", "D(e_f+p_n)", "D(e_n+p_f)", "D(e_n+p_n)", "D(e_f+p_f)")


def save_swap_grid(grid: Tensor, path: Path | str) -> Path:
    """Write ``grid (R, 6, 3, H, W)`` in [0, 1] as a PNG with column titles, atomically."""
    if grid.dim() != 5 or grid.shape[1] != len(SWAP_GRID_COLUMNS) or grid.shape[2] != 3:
        raise ValueError(f"save_swap_grid: expected (rows, {len(SWAP_GRID_COLUMNS)}, 3, H, W), "
                         f"got {tuple(grid.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = grid.shape[0]
    imgs = grid.detach().float().clamp(0, 1).permute(0, 1, 3, 4, 2).numpy()  # (R, 6, H, W, 3)
    fig, axes = plt.subplots(rows, len(SWAP_GRID_COLUMNS), figsize=(1.3 * len(SWAP_GRID_COLUMNS), 1.3 * rows + 0.3),
                             squeeze=False)
    for r in range(rows):
        for c, title in enumerate(SWAP_GRID_COLUMNS):
            ax = axes[r, c]
            ax.imshow(imgs[r, c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout(pad=0.2)
    try:
        with atomic_file(path) as tmp:  # temp removed on error; a killed writer's by the next write
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


# ================================================================================================
# Report figures (issue "Tables and figures"): bar charts per task, training curves, the latest swap
# grid, a 2-D embedding of face-aware vs pose features. All drawn with matplotlib's Agg backend and
# deterministic (fixed seeds, no timestamps in the PNG metadata).
# ================================================================================================


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXACT_TSNE_MAX = 300  # t-SNE with exact gradients up to this many points, Barnes-Hut above


@dataclass
class EmbeddingConfig:
    """Section ``figures.embedding``: the t-SNE map of face-aware vs pose features."""

    dataset: str = setting("Aligned dataset whose manifest has both colour columns (features of its split).")
    split: str = setting("Split of that dataset.")
    methods: list[str] = setting("Methods drawn (one figure each); names not in workflow.methods are skipped.")
    readouts: list[Literal["trunk", "face", "pose"]] = setting(
        "Feature readouts, one row of panels each (face = F_f, pose = F_p).", minItems=1)
    color_by: list[str] = setting("Manifest columns, one column of panels each (yaw: continuous; expression: "
                                  "classes).", minItems=1)
    perplexity: float = setting("t-SNE perplexity (clipped below the number of points).", exclusiveMinimum=0)
    max_points: int = setting("At most this many samples (a seeded random subset).", minimum=5)
    seed: int = setting("Subset and t-SNE seed.", minimum=0)


@dataclass
class FiguresConfig:
    """Stage 6 report figures."""

    dpi: int = setting("PNG resolution.", minimum=20, maximum=600)
    curve_prefixes: list[str] = setting("metrics.csv columns starting with one of these get a training-curve panel.",
                                        minItems=1, items={"minLength": 1})
    smooth: int = setting("Moving-average window of the training curves (1 = raw values only).", minimum=1)
    swap_grid_methods: list[str] = setting("Methods whose latest swap_grid_epoch<k>.png is collected.")
    embedding: EmbeddingConfig = setting("The t-SNE map of face-aware vs pose features.")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    """Save ``fig`` as PNG atomically, without a timestamp or version (byte-identical reruns)."""
    plt = _plt()
    path = Path(path)
    try:
        with atomic_file(path) as tmp:  # temp removed on error; a killed writer's by the next write
            fig.savefig(tmp, dpi=dpi, metadata={"Software": None}, format="png")
    finally:
        plt.close(fig)
    return path


def placeholder(path: Path | str, message: str, dpi: int = 100) -> Path:
    """A small PNG saying why a figure has no content (a report never shows a missing image)."""
    plt = _plt()
    fig = plt.figure(figsize=(5, 1.2))
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    return _save(fig, Path(path), dpi)


def bar_chart(comp, task: str, path: Path | str, dpi: int = 100) -> Path:
    """Methods x benchmarks of ``task`` (primary metric, primary readout); error bars = the std.

    ``comp`` is a :class:`pclbench.report.tables.Comparison`; a benchmark that did not run is labelled so.
    """
    from pclbench.report.results import metric_label, probe_stat

    plt = _plt()
    benches = [b for b in comp.benchmarks if comp.task_of[b] == task]
    methods = comp.methods
    ro = comp.cfg.primary_readout
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.4 * len(benches)), 3.2))
    cmap = plt.get_cmap("tab10")
    metrics = sorted({comp.primary_metric(b) for b in benches})
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, b in enumerate(benches):
            p = comp.probes.get((m, b))
            s = probe_stat(p, ro, comp.primary_metric(b)) if p is not None else None
            if s is not None and s.mean is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(s.mean)
                es.append(s.std if (s.std is not None and s.n > 1) else 0.0)
        ax.bar(xs, ys, width * 0.9, yerr=es, capsize=2, label=m, color=cmap(i % 10))
    for j, b in enumerate(benches):
        if b in comp.not_run or not any((m, b) in comp.probes for m in methods):
            ax.text(j, 0.0, "not run", ha="center", va="bottom", rotation=90, fontsize=8, color="0.4")
    ax.set_xticks(range(len(benches)))
    ax.set_xticklabels(benches, fontsize=8)
    ax.set_xlim(-0.6, len(benches) - 0.4)
    arrow = {True: " ↑", False: " ↓"}
    ax.set_ylabel(" / ".join(metric_label(m) + arrow[comp.direction(benches[0], m)] for m in metrics)
                  if benches else "value", fontsize=8)
    ax.set_title(f"{task}: {ro} readout, error bars = std", fontsize=8)
    if methods:
        ax.legend(fontsize=7, ncol=min(len(methods), 4))
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def _moving_average(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k  # (len - k + 1,)
    return np.concatenate([np.full(k - 1, np.nan), out])


def training_curves(metrics_csv: Path | str, path: Path | str, method: str, prefixes: Sequence[str] = ("loss_",),
                    smooth: int = 1, dpi: int = 100) -> Path:
    """One panel per loss column of the trainer's ``metrics.csv`` (value per iteration)."""
    import pandas as pd

    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file() or metrics_csv.stat().st_size == 0:
        return placeholder(path, f"{method}: no training curves (no iterations in {metrics_csv.name}, "
                                 "e.g. the random-initialisation baseline)", dpi)
    df = pd.read_csv(metrics_csv)
    cols = [c for c in df.columns if any(c.startswith(p) for p in prefixes)]
    if not cols:
        return placeholder(path, f"{method}: {metrics_csv.name} has no column starting with "
                                 f"{', '.join(prefixes)}", dpi)
    x = df["iteration"].to_numpy() if "iteration" in df.columns else np.arange(1, len(df) + 1)
    plt = _plt()
    ncol = min(len(cols), 3)
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    smoothed = 1 < smooth <= len(df)  # a window longer than the run would leave nothing to draw
    for k, c in enumerate(cols):
        ax = axes[k // ncol, k % ncol]
        y = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        ax.plot(x, y, lw=0.6, alpha=0.4 if smoothed else 1.0, color="C0")
        if smoothed:
            ax.plot(x, _moving_average(y, smooth), lw=1.2, color="C0")
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(cols), nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    fig.suptitle(f"{method}: training losses" + (f" (moving average over {smooth})" if smoothed else ""),
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def latest_swap_grid(pretrain_dir: Path | str) -> Path | None:
    """The ``swap_grid_epoch<k>.png`` with the largest k in ``pretrain_dir`` (None if there is none)."""
    found = []
    for p in Path(pretrain_dir).glob("swap_grid_epoch*.png"):
        m = re.fullmatch(r"swap_grid_epoch(\d+)\.png", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def collect_swap_grid(pretrain_dir: Path | str, path: Path | str, method: str, dpi: int = 100) -> Path:
    """Copy the latest swap grid the trainer wrote (docs/method.md §2.2) to ``path``, atomically; a
    placeholder saying why when there is none (``pretrain.swap_grid_every`` 0 or > epochs)."""
    src = latest_swap_grid(pretrain_dir)
    path = Path(path)
    if src is None:
        return placeholder(path, f"{method}: no swap grid in {pretrain_dir} (pretrain.swap_grid_every is 0 or "
                                 "larger than the number of epochs, or the method has no swap_grid hook)", dpi)
    with atomic_file(path) as tmp:
        shutil.copyfile(src, tmp)
    return path


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def tsne_2d(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """``x (N, D)`` -> ``(N, 2)`` t-SNE (scikit-learn, PCA init, fixed seed); features standardised first
    so one large-scale dimension does not decide the map."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    perp = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))  # sklearn needs perplexity < n
    # exact gradients for small sets: faster than Barnes-Hut there (its threads contend on a busy machine)
    method = "exact" if len(x) <= EXACT_TSNE_MAX else "barnes_hut"
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto",
                method=method).fit_transform(x)


def embedding_figure(features_npz: Path | str, manifest_csv: Path | str, path: Path | str, method: str,
                     cfg: EmbeddingConfig, class_names: Sequence[str] | None = None, dpi: int = 100) -> Path:
    """Panels readout (rows) x colour column (columns) of a 2-D t-SNE of cached features.

    ``features_npz`` is a stage-4 file (``row`` + one array per readout) of ``cfg.dataset``/``cfg.split``;
    ``manifest_csv`` the aligned shard's manifest (same ``row`` ids) with the colour columns.
    Rows whose colour value is missing or negative (``expression`` = -1: no single expression)
    are dropped.
    """
    import pandas as pd

    with np.load(features_npz, allow_pickle=False) as z:
        feats = {k: z[k] for k in z.files}
    man = pd.read_csv(manifest_csv)
    for c in [*cfg.color_by, "row"]:
        if c not in man.columns:
            raise ValueError(f"{manifest_csv}: no column {c!r} to colour the embedding by (figures.embedding."
                             f"color_by; columns: {', '.join(map(str, man.columns))}); choose a dataset that has it")
    missing = [r for r in cfg.readouts if r not in feats]
    if missing or "row" not in feats:
        raise ValueError(f"{features_npz}: no feature array {missing or ['row']} (readouts: "
                         f"{', '.join(k for k in feats if k != 'row')})")
    man = man.set_index("row").loc[feats["row"]]  # manifest in feature order
    keep = np.ones(len(man), dtype=bool)
    for c in cfg.color_by:
        v = pd.to_numeric(man[c], errors="coerce").to_numpy(dtype=float)
        keep &= np.isfinite(v) & ((v >= 0) if c == "expression" else True)
    idx = np.flatnonzero(keep)
    idx = idx[_subset(len(idx), cfg.max_points, cfg.seed)]
    if len(idx) < 5:
        return placeholder(path, f"{method}: fewer than 5 samples of {cfg.dataset}/{cfg.split} have "
                                 f"{', '.join(cfg.color_by)}", dpi)
    plt = _plt()
    fig, axes = plt.subplots(len(cfg.readouts), len(cfg.color_by),
                             figsize=(3.2 * len(cfg.color_by), 3.0 * len(cfg.readouts)), squeeze=False)
    for i, ro in enumerate(cfg.readouts):
        xy = tsne_2d(feats[ro][idx], cfg.perplexity, cfg.seed)  # (n, 2)
        for j, c in enumerate(cfg.color_by):
            ax = axes[i, j]
            v = pd.to_numeric(man[c], errors="coerce").to_numpy(dtype=float)[idx]
            if c == "expression":  # classes: a qualitative colour map with a legend
                cmap = plt.get_cmap("tab10")
                for k in sorted(set(v.astype(int))):
                    sel = v.astype(int) == k
                    name = class_names[k] if class_names and k < len(class_names) else str(k)
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(k % 10), label=name)
                ax.legend(fontsize=5, markerscale=1.5, loc="best")
            else:  # a continuous label (degrees): a diverging colour map centred at 0
                lim = float(np.nanmax(np.abs(v))) or 1.0
                sc = ax.scatter(xy[:, 0], xy[:, 1], s=6, c=v, cmap="coolwarm", vmin=-lim, vmax=lim)
                fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            ax.set_title(f"{ro} features, coloured by {c}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{method}: t-SNE of {cfg.dataset}/{cfg.split} ({len(idx)} samples)", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def is_png(path: Path | str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def png_size(path: Path | str) -> tuple[int, int]:
    """(width, height) in pixels from the PNG's IHDR chunk."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != PNG_MAGIC:
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


__all__ = ["SWAP_GRID_COLUMNS", "save_swap_grid", "FiguresConfig", "EmbeddingConfig", "bar_chart",
           "training_curves", "latest_swap_grid", "collect_swap_grid", "embedding_figure", "tsne_2d", "placeholder",
           "is_png", "png_size"]

