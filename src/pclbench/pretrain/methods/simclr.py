"""SimCLR baseline: NT-Xent over the 2B views of a batch.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709.

encoder trunk -> flatten -> ``projector`` (the same MLP as PCL's exp_fc, ``model.projection``:
Linear, ReLU, Linear, BatchNorm1d; SimCLR's own has no final BN) -> L2-normalise -> NT-Xent with
temperature ``simclr.temperature``: for each of the 2B views the positive is the other view of its
image and the negatives are the other 2B - 2 views (of every rank, see :func:`two_view.gather`).
One optimiser step per iteration. Readout and shared pipeline: :mod:`pclbench.pretrain.methods.two_view`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclbench.pretrain.augment import AugmentConfig
from pclbench.core.config import ConfigError, from_dict
from pclbench.pretrain.losses.info_nce import no_autocast
from pclbench.models import ModelConfig, build_encoder_from_config, build_projection
from pclbench.pretrain.views import ViewConfig
from pclbench.pretrain.methods import METHODS
from pclbench.pretrain.methods.two_view import TwoViewMethod, gather, rank, required_sections


@dataclass
class SimCLRConfig:
    """Section ``simclr``."""

    temperature: float  # NT-Xent temperature tau [SimCLR: 0.1-0.5 depending on batch size]

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"simclr.temperature: must be > 0, got {self.temperature!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "SimCLRConfig":
        return from_dict(cls, section, "simclr")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent of ``z1, z2 (B, D)`` (row i of each = the two views of image i), mean over 2B anchors.

    Anchor i is compared with every gathered view but itself; the target is its other view.
    Computed in float32.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: z1 and z2 must be (B, D) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    with no_autocast(z1.device):
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        b = z1.shape[0]
        k1, k2 = gather(z1), gather(z2)  # (W B, D): every rank's views
        n_all = k1.shape[0]
        keys = torch.cat([k1, k2], dim=0)  # (2 W B, D)
        q = torch.cat([z1, z2], dim=0)  # (2B, D): local anchors
        logits = q @ keys.T / temperature  # (2B, 2 W B)
        local = rank() * b + torch.arange(b, device=q.device)  # rows of this rank's images in k1 / k2
        self_idx = torch.cat([local, n_all + local])  # (2B,)
        pos_idx = torch.cat([n_all + local, local])
        logits = logits.masked_fill(F.one_hot(self_idx, keys.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, pos_idx)


class SimCLR(TwoViewMethod):
    """encoder + projector; loss :func:`nt_xent`."""

    name = "simclr"
    config_sections = ("model", "views", "augment", "simclr")

    def __init__(self, encoder: nn.Module, projector: nn.Module, cfg: SimCLRConfig, augment: AugmentConfig,
                 views: ViewConfig, img_size: int):
        super().__init__(encoder, augment, views, img_size)
        self.projector = projector
        self.cfg = cfg

    def train_iteration(self, batches: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, epoch: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
        x = batches["images"]
        v1, v2 = self.make_views(x, generator)  # (B, 3, S, S) each
        b = v1.shape[0]
        with self._autocast(x):
            # one pass over both views: one BatchNorm batch in the projector, as SimCLR
            z = self.projector(self.trunk_features(self.encoder, torch.cat([v1, v2], dim=0)))  # (2B, out_dim)
            loss = nt_xent(z[:b], z[b:], self.cfg.temperature)
        self._step(loss, optimizer, scaler)
        return {"loss_simclr": loss.detach()}


@METHODS.register("simclr")
def build_simclr(config: Mapping[str, Any], model_cfg: ModelConfig, img_size: int) -> SimCLR:
    """SimCLR from the sections ``simclr``, ``augment``, ``views`` and the parsed ``model``."""
    required_sections(config, ("simclr", "augment", "views"))
    encoder = build_encoder_from_config(model_cfg)  # first, as in PCL: same initial encoder per seed
    projector = build_projection(model_cfg, encoder.feature_dims(img_size)["trunk"])
    return SimCLR(encoder, projector, SimCLRConfig.from_config(config["simclr"]),
                  AugmentConfig.from_config(config["augment"]), ViewConfig.from_config(config["views"]), img_size)
