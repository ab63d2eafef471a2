"""The paper's comparison tables from probe results (architecture.md stage 6; docs/method.md §5).

Input: probe results in the contract of docs/architecture.md (one JSON per (method, benchmark) with
every readout x seed inside: ``summary[readout][metric] = {mean, std, n}``, ``std_over``,
``primary_metric``, ``protocol``, ``method_info``), the published numbers of
``config/published_results.yaml`` and the benchmarks that did not run (with the reason).

Output, per task (``<task>.{md,csv,tex,html}``): rows = methods at the primary readout, columns = the
benchmarks of the task x the configured metrics; a cell is the reproduced mean +- std (n), next to it
the published number where ``published_results.yaml`` has the same method and benchmark, and the
difference (reproduced - published). ``<task>_readouts.*``: every (method, readout) row x each
benchmark's primary metric, i.e. what disentanglement buys per task. ``ablation.*``: the PCL variants
(``method_info.ablation``, :func:`pclbench.pretrain.methods.ablation_label`) x every benchmark's primary metric.
``summary.{md,csv,html}`` and a flat ``metrics.json`` (``method/benchmark/metric -> mean``, for
``dvc metrics``). A benchmark that did not run is written ``not run`` with its reason as a note; an
undefined value ``n/a``; a published cell nobody transcribed stays empty -- never a made-up number.
Every table carries its protocol notes (clean/paper protocol, faithful/fixed variant, readout, what the
std is over, the published sources).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from pclbench.core.config import ConfigError, from_dict, resource_path

NOT_RUN = "not run"
UNDEFINED = "n/a"
NO_VALUE = "—"  # a published-only row has no reproduced value (and vice versa): not a number, not "not run"
PUBLISHED_SCHEMA = resource_path("workflow/schemas/published_results.schema.yaml")  # repo copy, else package data

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
# Primary metric of a result in the older one-seed format (no ``primary_metric`` key).
_LEGACY_PRIMARY = {"expression": "accuracy_pct", "verification": "accuracy_mean_pct", "au": "mean_f1_pct",
                   "pose": "mae_mean_deg"}
TASK_ORDER = ("expression", "verification", "au", "pose")


@dataclass
class TablesConfig:
    """Section ``tables`` of config/config.yaml."""

    primary_readout: str  # readout of the main tables, summary and ablation (trunk = the authors' choice)
    decimals: int  # digits after the decimal point
    metrics: dict[str, list[str]]  # task -> metrics shown per benchmark in the main table
    published: str  # path of the published-results YAML (relative: to the working directory)

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 6:
            raise ConfigError(f"tables.decimals: must be in 0..6, got {self.decimals!r}")


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_pct", " (%)").replace("_deg", " (°)").replace("_", " "))


def higher_is_better(metric: str, probe: Mapping | None = None) -> bool:
    """Direction of ``metric``: the probe's own flag for its primary metric, else errors (MAE) are lower."""
    if probe is not None and probe.get("primary_metric") == metric and "higher_is_better" in probe:
        return bool(probe["higher_is_better"])
    return not (metric.startswith("mae") or metric.endswith("_deg") or "error" in metric)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def normalise_probe(r: Mapping, source: str | None = None) -> dict:
    """Check a probe result against the contract and return it as a dict.

    A result of the older one-seed format (``metrics`` at the top level, no ``summary``) is converted:
    one run, ``std`` 0, ``n`` 1 (verification: the std over folds it recorded), benchmark = its dataset.
    """
    where = source or "probe result"
    if not isinstance(r, Mapping):
        raise ValueError(f"{where}: a probe result must be a JSON object, got {type(r).__name__}")
    r = dict(r)
    if "summary" not in r and isinstance(r.get("metrics"), Mapping):
        task = str(r.get("task"))
        readout = str(r.get("readout") or "trunk")
        metrics = {k: v for k, v in r["metrics"].items() if _finite(v) is not None or v is None}
        summary = {k: {"mean": _finite(v), "std": 0.0, "n": 1} for k, v in metrics.items()}
        std_over = "seeds"
        if task == "verification" and "accuracy_std_pct" in metrics:
            std_over = "folds"
            summary.pop("accuracy_std_pct", None)
            for k in ("accuracy_mean_pct", "accuracy_pct"):
                if k in summary:
                    summary[k] = {"mean": summary[k]["mean"], "std": _finite(metrics["accuracy_std_pct"]),
                                  "n": int(r.get("n_folds") or 10)}
        primary = _LEGACY_PRIMARY.get(task, next(iter(metrics), ""))
        r.update(benchmark=str(r.get("benchmark") or r.get("dataset") or task), readouts=[readout],
                 seeds=[r.get("seed")], summary={readout: summary}, std_over=std_over, primary_metric=primary,
                 higher_is_better=higher_is_better(primary))
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


