"""The paper's comparison tables from probe results (architecture.md stage 6; docs/method.md §5).

Input: probe results in the contract of docs/architecture.md (:mod:`pclbench.report.results`: one JSON
per (method, benchmark) with every readout x seed inside: ``summary[readout][metric] = {mean, std, n}``,
``std_over``, ``primary_metric``, ``protocol``, ``method_info``), the published numbers of
``config/published_results.yaml`` (:mod:`pclbench.report.published`) and the benchmarks that did not
run (with the reason). :class:`Comparison` arranges them as methods x benchmarks; the table builders
below turn it into :class:`pclbench.report.render.Table` s, written in four formats.

Output, per task (``<task>.{md,csv,tex,html}``): rows = methods at the primary readout, columns = the
benchmarks of the task x the configured metrics; a cell is the reproduced mean +- std (n), next to it
the published number where ``published_results.yaml`` has the same method and benchmark, and the
difference (reproduced - published); the first row, ``trivial predictor``, is each benchmark's floor
from the labels alone (the probe result's ``trivial``, :func:`pclbench.evaluate.expression.trivial` and
its peers; the summary has it too). ``<task>_readouts.*``: every (method, readout) row x each
benchmark's primary metric (the task's own declaration, :func:`pclbench.evaluate.primary_metric`),
i.e. what disentanglement buys per task. ``ablation.*``: the PCL variants
(``method_info.ablation``, :func:`pclbench.pretrain.methods.ablation_label`) x every benchmark's primary metric.
``disentanglement.*``: the face head vs the pose head per benchmark, the paper's claim measured
(:mod:`pclbench.report.disentanglement`). ``summary.{md,csv,html}`` and a flat ``metrics.json``
(``method/benchmark/metric -> mean``, for ``dvc metrics``). A benchmark that did not run is written
``not run`` with its reason as a note; an undefined value ``n/a``; a published cell nobody transcribed
stays empty -- never a made-up number. Every table carries its protocol notes (clean/paper protocol,
faithful/fixed variant, readout, what the std is over, the published sources).
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from pclbench.core.config import ConfigError, from_dict, setting
from pclbench.report.disentanglement import disentanglement_table
from pclbench.report.published import Published, PublishedRow, load_published
from pclbench.report.render import Row, Table, latex_escape, write_atomic, write_table
from pclbench.report.results import (NO_VALUE, NOT_RUN, UNDEFINED, Stat, ablation_of, lower_is_better,
                                     metric_label, normalise_probe, probe_stat, variant_text)

TASK_ORDER = ("expression", "verification", "au", "pose")


@dataclass
class TablesConfig:
    """Stage 6 comparison tables."""

    primary_readout: Literal["trunk", "face", "pose", "concat"] = setting(
        "Readout of the main tables, summary, ablation table and metrics.json (trunk = the authors' choice).")
    decimals: int = setting("Digits after the decimal point.", minimum=0, maximum=6)
    metrics: dict[str, list[str]] = setting("Task -> metric keys shown per benchmark in the task's main table.",
                                            additionalProperties={"items": {"pattern": "^[A-Za-z0-9_]+$"}})
    published: str = setting("Path of the published-results YAML (relative: to the working directory).",
                             minLength=1)


def _fmt(v: float, d: int, sign: bool = False) -> str:
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def _names(section: Any) -> list[str]:
    if isinstance(section, dict):
        return [str(k) for k in section]
    if isinstance(section, list):
        return [str(m["name"]) if isinstance(m, dict) and "name" in m else str(m) for m in section]
    return []


class Comparison:
    """Probe results + published numbers + not-run benchmarks, arranged as methods x benchmarks."""

    def __init__(self, probes: Sequence[Mapping], config: Mapping, not_run: Mapping[str, str] | None = None,
                 published: Published | None = None):
        self.cfg = from_dict(TablesConfig, config["tables"], "tables")
        self.published = published or Published({}, [])
        self.not_run = dict(not_run or {})
        self.probes = self._index(probes)
        wf = config.get("workflow") if isinstance(config.get("workflow"), Mapping) else {}
        bench_cfg = config.get("benchmarks") if isinstance(config.get("benchmarks"), Mapping) else {}
        self.methods = list(OrderedDict.fromkeys([*_names(wf.get("methods")), *(m for m, _ in self.probes)]))
        self.benchmarks = list(OrderedDict.fromkeys([*_names(wf.get("benchmarks")), *(b for _, b in self.probes),
                                                    *self.not_run]))
        self.task_of = {b: self._task(b, bench_cfg) for b in self.benchmarks}
        self.tasks = sorted(set(self.task_of.values()),
                            key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))
        for b, reason in self.not_run.items():
            if any(pb == b for _, pb in self.probes):
                raise ValueError(f"benchmark {b!r} is marked not run ({reason}) but has probe results")

    @staticmethod
    def _index(probes: Sequence[Mapping]) -> "OrderedDict[tuple[str, str], dict]":
        """(method, benchmark) -> the checked probe result; two results for one key are an error."""
        out: "OrderedDict[tuple[str, str], dict]" = OrderedDict()
        for p in probes:
            p = normalise_probe(p, p.get("source") if isinstance(p, Mapping) else None)
            key = (p["method"], p["benchmark"])
            if key in out:
                raise ValueError(f"two probe results for method {key[0]!r} x benchmark {key[1]!r} "
                                 f"({out[key].get('source', '?')} and {p.get('source', '?')})")
            out[key] = p
        return out

    def _task(self, b: str, bench_cfg: Mapping) -> str:
        """Task of benchmark ``b``: its results' task, else its entry under ``benchmarks``."""
        from_probe = next((p["task"] for (m, pb), p in self.probes.items() if pb == b), None)
        task = from_probe or (bench_cfg.get(b) or {}).get("task")
        if task is None:
            raise ConfigError(f"benchmark {b!r} has no probe result and no entry under benchmarks: its task "
                              f"is unknown (pass the config section 'benchmarks')")
        return str(task)

    # -- per benchmark ---------------------------------------------------------------------------
    def bench_probes(self, b: str) -> list[dict]:
        return [p for (m, pb), p in self.probes.items() if pb == b]

    def primary_metric(self, b: str) -> str:
        """The primary metric of ``b``'s task, as the task declares it (:func:`pclbench.evaluate.primary_metric`,
        the same declaration the probe results record as ``primary_metric``)."""
        from pclbench.evaluate import primary_metric  # the task modules (torch): only when a table is built

        return primary_metric(self.task_of[b])[0]

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
        """Higher is better for ``metric`` of ``b``: the task's declaration for its primary metric, else
        errors (MAE) are lower (:func:`pclbench.report.results.lower_is_better`)."""
        from pclbench.evaluate import primary_metric

        primary, higher = primary_metric(self.task_of[b])
        return higher if metric == primary else not lower_is_better(metric)

    def readouts(self, method: str, b: str) -> list[str]:
        p = self.probes.get((method, b))
        return [str(r) for r in (p.get("summary") or {})] if p else []

    def arrow(self, b: str, metric: str) -> str:
        return "↑" if self.direction(b, metric) else "↓"

    # -- notes -------------------------------------------------------------------------------------
    def _marker(self, b: str) -> str:
        return f"[{chr(ord('a') + list(self.not_run).index(b))}]"

    def _not_run_cell(self, b: str) -> str:
        return f"{NOT_RUN} {self._marker(b)}" if b in self.not_run else NOT_RUN

    def notes(self, benchmarks: Sequence[str], methods: Sequence[str], readout: str | None,
              pub_rows: Sequence[PublishedRow] = (), extra: Sequence[str] = ()) -> list[str]:
        """A table's numbered notes: ``extra``, the not-run reasons, what the cells are, the readout,
        each method's protocol and variant, the published sources and protocols."""
        notes = list(extra)
        notes += [f"{self._marker(b)} {b}: {NOT_RUN} -- {self.not_run[b]}" for b in benchmarks if b in self.not_run]
        ran = [b for b in benchmarks if b not in self.not_run]
        gaps = [f"{m} x {b}" for b in ran for m in methods if (m, b) not in self.probes]
        if gaps:
            notes.append(f"{NOT_RUN} (no letter) = the benchmark ran but this method has no probe result: "
                         + ", ".join(gaps) + ".")
        if ran:
            notes.append("Cells: mean ± sample std (n) of our runs; " + "; ".join(map(self._spread, ran)) + ".")
        if readout is not None:
            notes.append(f"Readout: {readout} (trunk = the shared trunk, what the authors' code reads, "
                         "docs/method.md §6.1 item 2; face = F_f; pose = F_p; concat = [F_f, F_p]).")
        notes += self._protocol_note(benchmarks, methods)
        if pub_rows:
            notes += self._published_notes(pub_rows)
        return notes

    def _spread(self, b: str) -> str:
        """What the std of ``b``'s cells is over (seeds, with their values, or folds)."""
        ps = self.bench_probes(b)
        over = sorted({str(p.get("std_over", "seeds")) for p in ps}) or ["seeds"]
        seeds = sorted({str(s) for p in ps for s in (p.get("seeds") or []) if s is not None})
        return f"{b}: std over {'/'.join(over)}" + (f" (seeds {', '.join(seeds)})" if seeds and
                                                     over == ["seeds"] else "")

    def _protocol_note(self, benchmarks: Sequence[str], methods: Sequence[str]) -> list[str]:
        """One note naming every method's probe protocol(s) and encoder variant (empty without results)."""
        prot = OrderedDict()
        for m in methods:
            ps = [self.probes[(m, b)] for b in benchmarks if (m, b) in self.probes]
            if not ps:
                continue
            protocols = sorted({str(p.get("protocol", "?")) for p in ps})
            prot[m] = f"{m}: protocol {'/'.join(protocols)}; {variant_text(ps[0])}"
        if not prot:
            return []
        return ["Protocol (clean = selection on a validation split of the training data; paper = the "
                "authors' best-test-epoch selection, docs/method.md §6.1 item 1) and method variant: "
                + " | ".join(prot.values()) + "."]

    def _published_notes(self, pub_rows: Sequence[PublishedRow]) -> list[str]:
        """The sources and protocols of the published rows shown, and what Δ and an empty cell mean."""
        notes = []
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

    # -- cells -------------------------------------------------------------------------------------
    def cell(self, x: str, b: str, ro: str, m: str) -> tuple[str, str, dict[str, Any], Stat | None]:
        """Method ``x``'s cell for benchmark ``b``, readout ``ro``, metric ``m``: (Markdown text, LaTeX
        text, CSV columns ``b:m``, ``b:m:std``, ``b:m:n``, the value): the value, "not run" or undefined."""
        d = self.cfg.decimals
        p = self.probes.get((x, b))
        s = probe_stat(p, ro, m) if p is not None else None
        if p is None:  # a benchmark marked not run has no results (checked in __init__)
            c = self._not_run_cell(b)
            return c, latex_escape(c), {f"{b}:{m}": NOT_RUN}, None
        if s is None:
            return UNDEFINED, UNDEFINED, {f"{b}:{m}": UNDEFINED}, None
        return s.text(d), s.text(d, latex=True), {f"{b}:{m}": repr(s.mean) if s.mean is not None else UNDEFINED,
                                                 f"{b}:{m}:std": repr(s.std) if s.std is not None else "",
                                                 f"{b}:{m}:n": s.n}, s


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------
Column = tuple[str, str, str]  # (benchmark, metric, kind); kind: ours | published | delta


