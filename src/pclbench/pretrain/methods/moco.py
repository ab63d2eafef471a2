"""MoCo v2 baseline: momentum key encoder + a queue of negative keys.

He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020, https://arxiv.org/abs/1911.05722; Chen, Fan, Girshick, He, "Improved Baselines with
Momentum Contrastive Learning", https://arxiv.org/abs/2003.04297 (v2: MLP head, blur, T = 0.2).
Structure of facebookresearch/moco ``moco/builder.py``:

- query network = encoder trunk -> flatten -> ``head`` (Linear, ReLU, Linear; sizes from
  ``model.projection``); key network = a copy of both, updated only by EMA with ``moco.momentum``
  (``k <- m k + (1 - m) q``, before the keys are computed, as builder.py), never by gradient.
- logits = [q.k+, q.queue^T] / ``moco.temperature``, cross-entropy with target 0 (one direction per
  iteration: query = view 1, key = view 2, as MoCo v2).
- the keys of the batch (all ranks, :func:`pclbench.pretrain.distributed.all_gather_with_grad`)
  replace the OLDEST ``B`` queue entries, ring-buffer order (no divisibility requirement on
  ``moco.queue_size``).
- no shuffle-BN: the FaceCycle encoder and this head have no BatchNorm, so keys cannot leak batch
  statistics.

The key network, the queue and its pointer are registered submodules / buffers, so the trainer's
``state_dict`` checkpoint restores them exactly on resume.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclbench.pretrain.augment import AugmentConfig
from pclbench.pretrain.distributed import all_gather_with_grad
from pclbench.core.config import from_dict, setting
from pclbench.pretrain.losses.info_nce import no_autocast
from pclbench.models import ModelConfig, build_encoder_from_config
from pclbench.pretrain.views import ViewConfig
from pclbench.pretrain.methods.registry import METHODS
from pclbench.pretrain.methods.two_view import TwoViewMethod, ema_update, required_sections


@dataclass
class MoCoConfig:
    """MoCo v2 baseline."""

    queue_size: int = setting("K, the negative keys in the queue. MoCo v2 65536.", minimum=1)
    momentum: float = setting("Key-network EMA momentum m. MoCo v2 0.999.", minimum=0, maximum=1)
    temperature: float = setting("Logit temperature. MoCo v2 0.2.", exclusiveMinimum=0)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "MoCoConfig":
        return from_dict(cls, section, "moco")


def moco_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's MLP head: Linear, ReLU, Linear (no BatchNorm)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``q, k (B, D)`` L2-normalised, ``queue (K, D)`` -> logits ``(B, 1 + K)``, positive in column 0."""
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.T  # (B, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature


class MoCo(TwoViewMethod):
    """encoder + head (query), key_encoder + key_head (EMA), queue ``(K, out_dim)``."""

    name = "moco"
    config_sections = ("model", "views", "augment", "moco")

    def __init__(self, encoder: nn.Module, head: nn.Module, cfg: MoCoConfig, augment: AugmentConfig,
                 views: ViewConfig, img_size: int, out_dim: int):
        super().__init__(encoder, augment, views, img_size)
        self.head = head
        self.cfg = cfg
        self.key_encoder = copy.deepcopy(encoder)  # starts equal to the query network (builder.py)
        self.key_head = copy.deepcopy(head)
        for p in (*self.key_encoder.parameters(), *self.key_head.parameters()):
            p.requires_grad_(False)  # excluded from parameter_groups: updated by EMA only
        # Random unit keys to start with, as builder.py. Drawn from the global RNG after the networks.
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, out_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to overwrite

    @torch.no_grad()
    def momentum_update(self) -> None:
        ema_update(self.key_encoder, self.encoder, self.cfg.momentum)
        ema_update(self.key_head, self.head, self.cfg.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrite the ``n`` oldest entries with ``keys (n, D)`` (ring buffer; n > K keeps the last K)."""
        keys = keys.detach().to(self.queue.dtype)[-self.queue.shape[0]:]
        n, k = keys.shape[0], self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % k
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % k)

    def train_iteration(self, batches: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, epoch: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
        x = batches["images"]
        v_q, v_k = self.make_views(x, generator)  # (B, 3, S, S) each
        with self._autocast(x):
            q = self.head(self.trunk_features(self.encoder, v_q))  # (B, D)
            with torch.no_grad():
                self.momentum_update()
                k = self.key_head(self.trunk_features(self.key_encoder, v_k))  # (B, D)
            with no_autocast(x.device):
                q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
                logits = moco_logits(q, k, self.queue.clone(), self.cfg.temperature)  # (B, 1 + K)
                loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        self._step(loss, optimizer, scaler)
        self.enqueue(all_gather_with_grad(k))
        return {"loss_moco": loss.detach()}


@METHODS.register("moco")
def build_moco(config: Mapping[str, Any], model_cfg: ModelConfig, img_size: int) -> MoCo:
    """MoCo v2 from the sections ``moco``, ``augment``, ``views`` and the parsed ``model``."""
    required_sections(config, ("moco", "augment", "views"))
    encoder = build_encoder_from_config(model_cfg)  # first, as in PCL: same initial encoder per seed
    p = model_cfg.projection
    head = moco_head(encoder.feature_dims(img_size)["trunk"], p.hidden_dim, p.out_dim)
    return MoCo(encoder, head, MoCoConfig.from_config(config["moco"]), AugmentConfig.from_config(config["augment"]),
                ViewConfig.from_config(config["views"]), img_size, p.out_dim)
