"""pclbench: a reproducible, workflow-managed benchmark for PCL and facial self-supervised learning.

Pipeline, one sub-package per workflow stage (docs/architecture.md "Package layout"):
generate/acquire/prepare (data/) -> align (align/) -> pretrain (pretrain/) -> extract, probe (evaluate/)
-> tables, figures (report/); the shared core (config, schema, registry, io, provenance) is in core/.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_encoder(path, map_location="cpu"):
    """Frozen encoder from a pclbench or an authors' checkpoint (:func:`pclbench.pretrain.checkpoint.load_encoder`)."""
    from pclbench.pretrain.checkpoint import load_encoder as _load

    return _load(path, map_location=map_location)


__all__ = ["load_encoder", "__version__"]