def _task_columns(comp: Comparison, benches: Sequence[str]) -> tuple[list[Column], list[tuple[str, int]]]:
    """The main table's sub-columns per benchmark (each metric; its published value and the difference
    where published numbers exist) and the header groups."""
    cols: list[Column] = []
    groups: list[tuple[str, int]] = []
    for b in benches:
        n0 = len(cols)
        for m in comp.metrics_of(b):
            cols.append((b, m, "ours"))
            if comp.published.has(b, m):
                cols.append((b, m, "published"))
                # a difference only where one of our rows has a matching published number
                if any((b, m) in r.values for x in comp.methods for r in comp.published.for_method(x)):
                    cols.append((b, m, "delta"))
        groups.append((b, len(cols) - n0))
    return cols, groups


def _column_heads(comp: Comparison, cols: Sequence[Column]) -> tuple[list[str], list[str]]:
    """(sub-column labels, CSV header) of the main table's columns."""
    labels, header = [], ["method", "kind", "readout"]
    for b, m, kind in cols:
        labels.append({"ours": f"{metric_label(m)} {comp.arrow(b, m)}", "published": f"{metric_label(m)} published",
                       "delta": f"{metric_label(m)} Δ"}[kind])
        base = f"{b}:{m}"
        header += {"ours": [base, f"{base}:std", f"{base}:n"], "published": [f"{base}:published"],
                   "delta": [f"{base}:difference"]}[kind]
    return labels, header


