"""The registry of dataset parsers: config ``datasets.<name>.parser`` -> ``prepare(entry, source, out) -> meta``.

Each parser module registers its ``prepare`` with ``@PARSERS.register(name)``; the package
(:mod:`pclbench.data.parsers`) imports every parser module and runs the one a dataset entry names
(:func:`pclbench.data.parsers.prepare_dataset`). The registry lives apart from the package so that a
parser module imports it without importing the package that imports the parser (no import cycle).
"""
from __future__ import annotations

from typing import Callable

from pclbench.core.registry import Registry

Parser = Callable[..., dict]

#: config ``datasets.<name>.parser`` -> ``prepare(entry, source, out) -> meta``
PARSERS: Registry[Parser] = Registry("dataset parser")
