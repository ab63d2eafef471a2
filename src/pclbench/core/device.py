"""The torch device a config's ``device`` setting names, resolved and checked in one place.

Used by every stage that runs torch: alignment's landmark backend (``align.device``), pretraining
(``pretrain.device``), feature extraction (``evaluate.device``) and the probes (``probe.device``).
``auto`` picks CUDA when torch sees a GPU, else the CPU. A device that is named explicitly but
absent (``cuda`` without a GPU, ``cuda:3`` on a two-GPU machine, ``mps`` off Apple silicon) is a
:class:`ConfigError` naming the key, raised before any work starts, instead of a late torch error
in the middle of a run. Callers that need a string (face_alignment's ``device=``) take
``str(resolve_device(...))``.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from pclbench.core.config import ConfigError

_NAME = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def resolve_device(name: str, where: str, *, local_rank: Optional[int] = None) -> torch.device:
    """The torch device of the setting ``where`` (e.g. ``"pretrain.device"``) whose value is ``name``.

    ``auto`` -> ``cuda`` if CUDA is available, else ``cpu``; ``cpu``; ``cuda`` / ``cuda:i`` (the
    GPU must exist); ``mps`` (MPS must be available). ``local_rank``: in a distributed run, a plain
    ``cuda`` (or ``auto`` resolving to it) becomes ``cuda:<local_rank>``, one GPU per rank.
    Raises :class:`ConfigError` for an unknown name or a device this machine does not have.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: unknown device {name!r}; expected auto, cpu, cuda, cuda:<index> or mps")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {name!r} requested but CUDA is not available "
                              "(torch sees no GPU); use 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        index = int(name.split(":")[1]) if ":" in name else None
        if index is not None and index >= count:
            raise ConfigError(f"{where}: {name!r} requested but torch sees {count} CUDA device(s) "
                              f"(cuda:0 .. cuda:{count - 1})")
        if index is None and local_rank is not None:
            return torch.device("cuda", local_rank)  # one device per rank
        return torch.device(name)
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{where}: 'mps' requested but the MPS backend is not available; use 'auto' or 'cpu'")
    return torch.device(name)
