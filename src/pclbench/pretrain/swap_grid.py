"""The swap grid written during pretraining: ``swap_grid_epoch<k>.png`` every ``pretrain.swap_grid_every`` epochs.

docs/method.md §2.2: for methods with a ``swap_grid`` hook (PCL), a few fixed frames of the shard are
decoded with their face and pose features swapped (:func:`pclbench.report.figures.save_swap_grid`).
The frames are fixed (no random draw) and the networks are put in eval mode while the figure is made,
so the figure changes neither any RNG nor the training state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pclbench.pretrain.methods import Method
from pclbench.pretrain.stream import VideoShard

SWAP_GRID_ROWS = 8  # images in the swap grid: the first frame of the shard's first videos


def swap_grid_rows(shard: VideoShard) -> np.ndarray:
    """Fixed image rows for the swap grid (no random draw: the figure must not touch any RNG)."""
    n = min(SWAP_GRID_ROWS, shard.n_videos)
    return shard.rows[shard.starts[:n]].numpy()


def write_swap_grid(net: Method, shard: VideoShard, rows: np.ndarray, device: torch.device, path: Path) -> None:
    from pclbench.report.figures import save_swap_grid

    x = shard.gather(rows).to(device).float().div_(255.0)  # (R, 3, S, S) in [0, 1]
    was_training = net.training
    net.eval()  # BatchNorm running statistics: the figure does not change the training state
    try:
        grid = net.swap_grid(x)  # (R, 6, 3, 64, 64)
    finally:
        net.train(was_training)
    save_swap_grid(grid.cpu(), path)