@dataclass
class PublishedRow:
    name: str
    matches: list[str]
    protocol: str
    values: dict[tuple[str, str], tuple[float, str]]  # (benchmark, metric) -> (value, source key)


@dataclass
class Published:
    """config/published_results.yaml, validated: rows with their values keyed by (benchmark, metric)."""

    sources: dict[str, dict]
    rows: list[PublishedRow]

    def for_method(self, method: str) -> list[PublishedRow]:
        return [r for r in self.rows if method in r.matches]

    def has(self, benchmark: str, metric: str) -> bool:
        return any((benchmark, metric) in r.values for r in self.rows)

    def source_text(self, key: str) -> str:
        s = self.sources[key]
        return f"{s['title']}, {s['where']}" + (f" ({s['url']})" if s.get("url") else "")


def load_published(path: Path | str | None) -> Published:
    """Read and validate the published-results YAML (schema + cross references); ``None`` = none."""
    if path is None:
        return Published({}, [])
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"published results file {path} does not exist (config tables.published)")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    import jsonschema

    with open(PUBLISHED_SCHEMA) as fh:
        schema = yaml.safe_load(fh)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        at = ".".join(str(p) for p in e.absolute_path) or "<root>"
        raise ConfigError(f"{path}: error at {at}: {e.message} (schema {PUBLISHED_SCHEMA.name})")
    sources, columns = data["sources"], data["columns"]
    rows = []
    for i, m in enumerate(data["methods"]):
        at = f"{path}: methods[{i}] ({m['name']})"
        if m["source"] not in sources:
            raise ConfigError(f"{at}: source {m['source']!r} is not under sources (known: {', '.join(sources)})")
        values = {}
        for col, v in (m.get("results") or {}).items():
            if col not in columns:
                raise ConfigError(f"{at}: results key {col!r} is not under columns (known: {', '.join(columns)})")
            if v is None:  # an empty cell: no number transcribed
                continue
            value, src = (v["value"], v["source"]) if isinstance(v, dict) else (v, m["source"])
            if src not in sources:
                raise ConfigError(f"{at}: results.{col}: source {src!r} is not under sources")
            values[(columns[col]["benchmark"], columns[col]["metric"])] = (float(value), src)
        rows.append(PublishedRow(m["name"], list(m["matches"]), m.get("protocol", ""), values))
    return Published(sources, rows)


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------
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


def _fmt(v: float, d: int, sign: bool = False) -> str:
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


# ------------------------------------------------------------------------------------------------
# A rendered table: header groups, sub-columns, rows of text cells, notes. One model, four formats.
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    cells: list[str]
    latex: list[str]
    bold: list[bool]
    csv: dict[str, Any]


