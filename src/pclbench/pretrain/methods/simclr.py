"""SimCLR baseline: NT-Xent over the 2B views of a batch.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709.

encoder trunk -> flatten -> ``projector`` (the same MLP as PCL's exp_fc, ``model.projection``:
Linear, ReLU, Linear, BatchNorm1d; SimCLR's own has no final BN) -> L2-normalise -> NT-Xent with
temperature ``simclr.temperature``: for each of the 2B views the positive is the other view of its
image and the negatives are the other 2B - 2 views (of every rank, see
:func:`pclbench.pretrain.distributed.all_gather_with_grad`): :func:`pclbench.pretrain.losses.info_nce.nt_xent`,
PCL's face-aware loss without mixup.
One optimiser step per iteration. Readout and shared pipeline: :mod:`pclbench.pretrain.methods.two_view`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pclbench.pretrain.augment import AugmentConfig
from pclbench.pretrain.distributed import all_gather_with_grad, rank
from pclbench.core.config import from_dict, setting
from pclbench.pretrain.losses.info_nce import nt_xent
from pclbench.models import ModelConfig, build_encoder_from_config, build_projection
from pclbench.pretrain.views import ViewConfig
from pclbench.pretrain.methods.registry import METHODS
from pclbench.pretrain.methods.two_view import TwoViewMethod, required_sections


@dataclass
class SimCLRConfig:
    """SimCLR baseline."""

    temperature: float = setting("NT-Xent temperature tau. SimCLR 0.1-0.5 depending on the batch size.",
                                 exclusiveMinimum=0)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "SimCLRConfig":
        return from_dict(cls, section, "simclr")


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
            loss = nt_xent(z[:b], z[b:], self.cfg.temperature, gather=all_gather_with_grad, rank=rank())
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
