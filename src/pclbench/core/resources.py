"""Files of the repository the package reads at run time: the repository copy, or a wheel's package data.

Apart from :mod:`pclbench.core.config` so that the schema generator (:mod:`pclbench.core.schema_gen`),
which the config module uses, can find its wiring file without importing the config module back.
"""
from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/pclbench/core/resources.py
# True when the package runs from the repository's src/ layout (editable install, PYTHONPATH=src);
# False for an installed wheel, where parents[3] is merely some folder above site-packages.
IN_REPOSITORY = Path(__file__).resolve().parents[2].name == "src" and (REPO_ROOT / "Snakefile").is_file()
_EXTRACTED = contextlib.ExitStack()  # resources extracted from a zip import live until exit
atexit.register(_EXTRACTED.close)


def resource_path(relpath: str) -> Path:
    """A repository file the package reads at run time (``"workflow/schemas/config.schema.yaml"``).

    The repository copy is the single source (Snakemake reads it there); a wheel carries it as package
    data under ``pclbench/_data/<relpath>`` (setup.py's ``build_py`` copies it), read through
    ``importlib.resources.files`` / ``as_file`` (Python docs, library/importlib.resources: ``as_file``
    returns the path itself for a file on disk and a temporary copy for e.g. a zip import).
    A missing file is not an error here: the caller's ``open`` names the path.
    """
    if IN_REPOSITORY:
        return REPO_ROOT / relpath
    packaged = resources.files("pclbench").joinpath("_data", *relpath.split("/"))
    if isinstance(packaged, Path) or not packaged.is_file():
        return Path(str(packaged))
    return _EXTRACTED.enter_context(resources.as_file(packaged))
