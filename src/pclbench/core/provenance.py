"""Provenance written next to every stage's outputs: what ran, with which config, code and seeds."""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from pclbench.core.resources import IN_REPOSITORY, REPO_ROOT

_PACKAGES = ("pclbench", "torch", "torchvision", "numpy", "pandas", "pyyaml", "snakemake", "dvc",
             "face-alignment", "dlib-bin")


def git_commit() -> str | None:
    """The repository's HEAD commit, with ``-dirty`` when the work tree has changes.

    None from an installed wheel: there REPO_ROOT is merely a folder above site-packages, and ``git``
    run there would report whatever repository happens to enclose the environment, not pclbench's.
    """
    if not IN_REPOSITORY:
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(stage: str, config: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
             timings: Mapping[str, float] | None = None, **extra: Any) -> dict:
    """What one stage run did: config, versions, git commit, seeds, timings (JSON-ready)."""
    return {
        "stage": stage,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "versions": versions(),
        "seeds": dict(seeds or {}),
        "timings_s": dict(timings or {}),
        "config": config,
        **extra,
    }


def write_run_info(out_dir: Path | str, stage: str, config: Mapping[str, Any] | None = None,
                   seeds: Mapping[str, Any] | None = None, timings: Mapping[str, float] | None = None,
                   filename: str = "run.json", **extra: Any) -> Path:
    """Write ``<out_dir>/<filename>`` (atomically) describing one stage run; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = run_info(stage, config=config, seeds=seeds, timings=timings, **extra)
    path = out_dir / filename
    from pclbench.core.io import atomic_write_text  # temp removed on error, dead writers' leftovers on the next write

    atomic_write_text(path, json.dumps(info, indent=2, default=str) + "\n")
    return path
