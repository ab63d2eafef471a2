"""One rendered table and its four formats: Markdown, LaTeX (booktabs), standalone HTML, CSV.

A :class:`Table` is header groups (a benchmark and its sub-columns), sub-column labels, rows of text
cells (Markdown/HTML text, LaTeX text, bold marks, CSV values) and numbered notes; the comparison
tables (:mod:`pclbench.report.tables`) build them, :func:`write_table` writes each format atomically.
The renderers are hand-written: pandas' ``Styler.to_latex`` / ``to_html`` / ``DataFrame.to_markdown``
do not give these files byte for byte (two-level headers with ``cmidrule``, the notes block, bold
cells, the inline-styled HTML page), and the tables must not change.
"""
from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


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


def write_atomic(path: Path, text: str) -> Path:
    from pclbench.core.io import atomic_write_text  # temp removed on error, dead writers' leftovers on the next write

    atomic_write_text(path, text)
    return path


def write_table(t: Table, out_dir: Path, formats: Sequence[str] = ("md", "csv", "tex", "html")) -> list[Path]:
    render = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}
    return [write_atomic(out_dir / f"{t.name}.{ext}", render[ext](t)) for ext in formats]