def _best(comp: Comparison, cols: Sequence[Column]) -> dict[tuple[str, str], float]:
    """(benchmark, metric) -> the best reproduced mean of a column with more than one value (bold)."""
    best = {}
    for b, m, kind in cols:
        if kind == "ours":
            vals = [s.mean for x in comp.methods if (x, b) in comp.probes
                    for s in [probe_stat(comp.probes[(x, b)], comp.cfg.primary_readout, m)]
                    if s is not None and s.mean is not None]
            if len(vals) > 1:
                best[(b, m)] = max(vals) if comp.direction(b, m) else min(vals)
    return best


def _method_row(comp: Comparison, x: str, cols: Sequence[Column], best: Mapping[tuple[str, str], float],
                used_pub: list[PublishedRow]) -> Row:
    """Method ``x``'s row of the main table: reproduced cells, published values, differences; the
    published rows it uses are appended to ``used_pub``."""
    d, ro = comp.cfg.decimals, comp.cfg.primary_readout
    cells, tex, bold, row_csv = [], [], [], {"method": x, "kind": "reproduced", "readout": ro}
    pubs = comp.published.for_method(x)
    for b, m, kind in cols:
        base = f"{b}:{m}"
        pub = next(((r.values[(b, m)], r) for r in pubs if (b, m) in r.values), None)
        if kind == "ours":
            c, t, c_csv, s = comp.cell(x, b, ro, m)
            cells.append(c), tex.append(t), row_csv.update(c_csv)
            bold.append(s is not None and s.mean is not None and best.get((b, m)) == s.mean)
        elif kind == "published":
            c = _fmt(pub[0][0], d) if pub else ""
            cells.append(c), tex.append(c), bold.append(False)
            row_csv[f"{base}:published"] = repr(pub[0][0]) if pub else ""
            if pub and pub[1] not in used_pub:
                used_pub.append(pub[1])
        else:
            p = comp.probes.get((x, b))
            s = probe_stat(p, ro, m) if p is not None else None
            ok = pub is not None and s is not None and s.mean is not None
            c = _fmt(s.mean - pub[0][0], d, sign=True) if ok else ""
            cells.append(c), tex.append(c.replace("-", "$-$") if c.startswith("-") else c), bold.append(False)
            row_csv[f"{base}:difference"] = repr(s.mean - pub[0][0]) if ok else ""
    return Row(x, cells, tex, bold, row_csv)


