"""``random``: the encoder at its initialisation, never trained (the tables' random-init row).

Built from the same seed and in the same order as PCL (encoder first, docs/method.md §1.6 init), so it is
exactly the encoder PCL starts from. The trainer writes its checkpoint without any step.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from pclbench.models import ModelConfig, build_encoder_from_config
from pclbench.pretrain.methods.registry import METHODS
from pclbench.pretrain.methods.base import Method


class RandomInit(Method):
    """A frozen randomly initialised encoder; ``trainable`` is False."""

    name = "random"
    trainable = False

    def __init__(self, encoder: nn.Module, img_size: int):
        super().__init__()
        self.encoder = encoder
        self.img_size = img_size

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {}


@METHODS.register("random")
def build_random(config: Mapping[str, Any], model_cfg: ModelConfig, img_size: int) -> RandomInit:
    return RandomInit(build_encoder_from_config(model_cfg), img_size)
