"""What the two-view baselines (SimCLR, MoCo v2, BYOL) share: data stream, views, readout, one step.

Same trainer, data, encoder and schedule as PCL; what differs is the objective. Each baseline draws
ONE batch stream ``"images"`` of ``pretrain.batch_size`` frames, makes two views per frame
(:func:`pclbench.pretrain.augment.two_views`) and makes ONE optimiser step per iteration.

Readout: the objectives act on the flattened TRUNK output (``encoder.forward_trunk``, the
``trunk`` readout of the probes); the face and pose heads of the FaceCycle
encoder are not used by the baselines and stay at their initialisation.

Distributed training: in-batch negatives / keys from other ranks pass through
:func:`pclbench.pretrain.distributed.all_gather_with_grad` (the identity with one process), and
:func:`pclbench.pretrain.distributed.rank` is this process's position in the gathered batch.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pclbench.pretrain.augment import AugmentConfig, two_views
from pclbench.core.config import ConfigError
from pclbench.pretrain.views import ViewConfig
from pclbench.pretrain.methods.base import Method

@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online`` for every parameter; buffers (BN statistics) are
    copied (MoCo / BYOL key-target update). The two modules must have the same structure."""
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)
    for bt, bo in zip(target.buffers(), online.buffers(), strict=True):
        bt.copy_(bo)


def required_sections(config: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if name not in config:
            raise ConfigError(f"missing section {name}")


class TwoViewMethod(Method):
    """Base of the baselines: ``encoder`` + the two-view pipeline + a single optimiser step."""

    trainable = True

    def __init__(self, encoder: nn.Module, augment: AugmentConfig, views: ViewConfig, img_size: int):
        super().__init__()
        self.encoder = encoder
        self.augment = augment
        self.views = views
        self.img_size = img_size

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"images": batch_size}

    def make_views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``x (B, 3, H, W)`` at the shard's resolution -> two ``(B, 3, S, S)`` views."""
        return two_views(x, self.augment, self.views, self.img_size, generator)

    @staticmethod
    def trunk_features(encoder: nn.Module, x: Tensor) -> Tensor:
        return encoder.forward_trunk(x).flatten(1)  # (N, 2w (S/16)^2)