def _published_only_rows(comp: Comparison, cols: Sequence[Column], used_pub: list[PublishedRow]) -> list[Row]:
    """Published rows that match none of our methods, shown on their own below ours (appended to
    ``used_pub``)."""
    rows = []
    for r in comp.published.rows:
        if any(x in comp.methods for x in r.matches):
            continue
        if not any((b, m) in r.values for b, m, kind in cols if kind == "published"):
            continue
        used_pub.append(r)
        cells, row_csv = [], {"method": f"{r.name} (published)", "kind": "published", "readout": ""}
        for b, m, kind in cols:
            if kind == "published" and (b, m) in r.values:
                cells.append(_fmt(r.values[(b, m)][0], comp.cfg.decimals))
                row_csv[f"{b}:{m}:published"] = repr(r.values[(b, m)][0])
            else:
                cells.append(NO_VALUE if kind == "ours" else "")
        rows.append(Row(f"{r.name} (published)", cells, [latex_escape(c) for c in cells], [False] * len(cells),
                        row_csv))
    return rows


TRIVIAL_LABEL = "trivial predictor"
TRIVIAL_NOTE = (f"{TRIVIAL_LABEL} = the task's floor from the labels alone, on the same test data with the same "
                "metric code as the probes (pclbench.evaluate.<task>.trivial), deterministic (no ±): expression "
                "= the majority class of the training labels for every test image (chance = 1/K is recorded "
                "beside it in the results); verification = per fold, the majority answer (same/different) of "
                "the other folds' pairs, 50 % (chance) for a fold whose training folds are balanced; AU = "
                "every AU predicted present (all-positive), F1 on the pooled folds; pose = the training set's "
                f"mean yaw/pitch/roll for every test image. {UNDEFINED} = the results predate the floor.")


