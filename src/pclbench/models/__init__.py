"""Networks: encoders (registry ``ENCODERS``), projection MLPs and the reconstruction decoder.

Config section ``model`` (:class:`ModelConfig`); docs/method.md §1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from pclbench.core.config import from_dict, setting
from pclbench.models.encoders import (ENCODERS, FaceCycleEncoder, ResidualBlock, ResNet18Encoder, ResNet50Encoder,
                       ResNetEncoder, SelfAttention)
from pclbench.models.heads import Decoder, ProjectionMLP


@dataclass
class ProjectionConfig:
    """exp_fc / pose_fc sizes (1.4): Linear(D, hidden_dim) ReLU Linear(hidden_dim, out_dim) BN."""

    hidden_dim: int = setting("Hidden width. Paper 2048.", minimum=1)
    out_dim: int = setting("InfoNCE embedding size. Paper 512.", minimum=1)


@dataclass
class DecoderConfig:
    """Generator sizes (1.5): Linear(D, fc_dim), stages 1..5 with ``channels``, stage 6 -> 3."""

    fc_dim: int = setting("fc output = channels at 1x1. Paper 512.", minimum=1)
    channels: list[int] = setting("Output channels of up-stages 1..5. Paper [256, 256, 256, 256, 128].",
                                  items={"minimum": 1}, minItems=Decoder.n_stages - 1, maxItems=Decoder.n_stages - 1)


@dataclass
class ModelConfig:
    """PCL networks (docs/method.md section 1): which encoder and how wide, plus the projection and decoder sizes."""

    encoder: str = setting("Registered encoder name (pclbench.models.ENCODERS).", choices=ENCODERS)
    width: int = setting("Channels of conv1/layer1; heads and trunk output have 2*width. Paper 64.", minimum=1)
    projection: ProjectionConfig = setting("exp_fc / pose_fc MLP sizes (docs/method.md section 1.4).")
    decoder: DecoderConfig = setting("Reconstruction decoder sizes (docs/method.md section 1.5); output always "
                                     "3 x 64 x 64.")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "ModelConfig":
        return from_dict(cls, section, "model")


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Build a registered encoder; ``encoder.spec`` lets a checkpoint rebuild it."""
    return ENCODERS.get(name)(**kwargs)


def build_encoder_from_config(cfg: ModelConfig) -> nn.Module:
    return build_encoder(cfg.encoder, width=cfg.width)


def build_projection(cfg: ModelConfig, in_dim: int) -> ProjectionMLP:
    """A projection MLP for head features of size ``in_dim`` (``encoder.feature_dims(S)["face"]``)."""
    return ProjectionMLP(in_dim, cfg.projection.hidden_dim, cfg.projection.out_dim)


def build_decoder(cfg: ModelConfig, code_dim: int) -> Decoder:
    """The decoder for head features of size ``code_dim``; its output is always 64 x 64."""
    return Decoder(code_dim, cfg.decoder.fc_dim, cfg.decoder.channels)


__all__ = [
    "ENCODERS", "build_encoder", "build_encoder_from_config", "build_projection", "build_decoder",
    "ModelConfig", "ProjectionConfig", "DecoderConfig", "FaceCycleEncoder", "SelfAttention",
    "ResidualBlock", "ResNetEncoder", "ResNet18Encoder", "ResNet50Encoder", "ProjectionMLP", "Decoder",
]
