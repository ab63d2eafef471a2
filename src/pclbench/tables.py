"""Comparison tables from probe results (architecture.md stage 6).

For each task ``<task>.md`` / ``<task>.csv`` (one row per method, the task's metric columns) and
``summary.md`` / ``summary.csv`` (methods x one headline metric per task, with the direction of
better). Every number comes from a stage-5 result dict; a (method, task) without a result is written
``not run`` and an undefined value (for example the F1 of an AU without positives) ``n/a`` -- never
a made-up number. Several seeds of the same (method, task) are averaged and shown as mean +- std over
seeds. The Markdown notes state the dataset, readout, protocol, method variant (``method_info``), seeds
and the result files the numbers come from (method doc section 5: every number carries its provenance).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

NOT_RUN = "not run"
UNDEFINED = "n/a"
UP, DOWN = "higher", "lower"
ARROW = {UP: "↑", DOWN: "↓"}


@dataclass(frozen=True)
class Column:
    key: str  # the result's metric key (or "per_au:<name>")
    label: str  # header text
    better: str | None  # UP / DOWN / None (not a score, e.g. a std)


# Fixed metric columns per task; AU per-AU columns are added from the results (the AU set is data).
TASK_COLUMNS: dict[str, list[Column]] = {
    "expression": [Column("accuracy_pct", "Accuracy (%)", UP),
                   Column("mean_class_accuracy_pct", "Mean-class accuracy (%)", UP)],
    "verification": [Column("accuracy_mean_pct", "Accuracy (%)", UP),
                     Column("accuracy_std_pct", "Std over folds (%)", None)],
    "au": [Column("mean_f1_pct", "Mean F1 (%)", UP)],
    "pose": [Column("mae_yaw_deg", "Yaw MAE (°)", DOWN), Column("mae_pitch_deg", "Pitch MAE (°)", DOWN),
             Column("mae_roll_deg", "Roll MAE (°)", DOWN), Column("mae_mean_deg", "Mean MAE (°)", DOWN)],
}
HEADLINE: dict[str, Column] = {
    "expression": Column("accuracy_pct", "Expression accuracy (%)", UP),
    "verification": Column("accuracy_mean_pct", "Verification accuracy (%)", UP),
    "au": Column("mean_f1_pct", "AU mean F1 (%)", UP),
    "pose": Column("mae_mean_deg", "Pose mean MAE (°)", DOWN),
}


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _names(section: Any) -> list[str]:
    """Names from a config section that is a mapping (keys) or a list (strings or {name: ...})."""
    if isinstance(section, dict):
        return [str(k) for k in section]
    if isinstance(section, list):
        return [str(m["name"]) if isinstance(m, dict) and "name" in m else str(m) for m in section]
    return []


def _value(result: dict, key: str) -> float | None:
    if key.startswith("per_au:"):
        entry = (result.get("per_au") or {}).get(key.split(":", 1)[1])
        v = entry.get("f1_pct") if isinstance(entry, dict) else None
    else:
        v = (result.get("metrics") or {}).get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class Cell:
    """A table cell: mean over seeds (None = undefined), std over seeds, number of seeds; n_seeds 0 =
    not run."""

    mean: float | None
    std: float | None
    n_seeds: int

    def markdown(self, bold: bool = False) -> str:
        if self.n_seeds == 0:
            return NOT_RUN
        if self.mean is None:
            return UNDEFINED
        s = f"{self.mean:.2f}"
        if self.n_seeds > 1 and self.std is not None:
            s += f" ± {self.std:.2f}"
        return f"**{s}**" if bold else s


def _cell(results: Sequence[dict], key: str) -> Cell:
    if not results:
        return Cell(None, None, 0)
    vals = [_value(r, key) for r in results]
    defined = [v for v in vals if v is not None]
    if not defined:
        return Cell(None, None, len(results))
    mean = sum(defined) / len(defined)
    std = math.sqrt(sum((v - mean) ** 2 for v in defined) / len(defined)) if len(defined) > 1 else None
    return Cell(mean, std, len(results))


def _row_key(r: dict) -> tuple[str, str, str]:
    return (str(r.get("method")), str(r.get("readout")), str(r.get("dataset")))


def _row_labels(keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """Label rows by method, adding readout / dataset only where one method has several."""
    keys = list(keys)
    out = {}
    for k in keys:
        same_method = [o for o in keys if o[0] == k[0]]
        label = k[0]
        if len({o[1] for o in same_method}) > 1:
            label += f" [{k[1]}]"
        if len({o[2] for o in same_method}) > 1:
            label += f" ({k[2]})"
        out[k] = label
    return out


def _best(cells: Sequence[Cell], better: str | None) -> float | None:
    vals = [c.mean for c in cells if c.n_seeds and c.mean is not None]
    if better is None or not vals:
        return None
    return max(vals) if better == UP else min(vals)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _csv_value(c: Cell) -> Any:
    if c.n_seeds == 0:
        return NOT_RUN
    return UNDEFINED if c.mean is None else repr(c.mean)


def _variant_options(info: Any, prefix: str = "") -> list[str]:
    """``key=value`` for every option whose value is ``faithful`` or ``fixed`` (nested keys dotted)."""
    out = []
    if isinstance(info, dict):
        for k, v in info.items():
            if isinstance(v, dict):
                out += _variant_options(v, f"{prefix}{k}.")
            elif isinstance(v, str) and v in ("faithful", "fixed"):
                out.append(f"{prefix}{k}={v}")
    return out


def _method_info_text(info: Any) -> str:
    """The method variant for a note: its faithful/fixed options when it has any, else the whole
    recorded config entry."""
    if info is None:
        return "no method_info recorded"
    options = _variant_options(info)
    if options:
        return ", ".join(options)
    if isinstance(info, dict):
        return json.dumps(info, sort_keys=True, default=str, separators=(", ", ": "))
    return str(info)


def _notes(task_results: Sequence[dict], extra: Sequence[str]) -> str:
    """The provenance notes under a table."""
    notes = list(extra)
    datasets = sorted({str(r.get("dataset")) for r in task_results})
    readouts = sorted({str(r.get("readout")) for r in task_results})
    protocols = list(OrderedDict.fromkeys(str(r.get("protocol")) for r in task_results))
    if task_results:
        notes.append("Dataset: " + ", ".join(datasets) + ".")
        notes.append("Readout: " + ", ".join(readouts) + " (trunk = the shared trunk, the authors' choice; "
                     "face = F_f; pose = F_p; concat = [F_f, F_p]).")
        notes.append("Protocol: " + " | ".join(protocols) + ".")
        infos = OrderedDict()
        for r in task_results:
            infos.setdefault(str(r.get("method")), _method_info_text(r.get("method_info")))
        notes.append("Method variants: " + "; ".join(f"{m}: {t}" for m, t in infos.items()) + ".")
        seeds = sorted({r.get("seed") for r in task_results if r.get("seed") is not None})
        notes.append(f"Seeds: {', '.join(map(str, seeds)) or 'unknown'}; with several seeds a cell is "
                     "mean ± std over seeds.")
        sources = sorted({str(r["source"]) for r in task_results if r.get("source")})
        notes.append("Source: pclbench linear-probe results (stage 5"
                     + (": " + ", ".join(sources) if sources else "") + "); these are our runs, not "
                     "published numbers.")
    notes.append(f"`{NOT_RUN}` = no result for this method and task; `{UNDEFINED}` = metric undefined "
                 "(e.g. F1 of an AU with no positive and no predicted positive).")
    return "\n".join(f"{i}. {n}" for i, n in enumerate(notes, 1)) + "\n"


def _ordered(first: Sequence[str], seen: Iterable[str]) -> list[str]:
    return list(OrderedDict.fromkeys([*first, *seen]))


def _au_number(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 10**9, name)


def build_tables(probe_results: list[dict], out_dir: Path, config: dict) -> list[Path]:
    """Write the per-task and summary tables for ``probe_results`` (stage-5 dicts, for example from
    :func:`pclbench.probes.load_results`) into ``out_dir``; returns the written paths.

    Tasks come from ``config['workflow']['tasks']`` (else the keys of ``config['tasks']``), then any
    other task in the results; methods from ``config['workflow']['methods']`` (else ``config['methods']``,
    a mapping or a list of names / {name: ...}), then the results. So a configured method without a
    result shows ``not run``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in probe_results:
        if "task" not in r or "method" not in r:
            raise ValueError(f"probe result without task/method: {sorted(r)[:10]}")
    wf = config.get("workflow") if isinstance(config.get("workflow"), dict) else {}
    tasks = _ordered(_names(wf.get("tasks", config.get("tasks"))), (str(r["task"]) for r in probe_results))
    methods = _ordered(_names(wf.get("methods", config.get("methods"))), (str(r["method"]) for r in probe_results))
    written: list[Path] = []

    # rows shared by all tables: (method, readout, dataset) per task; a method without any result
    # in a task still gets one "not run" row
    summary_rows: "OrderedDict[str, dict[str, Cell]]" = OrderedDict((m, {}) for m in methods)
    for task in tasks:
        tr = [r for r in probe_results if str(r["task"]) == task]
        columns = list(TASK_COLUMNS.get(task, []))
        if task == "au":
            au_names = sorted(OrderedDict.fromkeys(n for r in tr for n in (r.get("per_au") or {})),
                              key=_au_number)  # AU2 before AU12, whatever order the JSON kept
            columns = [Column(f"per_au:{n}", f"{n} F1 (%)", UP) for n in au_names] + columns
        if task not in TASK_COLUMNS:
            keys = list(OrderedDict.fromkeys(k for r in tr for k in (r.get("metrics") or {})))
            columns = [Column(k, k, None) for k in keys]
        groups: "OrderedDict[tuple[str, str, str], list[dict]]" = OrderedDict()
        for m in methods:
            mine = [r for r in tr if str(r["method"]) == m]
            if not mine:
                groups[(m, "", "")] = []
            for r in mine:
                groups.setdefault(_row_key(r), []).append(r)
        labels = _row_labels(k for k in groups if groups[k])
        cells = {k: [_cell(g, c.key) for c in columns] for k, g in groups.items()}
        best = [_best([cells[k][j] for k in groups], c.better) for j, c in enumerate(columns)]
        header = ["Method"] + [c.label + (f" {ARROW[c.better]}" if c.better else "") for c in columns]
        md_rows, csv_rows = [], []
        for k, g in groups.items():
            label = labels.get(k, k[0])
            row = [label]
            for j, c in enumerate(cells[k]):
                is_best = best[j] is not None and c.mean is not None and c.n_seeds > 0 and c.mean == best[j]
                row.append(c.markdown(bold=is_best))
            md_rows.append(row)
            csv_rows.append([k[0], k[1] if g else "", k[2] if g else "", len(g)]
                            + [_csv_value(c) for c in cells[k]]
                            + [repr(c.std) if c.std is not None else "" for c in cells[k]])
        title = f"# {task}\n\n"
        extra = [f"Bold = best value in a column ({ARROW[UP]} higher is better, {ARROW[DOWN]} lower is better)."]
        if task == "verification":
            extra.append("Accuracy = mean over the folds of the pair list (10 for LFW); the threshold of each "
                         "fold is chosen on the other folds.")
        if task == "au":
            extra.append("F1 on the pooled test predictions of the subject-exclusive folds.")
        md = title + _md_table(header, md_rows) + "\nNotes:\n\n" + _notes(tr, extra)
        csv_header = (["method", "readout", "dataset", "n_seeds"] + [c.key for c in columns]
                      + [f"{c.key}_seed_std" for c in columns])
        written.append(_write_atomic(out_dir / f"{task}.md", md))
        written.append(_write_atomic(out_dir / f"{task}.csv", _csv(csv_header, csv_rows)))

        if task in HEADLINE:
            for m in methods:
                mine = [r for r in tr if str(r["method"]) == m]
                # several readouts/datasets of one method: the summary keeps the authors' readout
                # (trunk) when present, else the first one seen
                if mine:
                    keys = list(OrderedDict.fromkeys(_row_key(r) for r in mine))
                    pick = next((k for k in keys if k[1] == "trunk"), keys[0])
                    mine = [r for r in mine if _row_key(r) == pick]
                summary_rows[m][task] = _cell(mine, HEADLINE[task].key)

    head_tasks = [t for t in tasks if t in HEADLINE]
    best = {t: _best([summary_rows[m][t] for m in methods], HEADLINE[t].better) for t in head_tasks}
    header = ["Method"] + [f"{HEADLINE[t].label} {ARROW[HEADLINE[t].better]}" for t in head_tasks]
    md_rows = []
    for m in methods:
        row = [m]
        for t in head_tasks:
            c = summary_rows[m][t]
            row.append(c.markdown(bold=best[t] is not None and c.n_seeds > 0 and c.mean == best[t]))
        md_rows.append(row)
    extra = [f"{ARROW[UP]} higher is better, {ARROW[DOWN]} lower is better; bold = best in a column.",
             "Headline metric per task: " + ", ".join(
                 f"{t}: {HEADLINE[t].key} ({HEADLINE[t].better} is better)" for t in head_tasks) + ".",
             "A method with several readouts is summarised by its trunk readout (see the task tables)."]
    md = "# Summary\n\n" + _md_table(header, md_rows) + "\nNotes:\n\n" + _notes(
        [r for r in probe_results if str(r["task"]) in head_tasks], extra)
    csv_header = ["method"] + [f"{t}:{HEADLINE[t].key} ({HEADLINE[t].better} is better)" for t in head_tasks]
    csv_rows = [[m] + [_csv_value(summary_rows[m][t]) for t in head_tasks] for m in methods]
    written.append(_write_atomic(out_dir / "summary.md", md))
    written.append(_write_atomic(out_dir / "summary.csv", _csv(csv_header, csv_rows)))
    return written
