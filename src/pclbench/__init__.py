"""pclbench: a reproducible, workflow-managed benchmark for PCL and facial self-supervised learning.

Pipeline (one module per arrow, see docs/architecture.md):
generate/download -> align (data/) -> pretrain (methods/, train.py) -> extract -> probes/ -> tables.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_encoder(path, map_location="cpu"):
    """Frozen encoder from a pclbench or an authors' checkpoint (:func:`pclbench.pretrain.checkpoint.load_encoder`)."""
    from pclbench.pretrain.checkpoint import load_encoder as _load

    return _load(path, map_location=map_location)


__all__ = ["load_encoder", "__version__"]
