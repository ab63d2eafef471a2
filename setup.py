"""Build hook: ship the repository's schema, default config and report captions inside the wheel.

All project metadata lives in pyproject.toml; this file only adds one build step. The files below stay
where Snakemake reads them (workflow/schemas/, config/, workflow/report/: the single source of truth);
``build_py`` copies each to ``pclbench/_data/<same relative path>`` in the build directory, where
:func:`pclbench.core.resources.resource_path` finds them (importlib.resources) when the package does not run
from the repository. No copy is kept in src/, so there is nothing that can go stale.

Setuptools facts relied on (setuptools/command/build.py, ``SubCommand`` protocol, the pinned 84.2.1):
a custom ``build_py`` gets ``editable_mode = True`` for a PEP 660 editable install and then SHOULD
return early when all it does is copy files (an editable install reads the repository copy anyway);
``get_outputs()`` / ``get_output_mapping()`` must list the files it adds, independently of ``run()``;
``get_source_files()`` feeds the sdist (MANIFEST.in lists the same files as well).
"""
from __future__ import annotations

import os
from glob import glob

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

# Repository files shipped as package data (repository-relative, "/"-separated); keep in step with
# pclbench.core.config.resource_path's callers and MANIFEST.in (tests/test_packaging.py checks the wheel).
SHARED_PATTERNS = ("config/config.yaml", "config/voxceleb_exclusion.txt", "workflow/schemas/*.yaml", "workflow/report/*.rst")
DATA_PACKAGE_DIR = ("pclbench", "_data")


def shared_files() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    out: list[str] = []
    for pattern in SHARED_PATTERNS:
        hits = sorted(os.path.relpath(p, here).replace(os.sep, "/") for p in glob(os.path.join(here, pattern)))
        if not hits:  # a wheel without its schema fails only at run time: refuse to build it
            raise FileNotFoundError(f"setup.py: no file matches {pattern!r} (package data of pclbench)")
        out += hits
    return out


class build_py(_build_py):
    """``build_py`` that also copies :data:`SHARED_PATTERNS` to ``pclbench/_data/`` in ``build_lib``."""

    def _shared_mapping(self) -> dict[str, str]:
        # {destination in build_lib: source in the repository}
        return {os.path.join(self.build_lib, *DATA_PACKAGE_DIR, *rel.split("/")): rel for rel in shared_files()}

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the package reads the repository copy directly
            return
        for dst, src in self._shared_mapping().items():
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + list(self._shared_mapping())

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if not self.editable_mode:
            mapping.update(self._shared_mapping())
        return mapping

    def get_source_files(self) -> list[str]:
        return super().get_source_files() + shared_files()


setup(cmdclass={"build_py": build_py})