def _trivial_value(comp: Comparison, b: str, m: str) -> float | None:
    """Benchmark ``b``'s label-only floor for metric ``m`` (probe result key ``trivial``, the same in
    every method's result of ``b``: the first that has it); None when no result records it."""
    for p in comp.bench_probes(b):
        triv = p.get("trivial")
        if isinstance(triv, Mapping) and isinstance(triv.get("metrics"), Mapping):
            v = triv["metrics"].get(m)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            return float(v) if ok else None  # null (undefined F1) -> n/a
    return None


def _trivial_row(comp: Comparison, cells_of: Sequence[tuple[str, str, str]], row_csv: dict[str, Any]) -> Row:
    """The first row of a table: the floor of each (benchmark, metric, kind) column (kind ``ours``;
    published / difference columns stay empty), ``not run`` for a benchmark that did not run."""
    d = comp.cfg.decimals
    cells, tex = [], []
    for b, m, kind in cells_of:
        if kind != "ours":
            c = t = ""
        elif b in comp.not_run:
            c = comp._not_run_cell(b)
            t = latex_escape(c)
            row_csv[f"{b}:{m}"] = NOT_RUN
        else:
            v = _trivial_value(comp, b, m)
            c = t = _fmt(v, d) if v is not None else UNDEFINED
            row_csv.update({f"{b}:{m}": repr(v) if v is not None else UNDEFINED, f"{b}:{m}:std": "",
                            f"{b}:{m}:n": ""})
        cells.append(c), tex.append(t)
    return Row(TRIVIAL_LABEL, cells, tex, [False] * len(cells), row_csv)


def task_table(comp: Comparison, task: str) -> Table:
    """Main table of ``task``: methods (primary readout) x benchmarks x metrics, with published."""
    ro = comp.cfg.primary_readout
    benches = [b for b in comp.benchmarks if comp.task_of[b] == task]
    cols, groups = _task_columns(comp, benches)
    labels, header = _column_heads(comp, cols)
    t = Table(task, f"{task}: reproduced vs published ({ro} readout)", groups, labels)
    t.csv_header = header
    best = _best(comp, cols)
    used_pub: list[PublishedRow] = []
    t.rows = [_method_row(comp, x, cols, best, used_pub) for x in comp.methods]
    t.rows += _published_only_rows(comp, cols, used_pub)
    extra = ["Bold = best reproduced value in a column (↑ higher is better, ↓ lower is better)."]
    t.notes = comp.notes(benches, comp.methods, ro, used_pub, extra)
    # the floor: a first row and a last note (the other rows and notes keep their text and numbers)
    t.rows.insert(0, _trivial_row(comp, cols, {"method": TRIVIAL_LABEL, "kind": "trivial", "readout": ""}))
    t.notes.append(TRIVIAL_NOTE)
    return t


def _cells_row(comp: Comparison, label: str, x: str, benches: Sequence[str], ro: str,
               row_csv: dict[str, Any]) -> Row:
    """Row ``label`` of method ``x``: each benchmark's primary metric at readout ``ro``, no bold."""
    cells, tex = [], []
    for b in benches:
        c, t, c_csv, _ = comp.cell(x, b, ro, comp.primary_metric(b))
        cells.append(c), tex.append(t), row_csv.update(c_csv)
    return Row(label, cells, tex, [False] * len(cells), row_csv)


def _primary_heads(comp: Comparison, benches: Sequence[str], key_columns: list[str]) -> tuple[list[str], list[str]]:
    """(sub-column labels, CSV header) of one column per benchmark: its primary metric."""
    prim = {b: comp.primary_metric(b) for b in benches}
    labels = [f"{metric_label(prim[b])} {comp.arrow(b, prim[b])}" for b in benches]
    return labels, key_columns + [h for b in benches for h in (f"{b}:{prim[b]}", f"{b}:{prim[b]}:std",
                                                               f"{b}:{prim[b]}:n")]


