"""The probe results as the tables read them: the result contract, one reproduced value, its footnotes.

A probe result (docs/architecture.md, "probe result contract"; written by
:func:`pclbench.evaluate.run_benchmark`) is one JSON per (method, benchmark) with every readout x seed
inside: ``summary[readout][metric] = {mean, std, n}``, ``std_over``, ``primary_metric``, ``protocol``,
``method_info`` (the encoder's record, ``pclbench.cli.checkpoint_info``). This module checks that
contract (:func:`normalise_probe`), reads one value out of it (:class:`Stat`, :func:`probe_stat`) and
turns ``method_info`` into the footnote text (:func:`variant_text`, :func:`ablation_of`). A value
that is not there is never made up: ``n/a`` = undefined, ``not run`` = the benchmark did not run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

NOT_RUN = "not run"
UNDEFINED = "n/a"
NO_VALUE = "—"  # a published-only row has no reproduced value (and vice versa): not a number, not "not run"

# Header text of the metric keys of the probe contract (units are part of the key).
METRIC_LABELS = {
    "accuracy_pct": "Acc. (%)",
    "mean_class_accuracy_pct": "Mean-class acc. (%)",
    "accuracy_mean_pct": "Acc. (%)",
    "mean_f1_pct": "Mean F1 (%)",
    "mae_yaw_deg": "Yaw MAE (°)",
    "mae_pitch_deg": "Pitch MAE (°)",
    "mae_roll_deg": "Roll MAE (°)",
    "mae_mean_deg": "Mean MAE (°)",
}


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_pct", " (%)").replace("_deg", " (°)").replace("_", " "))


def lower_is_better(metric: str) -> bool:
    """Direction of a metric that is not a task's primary one (whose direction the task declares):
    errors (MAE, ``*_deg``, ``*error*``) are lower-is-better, everything else higher."""
    return metric.startswith("mae") or metric.endswith("_deg") or "error" in metric


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def normalise_probe(r: Mapping, source: str | None = None) -> dict:
    """Check a probe result against the contract and return it as a dict (``source`` added)."""
    where = source or "probe result"
    if not isinstance(r, Mapping):
        raise ValueError(f"{where}: a probe result must be a JSON object, got {type(r).__name__}")
    r = dict(r)
    missing = [k for k in ("benchmark", "task", "method", "summary", "primary_metric") if k not in r]
    if missing:
        raise ValueError(f"{where}: not a probe result, missing key(s) {', '.join(missing)} (see the probe "
                         f"result contract in docs/architecture.md)")
    if not isinstance(r["summary"], Mapping):
        raise ValueError(f"{where}: 'summary' must map readout -> metric -> {{mean, std, n}}")
    r["benchmark"], r["task"], r["method"] = str(r["benchmark"]), str(r["task"]), str(r["method"])
    if source:
        r.setdefault("source", source)
    return r


def load_probe(path: Path | str) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return normalise_probe(data, source=str(path))


@dataclass(frozen=True)
class Stat:
    """A reproduced value: mean, std (sample std over ``std_over``), n. ``mean`` None = undefined."""

    mean: float | None
    std: float | None
    n: int
    std_over: str = "seeds"

    def text(self, d: int, latex: bool = False) -> str:
        if self.mean is None:
            return UNDEFINED
        pm = r" $\pm$ " if latex else " ± "
        s = f"{self.mean:.{d}f}"
        if self.n > 1 and self.std is not None:
            s += f"{pm}{self.std:.{d}f}"
        return s + f" ({self.n})"


def probe_stat(probe: Mapping, readout: str, metric: str) -> Stat | None:
    """The summary entry of ``readout`` x ``metric``; None when the probe has no such entry."""
    entry = ((probe.get("summary") or {}).get(readout) or {}).get(metric)
    if not isinstance(entry, Mapping):
        return None
    n = entry.get("n")
    return Stat(_finite(entry.get("mean")), _finite(entry.get("std")), int(n) if isinstance(n, int) else 0,
                str(probe.get("std_over", "seeds")))


def _variant_options(info: Any, prefix: str = "") -> list[str]:
    """``key=value`` of every option whose value is ``faithful`` or ``fixed`` (docs/method.md §6-7)."""
    out = []
    if isinstance(info, dict):
        for k, v in info.items():
            if isinstance(v, dict):
                out += _variant_options(v, f"{prefix}{k}.")
            elif isinstance(v, str) and v in ("faithful", "fixed"):
                out.append(f"{prefix}{k}={v}")
    return out


def ablation_of(probe: Mapping) -> str | None:
    """The PCL ablation label recorded in ``method_info`` (``pclbench.pretrain.methods.ablation_label``)."""
    info = probe.get("method_info")
    if not isinstance(info, Mapping):
        return None
    label = info.get("ablation")
    if label is None and isinstance(info.get("variant"), Mapping):
        label = info["variant"].get("ablation")
    return str(label) if label is not None else None


def variant_text(probe: Mapping) -> str:
    """The method variant of a footnote: import source, ablation, faithful/fixed options, training length."""
    info = probe.get("method_info")
    if not isinstance(info, Mapping):
        return "no method_info recorded"
    parts = []
    if info.get("imported_from"):
        parts.append(f"imported from {info['imported_from']}")
    abl = ablation_of(probe)
    if abl is not None:
        parts.append(f"ablation: {abl}")
    opts = _variant_options({k: v for k, v in info.items() if k != "ablation"})
    if opts:
        parts.append(", ".join(opts))
    for k in ("epochs_trained", "iterations"):
        if info.get(k) is not None:
            parts.append(f"{k.replace('_', ' ')} {info[k]}")
    if info.get("epoch_unit") is not None:
        parts.append(f"epoch unit {info['epoch_unit']}")
    return "; ".join(parts) if parts else json.dumps(dict(info), sort_keys=True, default=str)
