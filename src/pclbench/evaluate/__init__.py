"""Linear evaluation of frozen facial representations on four tasks (docs/method.md §4).

``TASKS`` maps a task name to its module (expression, verification, au, pose); each module has
``run(bench, roots, config, probe, seed, readout) -> run dict``, its headline metric ``PRIMARY_METRIC``
with ``HIGHER_IS_BETTER`` (read by the probe results and the tables: :func:`primary_metric`) and may
have ``training_free(config)`` and ``describe(probe, config)``. :func:`run_benchmark`
(:mod:`pclbench.evaluate.benchmark`) is the stage-5 entry point of docs/architecture.md: one (method,
benchmark) job running every readout x seed on the cached features of stage 4 and the aligned
manifests of stage 2. Under the default ``clean`` protocol every hyperparameter is selected on
validation data carved from the training data (never on test, the fix of docs/method.md §6.1 item 1);
``paper`` reproduces the authors' best-test-epoch selection.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pclbench.evaluate.benchmark import Benchmark, DataRef, Roots, run_benchmark, sample_stats, summarize
from pclbench.evaluate.tasks import TASKS, primary_metric

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
    from pclbench.core.io import atomic_write_text  # temp removed on error, dead writers' leftovers on the next write

    path = Path(path)
    atomic_write_text(path, json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    return path


def load_results(probes_dir: Path) -> list[dict]:
    """Every probe result under ``probes_dir`` (``<method>/<benchmark>.json``), each with ``source`` =
    its path relative to ``probes_dir``. JSON files that are not results (``run.json`` provenance,
    ``*.run.json``) are skipped; a file that looks like a result but lacks task/method is an error."""
    probes_dir = Path(probes_dir)
    out = []
    for p in sorted(probes_dir.rglob("*.json")):
        if p.name.startswith(".") or p.name == "run.json" or p.name.endswith(".run.json"):
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


__all__ = ["TASKS", "primary_metric", "Benchmark", "DataRef", "Roots", "run_benchmark", "sample_stats", "summarize",
           "save_result", "load_results"]
