"""Networks: encoders (registry ``ENCODERS``), projection MLPs and the reconstruction decoder.

Config section ``model`` (:class:`ModelConfig`); docs/method.md §1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from pclbench.core.config import ConfigError, from_dict
from pclbench.models.encoders import (ENCODERS, FaceCycleEncoder, ResidualBlock, ResNet18Encoder, ResNet50Encoder,
                       ResNetEncoder, SelfAttention)
from pclbench.models.heads import Decoder, ProjectionMLP


@dataclass
class ProjectionConfig:
    """exp_fc / pose_fc sizes (1.4): Linear(D, hidden_dim) ReLU Linear(hidden_dim, out_dim) BN."""

    hidden_dim: int
    out_dim: int


@dataclass
class DecoderConfig:
    """Generator sizes (1.5): Linear(D, fc_dim), stages 1..5 with ``channels``, stage 6 -> 3."""

    fc_dim: int
    channels: list[int]


@dataclass
class ModelConfig:
    """Section ``model``: which encoder and how wide, plus the projection and decoder sizes."""

    encoder: str
    width: int
    projection: ProjectionConfig
    decoder: DecoderConfig

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"model.encoder: unknown encoder {self.encoder!r}; known: "
                              f"{', '.join(ENCODERS.names())}")
        checks = [("model.width", self.width), ("model.projection.hidden_dim", self.projection.hidden_dim),
                  ("model.projection.out_dim", self.projection.out_dim),
                  ("model.decoder.fc_dim", self.decoder.fc_dim)]
        checks += [(f"model.decoder.channels[{i}]", c) for i, c in enumerate(self.decoder.channels)]
        for key, v in checks:
            if v < 1:
                raise ConfigError(f"{key}: must be >= 1, got {v!r}")
        if len(self.decoder.channels) != Decoder.n_stages - 1:
            raise ConfigError(f"model.decoder.channels: expected {Decoder.n_stages - 1} values "
                              f"(stages 1..5), got {self.decoder.channels!r}")

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
