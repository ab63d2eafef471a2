"""BYOL baseline: online network predicts an EMA target network's projection; no negatives.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS
2020, https://arxiv.org/abs/2006.07733.

- online = encoder trunk -> flatten -> ``projector`` -> ``predictor``; target = a copy of encoder
  and projector, updated only by EMA ``t <- tau t + (1 - tau) o`` after each optimiser step, never
  by gradient. MLPs as the paper: Linear, BatchNorm1d, ReLU, Linear; projector D -> hidden -> out,
  predictor out -> hidden -> out (sizes ``model.projection``).
- loss, symmetric: ``L = mean_i [ ||p1_i/|p1_i| - t2_i/|t2_i| ||^2 + ||p2_i/|p2_i| - t1_i/|t1_i| ||^2 ]``
  (= 2 - 2 cos per term), p = online prediction, t = target projection of the other view.
- ``byol.momentum`` is constant; the paper raises tau from 0.996 to 1 with a cosine schedule.

The target network is a registered submodule, so the trainer's ``state_dict`` checkpoint holds it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclbench.pretrain.augment import AugmentConfig
from pclbench.core.config import from_dict, setting
from pclbench.pretrain.losses.info_nce import no_autocast
from pclbench.models import ModelConfig, build_encoder_from_config
from pclbench.pretrain.views import ViewConfig
from pclbench.pretrain.methods.registry import METHODS
from pclbench.pretrain.methods.two_view import TwoViewMethod, ema_update, required_sections


@dataclass
class BYOLConfig:
    """BYOL baseline."""

    momentum: float = setting("Target-network EMA momentum tau, constant. BYOL 0.996 base (cosine to 1 there).",
                              minimum=0, maximum=1)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "BYOLConfig":
        return from_dict(cls, section, "byol")


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def byol_loss(p: Tensor, t: Tensor) -> Tensor:
    """Normalised MSE ``||p/|p| - t/|t| ||^2`` per row ``(B,)``; ``t`` is treated as a constant."""
    with no_autocast(p.device):
        p, t = F.normalize(p.float(), dim=1), F.normalize(t.detach().float(), dim=1)
        return (p - t).pow(2).sum(dim=1)


class BYOL(TwoViewMethod):
    """encoder + projector + predictor (online), target_encoder + target_projector (EMA)."""

    name = "byol"
    config_sections = ("model", "views", "augment", "byol")

    def __init__(self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module, cfg: BYOLConfig,
                 augment: AugmentConfig, views: ViewConfig, img_size: int):
        super().__init__(encoder, augment, views, img_size)
        self.projector = projector
        self.predictor = predictor
        self.cfg = cfg
        self.target_encoder = copy.deepcopy(encoder)  # starts equal to the online network
        self.target_projector = copy.deepcopy(projector)
        for p in (*self.target_encoder.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)  # excluded from parameter_groups: updated by EMA only

    @torch.no_grad()
    def momentum_update(self) -> None:
        ema_update(self.target_encoder, self.encoder, self.cfg.momentum)
        ema_update(self.target_projector, self.projector, self.cfg.momentum)

    def train_iteration(self, batches: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, epoch: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
        x = batches["images"]
        v1, v2 = self.make_views(x, generator)  # (B, 3, S, S) each
        b = v1.shape[0]
        v = torch.cat([v1, v2], dim=0)  # (2B, 3, S, S): one BN batch over both views, as BYOL
        with self._autocast(x):
            p = self.predictor(self.projector(self.trunk_features(self.encoder, v)))  # (2B, out_dim)
            with torch.no_grad():
                t = self.target_projector(self.trunk_features(self.target_encoder, v))  # (2B, out_dim)
            # view 1's prediction -> view 2's target and vice versa
            loss = (byol_loss(p[:b], t[b:]) + byol_loss(p[b:], t[:b])).mean()
        self._step(loss, optimizer, scaler)
        self.momentum_update()
        return {"loss_byol": loss.detach()}


@METHODS.register("byol")
def build_byol(config: Mapping[str, Any], model_cfg: ModelConfig, img_size: int) -> BYOL:
    """BYOL from the sections ``byol``, ``augment``, ``views`` and the parsed ``model``."""
    required_sections(config, ("byol", "augment", "views"))
    encoder = build_encoder_from_config(model_cfg)  # first, as in PCL: same initial encoder per seed
    p = model_cfg.projection
    projector = byol_mlp(encoder.feature_dims(img_size)["trunk"], p.hidden_dim, p.out_dim)
    predictor = byol_mlp(p.out_dim, p.hidden_dim, p.out_dim)
    return BYOL(encoder, projector, predictor, BYOLConfig.from_config(config["byol"]),
                AugmentConfig.from_config(config["augment"]), ViewConfig.from_config(config["views"]), img_size)
