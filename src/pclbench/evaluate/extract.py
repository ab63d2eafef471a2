"""Frozen-encoder feature extraction, done once per (checkpoint, dataset split).

The authors' probes re-encode every training image in every probe epoch (docs/method.md §6.2, bug 11:
3.7 M encoder passes for the RAF-DB probe). Without augmentation the features are identical each
epoch, so we encode once and cache every readout (trunk, face-aware head, pose head) in one ``.npz``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pclbench.core.config import from_dict, setting
from pclbench.core.device import resolve_device
from pclbench.core.io import atomic_file

log = logging.getLogger(__name__)

# The readouts every feature file stores (one (N, D) array each, plus `row`): the shared trunk, the
# face-aware head F_f and the pose head F_p (pclbench.evaluate.linear adds "concat" = [F_f, F_p])
READOUTS = ("trunk", "face", "pose")


@dataclass
class EvaluateConfig:
    """Feature extraction: how the frozen encoder computes the cached features (pclbench.evaluate.extract)."""

    batch_size: int = setting("images per encoder forward pass", minimum=1)
    device: str = setting("torch device of the encoder: auto | cpu | cuda | cuda:<index>",
                          pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    num_threads: int = setting("torch CPU threads; 0 = torch's default", minimum=0)


@torch.inference_mode()
def encode_images(encoder: torch.nn.Module, images: np.ndarray, batch_size: int,
                  device: torch.device) -> dict[str, np.ndarray]:
    """Encode a uint8 ``(N, 3, S, S)`` array (a memmap is fine) into float32 readouts ``(N, D)``."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, 3, S, S), got {images.dtype} {images.shape}")
    n = images.shape[0]
    encoder = encoder.to(device).eval()
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in READOUTS}
    last_log = time.monotonic()
    for start in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = x.float().div_(255.0)  # (b, 3, S, S) in [0, 1], the range the encoder was trained on
        feats = encoder.forward_features(x)
        for k in READOUTS:
            chunks[k].append(feats[k].float().cpu().numpy())
        if time.monotonic() - last_log > 10:
            log.info("encoded %d / %d images", min(start + batch_size, n), n)
            last_log = time.monotonic()
    if n == 0:
        raise ValueError("no images to encode (empty shard)")
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def extract(checkpoint: Path, data_dir: Path, out_path: Path, cfg: EvaluateConfig) -> dict:
    """Encode the aligned shard in ``data_dir`` with the checkpoint's encoder into ``out_path``.

    Returns a small summary (shapes, seconds). The file is written under a temporary name and
    renamed, so an interrupted run never leaves a truncated feature file.
    """
    from pclbench.pretrain.checkpoint import load_encoder
    from pclbench.align.shards import open_shard

    t0 = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device, "evaluate.device")
    encoder = load_encoder(checkpoint, map_location="cpu")
    shard = open_shard(data_dir)
    feats = encode_images(encoder, shard.images, cfg.batch_size, device)
    rows = shard.manifest["row"].to_numpy(dtype=np.int64)
    out_path = Path(out_path)
    # a temporary sibling named after this process, removed if writing fails (a full disk) and, if
    # this process is killed, by the next writer of the same file (pclbench.core.io.atomic_file)
    with atomic_file(out_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, row=rows, **feats)  # a file object: savez would add ".npz" to a name
    summary = {
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "n": int(rows.shape[0]),
        "dims": {k: int(v.shape[1]) for k, v in feats.items()},
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("features %s: %s", out_path, summary)
    return summary


def evaluate_config(config: dict) -> EvaluateConfig:
    return from_dict(EvaluateConfig, config["evaluate"], "evaluate")
