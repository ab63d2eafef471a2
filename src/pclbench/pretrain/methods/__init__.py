"""Pretraining methods: registry ``METHODS`` (name -> builder) and the :class:`Method` interface.

A builder is ``builder(config, model_cfg, img_size) -> Method``: ``config`` is the mapping of config
sections (the method reads its own, e.g. ``pcl`` and ``views``), ``model_cfg`` the parsed ``model``
section (:class:`pclbench.models.ModelConfig`), ``img_size`` = ``pretrain.img_size``.
Adding a method = one module with one ``@METHODS.register(name)`` builder, imported below.
"""
from __future__ import annotations

from pclbench.pretrain.methods.base import Method
from pclbench.pretrain.methods.registry import METHODS

from pclbench.pretrain.methods import byol, moco, pcl, random_init, simclr  # noqa: E402  (registers the builders)
from pclbench.pretrain.methods.byol import BYOL, BYOLConfig  # noqa: E402
from pclbench.pretrain.methods.moco import MoCo, MoCoConfig  # noqa: E402
from pclbench.pretrain.methods.pcl import PCL, PCLConfig, ablation_label, pose_negative_sets  # noqa: E402
from pclbench.pretrain.methods.random_init import RandomInit  # noqa: E402
from pclbench.pretrain.methods.simclr import SimCLR, SimCLRConfig  # noqa: E402

__all__ = ["METHODS", "Method", "PCL", "PCLConfig", "RandomInit", "SimCLR", "SimCLRConfig", "MoCo", "MoCoConfig",
           "BYOL", "BYOLConfig", "ablation_label", "pose_negative_sets"]
