"""``METHODS``: the registry of pretraining methods (name -> builder ``builder(config, model_cfg, img_size)``).

Its own module so that each method module registers itself here without importing the package
``pclbench.pretrain.methods`` (whose ``__init__`` imports every method module: no import cycle).
"""
from __future__ import annotations

from pclbench.core.registry import Registry

METHODS: Registry = Registry("method")
