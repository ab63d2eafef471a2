"""pclbench figures written during pretraining: the flip-swap reconstruction grid (method doc 2.2).

Like the paper's reconstruction figure: each row is one image s, its horizontal flip s^ and the
four decodings of the flip-swapped codes D(e_f + p_n) (target s), D(e_n + p_f) (target s^),
D(e_n + p_n) (target s) and D(e_f + p_f) (target s^). A method that disentangles pose from the
face code reconstructs s from s^'s face code and s's pose code (column 3).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