def readouts_table(comp: Comparison, task: str) -> Table:
    """Every (method, readout) x each benchmark's primary metric: what each readout buys."""
    benches = [b for b in comp.benchmarks if comp.task_of[b] == task]
    labels, header = _primary_heads(comp, benches, ["method", "readout"])
    t = Table(f"{task}_readouts", f"{task}: every readout (primary metric per benchmark)",
              [(b, 1) for b in benches], labels)
    t.csv_header = header
    for x in comp.methods:
        readouts = list(OrderedDict.fromkeys(r for b in benches for r in comp.readouts(x, b))) or [
            comp.cfg.primary_readout]
        t.rows += [_cells_row(comp, f"{x} [{ro}]", x, benches, ro, {"method": x, "readout": ro}) for ro in readouts]
    t.notes = comp.notes(benches, comp.methods, None, (), [
        "Rows: method [readout]; n/a = the readout was not probed for this benchmark."])
    return t


def _primary_table(comp: Comparison, name: str, title: str, rows: Sequence[tuple[str, str]],
                   extra: Sequence[str]) -> Table:
    """Rows (label, method) x every benchmark's primary metric at the primary readout."""
    ro, benches = comp.cfg.primary_readout, comp.benchmarks
    labels, header = _primary_heads(comp, benches, ["method", "label"])
    t = Table(name, title, [(b, 1) for b in benches], labels)
    t.csv_header = header
    t.rows = [_cells_row(comp, label, x, benches, ro, {"method": x, "label": label}) for label, x in rows]
    t.notes = comp.notes(benches, [x for _, x in rows], ro, (), extra)
    return t


def summary_table(comp: Comparison) -> Table:
    t = _primary_table(comp, "summary", f"Summary: primary metric per benchmark ({comp.cfg.primary_readout} "
                       "readout)", [(x, x) for x in comp.methods],
                       ["One column per benchmark: its primary metric; the task tables have the rest."])
    # the floor: a first row and a last note (the other rows and notes keep their text and numbers)
    cols = [(b, comp.primary_metric(b), "ours") for b in comp.benchmarks]
    t.rows.insert(0, _trivial_row(comp, cols, {"method": TRIVIAL_LABEL, "label": TRIVIAL_LABEL}))
    t.notes.append(TRIVIAL_NOTE)
    return t


def ablation_rows(comp: Comparison) -> list[tuple[str, str]]:
    """(label, method) of the methods whose results record a PCL ablation label; full PCL first."""
    found = []
    for x in comp.methods:
        labels = [ablation_of(p) for (m, _), p in comp.probes.items() if m == x]
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


def ablation_table(comp: Comparison) -> Table:
    rows = ablation_rows(comp)
    extra = ["Rows: PCL variants, labelled by the switched-off parts recorded in each encoder's method_info "
             "(pclbench.pretrain.methods.ablation_label; docs/method.md §5.1 lists the paper's ablations)."]
    if not any(lab != "PCL (full)" and not lab.startswith("PCL (full) (") for lab, _ in rows):
        extra.append("No ablation variant ran: add PCL variants (e.g. pcl_wo_pdd, config section variants) "
                     "to workflow.methods to fill this table.")
    return _primary_table(comp, "ablation", f"Ablation: PCL variants ({comp.cfg.primary_readout} readout)", rows,
                          extra)


def flat_metrics(comp: Comparison) -> dict[str, float]:
    """Flat ``method/benchmark/metric -> mean`` of every primary metric (primary readout)."""
    out = {}
    for (x, b), p in comp.probes.items():
        s = probe_stat(p, comp.cfg.primary_readout, comp.primary_metric(b))
        if s is not None and s.mean is not None:
            out[f"{x}/{b}/{comp.primary_metric(b)}"] = s.mean
    return out


def table_names(tasks: Iterable[str]) -> list[str]:
    """Base names of every table file the tables stage writes for ``tasks`` (for the workflow)."""
    names = []
    for t in tasks:
        names += [t, f"{t}_readouts"]
    return names + ["ablation", "summary", "disentanglement"]


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
        written += write_table(task_table(comp, task), out_dir)
        written += write_table(readouts_table(comp, task), out_dir)
    written += write_table(ablation_table(comp), out_dir)
    written += write_table(summary_table(comp), out_dir, ("md", "csv", "html"))
    written += write_table(disentanglement_table(comp), out_dir)
    if metrics_json is not None:
        written.append(write_atomic(Path(metrics_json), json.dumps(flat_metrics(comp), indent=2, sort_keys=True)
                                    + "\n"))
    return written