@dataclass
class Table:
    name: str
    title: str
    groups: list[tuple[str, int]]  # (label, number of sub-columns), after the row-label column
    columns: list[str]  # sub-column labels
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    csv_header: list[str] = field(default_factory=list)


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX (special characters escaped; ±, Δ, °, arrows as math)."""
    out = []
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
            "°": r"$^\circ$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "—": "---", "–": "--"}
    for ch in text:
        out.append(repl.get(ch, ch))
    return "".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(t: Table) -> str:
    header = ["Method"]
    k = 0
    for g, span in t.groups:
        for _ in range(span):
            header.append(f"{g}: {t.columns[k]}" if g else t.columns[k])
            k += 1
    lines = [f"# {t.title}", "", "| " + " | ".join(map(_md_cell, header)) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in t.rows:
        cells = [f"**{c}**" if b else c for c, b in zip(r.cells, r.bold)]
        lines.append("| " + " | ".join(map(_md_cell, [r.label, *cells])) + " |")
    lines += ["", "Notes:", ""] + [f"{i}. {n}" for i, n in enumerate(t.notes, 1)]
    return "\n".join(lines) + "\n"


def to_latex(t: Table) -> str:
    """A booktabs ``table`` environment (needs \\usepackage{booktabs}); notes below the tabular."""
    n = len(t.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(t.title)}}}", rf"\label{{tab:{re.sub('[^A-Za-z0-9]', '-', t.name)}}}",
             r"\begin{tabular}{l" + "r" * n + "}", r"\toprule"]
    if any(g for g, _ in t.groups):
        head, rules, col = ["Method"], [], 2
        for g, span in t.groups:
            head.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(g)}}}" if span > 1 else latex_escape(g))
            if g:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.append(" & ".join(head) + r" \\")
        lines.append(" ".join(rules))
        lines.append(" & ".join([""] + [latex_escape(c) for c in t.columns]) + r" \\")
    else:
        lines.append(" & ".join(["Method"] + [latex_escape(c) for c in t.columns]) + r" \\")
    lines.append(r"\midrule")
    for r in t.rows:
        cells = [rf"\textbf{{{c}}}" if b else c for c, b in zip(r.latex, r.bold)]
        lines.append(" & ".join([latex_escape(r.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
    lines += [rf"{i}. {latex_escape(note)}\par" for i, note in enumerate(t.notes, 1)]
    lines += [r"\end{minipage}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    """A standalone HTML page (inline style only: the Snakemake report embeds it as is)."""
    e = html.escape
    head1 = ["<tr><th rowspan='2'>Method</th>" if any(g for g, _ in t.groups) else "<tr><th>Method</th>"]
    two_rows = any(g for g, _ in t.groups)
    if two_rows:
        for g, span in t.groups:
            head1.append(f"<th colspan='{span}'>{e(g)}</th>")
        head1.append("</tr><tr>")
    head1 += [f"<th>{e(c)}</th>" for c in t.columns] + ["</tr>"]
    body = []
    for r in t.rows:
        cells = "".join(f"<td>{'<b>' + e(c) + '</b>' if b else e(c)}</td>" for c, b in zip(r.cells, r.bold))
        body.append(f"<tr><th>{e(r.label)}</th>{cells}</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in t.notes)
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
             "th,td{border-top:1px solid #999;border-bottom:1px solid #999;padding:3px 8px;text-align:right}"
             "tr th:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(t.title)}</title><style>{style}</style>"
            f"</head><body><h3>{e(t.title)}</h3><table>{''.join(head1)}{''.join(body)}</table>"
            f"<p>Notes:</p><ol>{notes}</ol></body></html>\n")


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=t.csv_header, lineterminator="\n")
    w.writeheader()
    for r in t.rows:
        w.writerow({k: r.csv.get(k, "") for k in t.csv_header})
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> Path:
    from pclbench.core.io import atomic_write_text  # temp removed on error, dead writers' leftovers on the next write

    atomic_write_text(path, text)
    return path


def write_table(t: Table, out_dir: Path, formats: Sequence[str] = ("md", "csv", "tex", "html")) -> list[Path]:
    render = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}
    return [_write_atomic(out_dir / f"{t.name}.{ext}", render[ext](t)) for ext in formats]


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------
def _names(section: Any) -> list[str]:
    if isinstance(section, dict):
        return [str(k) for k in section]
    if isinstance(section, list):
        return [str(m["name"]) if isinstance(m, dict) and "name" in m else str(m) for m in section]
    return []


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


def _variant_text(probe: Mapping) -> str:
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


class Comparison:
    """Probe results + published numbers + not-run benchmarks, arranged as methods x benchmarks."""

    def __init__(self, probes: Sequence[Mapping], config: Mapping, not_run: Mapping[str, str] | None = None,
                 published: Published | None = None):
        self.cfg = from_dict(TablesConfig, config["tables"], "tables")
        self.published = published or Published({}, [])
        self.not_run = dict(not_run or {})
        self.probes: "OrderedDict[tuple[str, str], dict]" = OrderedDict()
        for p in probes:
            p = normalise_probe(p, p.get("source") if isinstance(p, Mapping) else None)
            key = (p["method"], p["benchmark"])
            if key in self.probes:
                raise ValueError(f"two probe results for method {key[0]!r} x benchmark {key[1]!r} "
                                 f"({self.probes[key].get('source', '?')} and {p.get('source', '?')})")
            self.probes[key] = p
        wf = config.get("workflow") if isinstance(config.get("workflow"), Mapping) else {}
        bench_cfg = config.get("benchmarks") if isinstance(config.get("benchmarks"), Mapping) else {}
        self.methods = list(OrderedDict.fromkeys([*_names(wf.get("methods")), *(m for m, _ in self.probes)]))
        self.benchmarks = list(OrderedDict.fromkeys([*_names(wf.get("benchmarks")), *(b for _, b in self.probes),
                                                    *self.not_run]))
        self.task_of: dict[str, str] = {}
        for b in self.benchmarks:
            from_probe = next((p["task"] for (m, pb), p in self.probes.items() if pb == b), None)
            task = from_probe or (bench_cfg.get(b) or {}).get("task")
            if task is None:
                raise ConfigError(f"benchmark {b!r} has no probe result and no entry under benchmarks: its task "
                                  f"is unknown (pass the config section 'benchmarks')")
            self.task_of[b] = str(task)
        self.tasks = sorted(set(self.task_of.values()),
                            key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))
        for b, reason in self.not_run.items():
            if any(pb == b for _, pb in self.probes):
                raise ValueError(f"benchmark {b!r} is marked not run ({reason}) but has probe results")

    # -- per benchmark ---------------------------------------------------------------------------
    def bench_probes(self, b: str) -> list[dict]:
        return [p for (m, pb), p in self.probes.items() if pb == b]

    def primary_metric(self, b: str) -> str:
        ps = self.bench_probes(b)
        if ps:
            return str(ps[0]["primary_metric"])
        wanted = self.cfg.metrics.get(self.task_of[b]) or []
        return wanted[0] if wanted else _LEGACY_PRIMARY.get(self.task_of[b], "value")

    def metrics_of(self, b: str) -> list[str]:
        """Metrics of benchmark ``b`` in its task's main table: the configured ones (in their order) that
        the results have, all configured ones for a benchmark without results; the primary metric is
        always there (first when the configuration does not list it)."""
        primary = self.primary_metric(b)
        wanted = list(self.cfg.metrics.get(self.task_of[b], []))
        if primary not in wanted:
            wanted.insert(0, primary)
        ps = self.bench_probes(b)
        if not ps:
            return wanted
        have = {m for p in ps for r in (p.get("summary") or {}).values() if isinstance(r, Mapping) for m in r}
        return [m for m in wanted if m == primary or m in have]

    def direction(self, b: str, metric: str) -> bool:
        ps = self.bench_probes(b)
        return higher_is_better(metric, ps[0] if ps else None)

    def readouts(self, method: str, b: str) -> list[str]:
        p = self.probes.get((method, b))
        return [str(r) for r in (p.get("summary") or {})] if p else []

    # -- notes -------------------------------------------------------------------------------------
    def _marker(self, b: str) -> str:
        return f"[{chr(ord('a') + list(self.not_run).index(b))}]"

    def _not_run_cell(self, b: str) -> str:
        return f"{NOT_RUN} {self._marker(b)}" if b in self.not_run else NOT_RUN

    def notes(self, benchmarks: Sequence[str], methods: Sequence[str], readout: str | None,
              pub_rows: Sequence[PublishedRow] = (), extra: Sequence[str] = ()) -> list[str]:
        notes = list(extra)
        for b in benchmarks:
            if b in self.not_run:
                notes.append(f"{self._marker(b)} {b}: {NOT_RUN} -- {self.not_run[b]}")
        ran = [b for b in benchmarks if b not in self.not_run]
        gaps = [f"{m} x {b}" for b in ran for m in methods if (m, b) not in self.probes]
        if gaps:
            notes.append(f"{NOT_RUN} (no letter) = the benchmark ran but this method has no probe result: "
                         + ", ".join(gaps) + ".")
        if ran:
            per = []
            for b in ran:
                ps = self.bench_probes(b)
                over = sorted({str(p.get("std_over", "seeds")) for p in ps}) or ["seeds"]
                seeds = sorted({str(s) for p in ps for s in (p.get("seeds") or []) if s is not None})
                per.append(f"{b}: std over {'/'.join(over)}" + (f" (seeds {', '.join(seeds)})" if seeds and
                                                                over == ["seeds"] else ""))
            notes.append("Cells: mean ± sample std (n) of our runs; " + "; ".join(per) + ".")
        if readout is not None:
            notes.append(f"Readout: {readout} (trunk = the shared trunk, what the authors' code reads, docs/method.md §"
                         "6.1 item 2; face = F_f; pose = F_p; concat = [F_f, F_p]).")
        prot = OrderedDict()
        for m in methods:
            ps = [self.probes[(m, b)] for b in benchmarks if (m, b) in self.probes]
            if not ps:
                continue
            protocols = sorted({str(p.get("protocol", "?")) for p in ps})
            prot[m] = f"{m}: protocol {'/'.join(protocols)}; {_variant_text(ps[0])}"
        if prot:
            notes.append("Protocol (clean = selection on a validation split of the training data; paper = the "
                         "authors' best-test-epoch selection, docs/method.md §6.1 item 1) and method variant: "
                         + " | ".join(prot.values()) + ".")
        if pub_rows:
            srcs = OrderedDict()
            for r in pub_rows:
                for _, (_, key) in r.values.items():
                    srcs.setdefault(key, []).append(r.name)
            for key, names in srcs.items():
                notes.append(f"Published ({', '.join(OrderedDict.fromkeys(names))}): {self.published.source_text(key)}.")
            protocols = OrderedDict()
            for r in pub_rows:
                if r.protocol:
                    protocols.setdefault(r.protocol, []).append(r.name)
            for text, names in protocols.items():
                notes.append(f"Published protocol ({', '.join(names)}): {text}.")
            notes.append("Δ = reproduced mean - published (for MAE, negative = lower error than published). "
                         f"{NO_VALUE} = no value of this kind for the row; an empty published cell = not "
                         "transcribed (config/published_results.yaml), never a guess.")
        return notes

    # -- tables ------------------------------------------------------------------------------------
    def task_table(self, task: str) -> Table:
        """Main table of ``task``: methods (primary readout) x benchmarks x metrics, with published."""
        d, ro = self.cfg.decimals, self.cfg.primary_readout
        benches = [b for b in self.benchmarks if self.task_of[b] == task]
        cols: list[tuple[str, str, str]] = []  # (benchmark, metric, kind) kind: ours | published | delta
        groups: list[tuple[str, int]] = []
        for b in benches:
            n0 = len(cols)
            for m in self.metrics_of(b):
                cols.append((b, m, "ours"))
                if self.published.has(b, m):
                    cols.append((b, m, "published"))
                    # a difference only where one of our rows has a matching published number
                    if any((b, m) in r.values for x in self.methods for r in self.published.for_method(x)):
                        cols.append((b, m, "delta"))
            groups.append((b, len(cols) - n0))
        labels = []
        for b, m, kind in cols:
            arrow = "↑" if self.direction(b, m) else "↓"
            labels.append({"ours": f"{metric_label(m)} {arrow}", "published": f"{metric_label(m)} published",
                           "delta": f"{metric_label(m)} Δ"}[kind])
        t = Table(task, f"{task}: reproduced vs published ({ro} readout)", groups, labels)
        t.csv_header = ["method", "kind", "readout"]
        for b, m, kind in cols:
            base = f"{b}:{m}"
            t.csv_header += {"ours": [base, f"{base}:std", f"{base}:n"], "published": [f"{base}:published"],
                             "delta": [f"{base}:difference"]}[kind]
        best = {}
        for b, m, kind in cols:
            if kind == "ours":
                vals = [s.mean for x in self.methods if (x, b) in self.probes
                        for s in [probe_stat(self.probes[(x, b)], ro, m)] if s is not None and s.mean is not None]
                if len(vals) > 1:
                    best[(b, m)] = max(vals) if self.direction(b, m) else min(vals)
        used_pub: list[PublishedRow] = []
        for x in self.methods:
            cells, tex, bold, row_csv = [], [], [], {"method": x, "kind": "reproduced", "readout": ro}
            pubs = self.published.for_method(x)
            for b, m, kind in cols:
                base = f"{b}:{m}"
                p = self.probes.get((x, b))
                s = probe_stat(p, ro, m) if p is not None else None
                pub = next(((r.values[(b, m)], r) for r in pubs if (b, m) in r.values), None)
                if kind == "ours":
                    if b in self.not_run or p is None:
                        c = self._not_run_cell(b) if b in self.not_run else NOT_RUN
                        cells.append(c), tex.append(latex_escape(c)), bold.append(False)
                        row_csv[base] = NOT_RUN
                    elif s is None:
                        cells.append(UNDEFINED), tex.append(UNDEFINED), bold.append(False)
                        row_csv[base] = UNDEFINED
                    else:
                        cells.append(s.text(d)), tex.append(s.text(d, latex=True))
                        bold.append(s.mean is not None and best.get((b, m)) == s.mean)
                        row_csv.update({base: repr(s.mean) if s.mean is not None else UNDEFINED,
                                        f"{base}:std": repr(s.std) if s.std is not None else "",
                                        f"{base}:n": s.n})
                elif kind == "published":
                    c = _fmt(pub[0][0], d) if pub else ""
                    cells.append(c), tex.append(c), bold.append(False)
                    row_csv[f"{base}:published"] = repr(pub[0][0]) if pub else ""
                    if pub and pub[1] not in used_pub:
                        used_pub.append(pub[1])
                else:
                    ok = pub is not None and s is not None and s.mean is not None
                    c = _fmt(s.mean - pub[0][0], d, sign=True) if ok else ""
                    cells.append(c), tex.append(c.replace("-", "$-$") if c.startswith("-") else c), bold.append(False)
                    row_csv[f"{base}:difference"] = repr(s.mean - pub[0][0]) if ok else ""
            t.rows.append(Row(x, cells, tex, bold, row_csv))
        # published rows that match none of our methods: shown on their own, below ours
        for r in self.published.rows:
            if any(x in self.methods for x in r.matches):
                continue
            if not any((b, m) in r.values for b, m, kind in cols if kind == "published"):
                continue
            used_pub.append(r)
            cells, row_csv = [], {"method": f"{r.name} (published)", "kind": "published", "readout": ""}
            for b, m, kind in cols:
                if kind == "published" and (b, m) in r.values:
                    cells.append(_fmt(r.values[(b, m)][0], d))
                    row_csv[f"{b}:{m}:published"] = repr(r.values[(b, m)][0])
                else:
                    cells.append(NO_VALUE if kind == "ours" else "")
            t.rows.append(Row(f"{r.name} (published)", cells, [latex_escape(c) for c in cells],
                              [False] * len(cells), row_csv))
        extra = ["Bold = best reproduced value in a column (↑ higher is better, ↓ lower is better)."]
        t.notes = self.notes(benches, self.methods, ro, used_pub, extra)
        return t

    def readouts_table(self, task: str) -> Table:
        """Every (method, readout) x each benchmark's primary metric: what each readout buys."""
        d = self.cfg.decimals
        benches = [b for b in self.benchmarks if self.task_of[b] == task]
        labels = [f"{metric_label(self.primary_metric(b))} {'↑' if self.direction(b, self.primary_metric(b)) else '↓'}"
                  for b in benches]
        t = Table(f"{task}_readouts", f"{task}: every readout (primary metric per benchmark)",
                  [(b, 1) for b in benches], labels)
        t.csv_header = ["method", "readout"] + [h for b in benches for h in
                                                 (f"{b}:{self.primary_metric(b)}", f"{b}:{self.primary_metric(b)}:std",
                                                  f"{b}:{self.primary_metric(b)}:n")]
        for x in self.methods:
            readouts = list(OrderedDict.fromkeys(r for b in benches for r in self.readouts(x, b))) or [
                self.cfg.primary_readout]
            for ro in readouts:
                cells, tex, row_csv = [], [], {"method": x, "readout": ro}
                for b in benches:
                    self._cell(x, b, ro, self.primary_metric(b), d, cells, tex, row_csv)
                t.rows.append(Row(f"{x} [{ro}]", cells, tex, [False] * len(cells), row_csv))
        t.notes = self.notes(benches, self.methods, None, (), [
            "Rows: method [readout]; n/a = the readout was not probed for this benchmark."])
        return t

    def _cell(self, x: str, b: str, ro: str, m: str, d: int, cells: list, tex: list, row_csv: dict) -> None:
        """Append method ``x``'s cell for benchmark ``b``, readout ``ro``, metric ``m`` (Markdown, LaTeX,
        CSV columns ``b:m``, ``b:m:std``, ``b:m:n``): the value, "not run" or undefined."""
        p = self.probes.get((x, b))
        s = probe_stat(p, ro, m) if p is not None else None
        if p is None:
            c = self._not_run_cell(b)
            cells.append(c), tex.append(latex_escape(c))
            row_csv[f"{b}:{m}"] = NOT_RUN
        elif s is None:
            cells.append(UNDEFINED), tex.append(UNDEFINED)
            row_csv[f"{b}:{m}"] = UNDEFINED
        else:
            cells.append(s.text(d)), tex.append(s.text(d, latex=True))
            row_csv.update({f"{b}:{m}": repr(s.mean) if s.mean is not None else UNDEFINED,
                            f"{b}:{m}:std": repr(s.std) if s.std is not None else "", f"{b}:{m}:n": s.n})

    def _primary_table(self, name: str, title: str, rows: Sequence[tuple[str, str]], extra: Sequence[str]) -> Table:
        """Rows (label, method) x every benchmark's primary metric at the primary readout."""
        d, ro = self.cfg.decimals, self.cfg.primary_readout
        benches = self.benchmarks
        prim = {b: self.primary_metric(b) for b in benches}
        t = Table(name, title, [(b, 1) for b in benches],
                  [f"{metric_label(prim[b])} {'↑' if self.direction(b, prim[b]) else '↓'}" for b in benches])
        t.csv_header = ["method", "label"] + [h for b in benches for h in
                                              (f"{b}:{prim[b]}", f"{b}:{prim[b]}:std", f"{b}:{prim[b]}:n")]
        for label, x in rows:
            cells, tex, row_csv = [], [], {"method": x, "label": label}
            for b in benches:
                self._cell(x, b, ro, prim[b], d, cells, tex, row_csv)
            t.rows.append(Row(label, cells, tex, [False] * len(cells), row_csv))
        t.notes = self.notes(benches, [x for _, x in rows], ro, (), extra)
        return t

    def summary_table(self) -> Table:
        return self._primary_table("summary", f"Summary: primary metric per benchmark ({self.cfg.primary_readout} "
                                   "readout)", [(x, x) for x in self.methods],
                                   ["One column per benchmark: its primary metric; the task tables have the rest."])

    def ablation_rows(self) -> list[tuple[str, str]]:
        """(label, method) of the methods whose results record a PCL ablation label; full PCL first."""
        found = []
        for x in self.methods:
            labels = [ablation_of(p) for (m, _), p in self.probes.items() if m == x]
            labels = [lab for lab in labels if lab is not None]
            if labels:
                found.append((labels[0], x))
        found.sort(key=lambda lm: lm[0] != "full")
        out, seen = [], {}
        for lab, x in found:
            text = "PCL (full)" if lab == "full" else f"PCL {lab}"
            seen[text] = seen.get(text, 0) + 1
            out.append((text if seen[text] == 1 else f"{text} ({x})", x))
        # a label shared by several methods names the method on every row of that label
        dup = {lab for lab, n in seen.items() if n > 1}
        return [(f"{lab} ({x})" if lab in dup and not lab.endswith(f"({x})") else lab, x) for lab, x in out]

    def ablation_table(self) -> Table:
        rows = self.ablation_rows()
        extra = ["Rows: PCL variants, labelled by the switched-off parts recorded in each encoder's "
                 "method_info (pclbench.pretrain.methods.ablation_label; docs/method.md §5.1 lists the paper's ablations)."]
        if not any(lab != "PCL (full)" and not lab.startswith("PCL (full) (") for lab, _ in rows):
            extra.append("No ablation variant ran: add PCL variants (e.g. pcl_wo_pdd, config section variants) "
                         "to workflow.methods to fill this table.")
        return self._primary_table("ablation", f"Ablation: PCL variants ({self.cfg.primary_readout} readout)", rows,
                                   extra)

    def metrics_json(self) -> dict[str, float]:
        """Flat ``method/benchmark/metric -> mean`` of every primary metric (primary readout)."""
        out = {}
        for (x, b), p in self.probes.items():
            s = probe_stat(p, self.cfg.primary_readout, self.primary_metric(b))
            if s is not None and s.mean is not None:
                out[f"{x}/{b}/{self.primary_metric(b)}"] = s.mean
        return out


