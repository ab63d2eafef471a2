"""Linear evaluation of frozen facial representations on four tasks (method doc section 4).

``TASKS`` maps a task name to its run function (expression, verification, au, pose);
:func:`run_task` is the stage-5 entry point of docs/architecture.md. Every task reads the cached
features of stage 4 and the aligned manifest of stage 2, selects hyperparameters on validation data
only (never on test, the fix of method doc 6.1 item 1), and returns a plain-JSON result dict.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import from_dict
from ..registry import Registry
from . import au, expression, pose, verification
from .linear import ProbeConfig

TaskFn = Callable[[Path, Path, Path, dict, int, str], dict]

TASKS: Registry[TaskFn] = Registry("task")
TASKS.register("expression")(expression.run)
TASKS.register("verification")(verification.run)
TASKS.register("au")(au.run)
TASKS.register("pose")(pose.run)


def run_task(task: str, features_dir: Path, aligned_dir: Path, raw_dir: Path, config: dict, seed: int,
             method: str) -> dict:
    """Run probe ``task`` for ``method`` on the features in ``features_dir``.

    ``features_dir`` = ``results/features/<method>/<dataset>/``, ``aligned_dir`` = ``data/aligned/<dataset>/``,
    ``raw_dir`` = ``data/raw/<dataset>/`` (read by verification for ``pairs.csv``); ``config`` is the whole
    config dict (sections ``probe`` and ``tasks.<task>`` are read; ``methods.<method>`` is copied into the
    result as ``method_info``). Accuracy/F1 metrics are percentages (keys end in ``_pct``), MAE in
    degrees (``_deg``).
    """
    fn = TASKS.get(task)
    if "probe" not in config or "tasks" not in config or task not in config["tasks"]:
        raise KeyError(f"config needs sections probe and tasks.{task}")
    threads = from_dict(ProbeConfig, config["probe"], "probe").check().num_threads
    before = torch.get_num_threads()
    if threads:
        # probe-sized tensors: extra threads mostly spin, and on a shared machine they contend
        torch.set_num_threads(threads)
    try:
        return fn(Path(features_dir), Path(aligned_dir), Path(raw_dir), config, int(seed), method)
    finally:
        torch.set_num_threads(before)


def _json_safe(obj: Any) -> Any:
    """nan/inf -> None (JSON has no nan), numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_result(result: dict, path: Path) -> Path:
    """Write ``result`` as JSON to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def load_results(probes_dir: Path) -> list[dict]:
    """Every probe result under ``probes_dir`` (``<method>/<task>.json``, or ``<task>.<suffix>.json``
    / ``<task>_<suffix>.json`` for e.g. several seeds), each with ``source`` = its path relative to
    ``probes_dir``. Other JSON files (``run.json`` provenance) are not results and are skipped."""
    probes_dir = Path(probes_dir)
    pattern = re.compile(r"^(%s)([._-].*)?$" % "|".join(map(re.escape, TASKS.names())))
    out = []
    for p in sorted(probes_dir.rglob("*.json")):
        if p.name.startswith(".") or not pattern.match(p.stem):
            continue
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(r, dict) or "task" not in r or "method" not in r:
            raise ValueError(f"{p}: not a probe result (needs keys task and method)")
        r.setdefault("source", str(p.relative_to(probes_dir)))
        out.append(r)
    return out


__all__ = ["TASKS", "run_task", "save_result", "load_results"]