def table_names(tasks: Iterable[str]) -> list[str]:
    """Base names of every table file the tables stage writes for ``tasks`` (for the workflow)."""
    names = []
    for t in tasks:
        names += [t, f"{t}_readouts"]
    return names + ["ablation", "summary"]


def build_tables(probes: Sequence[Mapping], out_dir: Path | str, config: Mapping,
                 not_run: Mapping[str, str] | None = None, published: Published | None = None,
                 metrics_json: Path | str | None = None) -> list[Path]:
    """Write every table into ``out_dir`` (and the flat metrics JSON); returns the written paths.

    ``config`` holds the sections ``tables`` and, for the row / column order and the task of a
    benchmark without results, ``workflow`` and ``benchmarks``. Methods come from
    ``workflow.methods`` then the results; benchmarks from ``workflow.benchmarks``, the results and
    ``not_run``. ``published`` defaults to ``tables.published`` read from disk.
    """
    if published is None:
        published = load_published(config["tables"]["published"])
    comp = Comparison(probes, config, not_run, published)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for task in comp.tasks:
        written += write_table(comp.task_table(task), out_dir)
        written += write_table(comp.readouts_table(task), out_dir)
    written += write_table(comp.ablation_table(), out_dir)
    written += write_table(comp.summary_table(), out_dir, ("md", "csv", "html"))
    if metrics_json is not None:
        written.append(_write_atomic(Path(metrics_json), json.dumps(comp.metrics_json(), indent=2, sort_keys=True)
                                     + "\n"))
    return written
