"""The disentanglement table: PCL's claim about its two heads, measured per benchmark.

The claim (docs/method.md §0 notation and §1.1; ../shared/docs/pcl-method.md, "exp" = face-aware
branch, "pose" = pose-related branch): the face-aware head F_f carries identity and expression and
not pose, the pose-related head F_p carries pose. The probes already read both heads separately
(readouts ``face`` and ``pose`` of the probe result contract, :mod:`pclbench.report.results`), so
the claim can be checked per benchmark on its primary metric (the task's own declaration,
:func:`pclbench.evaluate.primary_metric`):

- the task the claim assigns to the pose head is head pose (task ``pose``); every other task
  (expression, verification, AU) is assigned to the face head;
- Δ = the claimed head's advantage, in the metric's units and oriented so that Δ > 0 = the claim
  holds: for a higher-is-better metric Δ = claimed - other (expression, verification, AU:
  Δ = face - pose); for a lower-is-better one Δ = other - claimed (pose MAE: Δ = MAE(face) - MAE(pose),
  so Δ > 0 = the pose head estimates pose better and the face head carries less pose);
- its standard error SE = sqrt(s_f²/n_f + s_p²/n_p) from the two cells' sample std and n (the
  unpooled two-sample standard error, Welch's), n/a when a cell has n < 2 or no std; a cell is
  marked ``*`` when |Δ| > 2 SE. The std of a probe result is over probe seeds (or verification
  folds) of ONE pretrained encoder, so SE is the probe noise, not the pretraining noise.

Rows: one per method whose results have both the ``face`` and the ``pose`` readout on at least one
benchmark (a method without heads, e.g. a trunk-only baseline, is left out and named in a note); a
benchmark where such a method lacks one of the two readouts reads ``n/a``, a benchmark that did not
run reads ``not run`` with its reason, as in the other tables (:class:`pclbench.report.tables.Comparison`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from pclbench.report.render import Row, Table, latex_escape
from pclbench.report.results import UNDEFINED, Stat, metric_label, probe_stat

if TYPE_CHECKING:  # tables.py imports this module: the Comparison type only for the annotations
    from pclbench.report.tables import Comparison

HEADS = ("face", "pose")
POSE_TASK = "pose"  # the one task the claim assigns to the pose head F_p; every other task to F_f
MARK = "*"  # |Δ| > 2 SE


def claimed_head(task: str) -> str:
    """The head PCL's claim assigns ``task`` to: ``pose`` for head pose, ``face`` otherwise."""
    return "pose" if task == POSE_TASK else "face"


def claim_difference(face: Stat, pose: Stat, task: str, higher_is_better: bool) -> float | None:
    """Δ oriented so that Δ > 0 = the claimed head is better; None when a mean is undefined."""
    if face.mean is None or pose.mean is None:
        return None
    claimed, other = (pose.mean, face.mean) if claimed_head(task) == "pose" else (face.mean, pose.mean)
    return claimed - other if higher_is_better else other - claimed


def standard_error(face: Stat, pose: Stat) -> float | None:
    """sqrt(s_f²/n_f + s_p²/n_p) of two independent means; None without a sample std on both sides."""
    if face.std is None or pose.std is None or face.n < 2 or pose.n < 2:
        return None
    return math.sqrt(face.std ** 2 / face.n + pose.std ** 2 / pose.n)


def head_methods(comp: "Comparison") -> tuple[list[str], list[str]]:
    """(methods with both heads probed on at least one benchmark, the other methods that have results)."""
    with_heads, without = [], []
    for x in comp.methods:
        bs = [b for b in comp.benchmarks if (x, b) in comp.probes]
        if any(set(HEADS) <= set(comp.readouts(x, b)) for b in bs):
            with_heads.append(x)
        elif bs:
            without.append(x)
    return with_heads, without


def _benches(comp: "Comparison") -> list[str]:
    """Benchmarks grouped by task (the tables' task order), each task's in the comparison's order."""
    return [b for t in comp.tasks for b in comp.benchmarks if comp.task_of[b] == t]


def _difference_cells(comp: "Comparison", x: str, b: str, m: str) -> tuple[str, str, dict[str, Any]]:
    """(Markdown, LaTeX, CSV columns) of method ``x``'s Δ ± SE cell for benchmark ``b``."""
    d, base = comp.cfg.decimals, f"{b}:{m}:difference"
    p = comp.probes.get((x, b))
    if p is None:  # not run: the face / pose cells carry the marker and the reason
        return "", "", {base: "", f"{base}:se": "", f"{base}:gt_2se": ""}
    face, pose = probe_stat(p, "face", m), probe_stat(p, "pose", m)
    diff = se = None
    if face is not None and pose is not None:
        diff = claim_difference(face, pose, comp.task_of[b], comp.direction(b, m))
        se = standard_error(face, pose) if diff is not None else None
    if diff is None:
        return UNDEFINED, UNDEFINED, {base: UNDEFINED, f"{base}:se": "", f"{base}:gt_2se": ""}
    marked = se is not None and abs(diff) > 2 * se
    text = f"{diff:+.{d}f} ± {se:.{d}f}" if se is not None else f"{diff:+.{d}f} ± {UNDEFINED}"
    text += f" {MARK}" if marked else ""
    tex = latex_escape(text)
    tex = "$-$" + tex[1:] if tex.startswith("-") else tex  # as the main tables' Δ cells
    return text, tex, {base: repr(diff), f"{base}:se": repr(se) if se is not None else "",
                       f"{base}:gt_2se": ("yes" if marked else "no") if se is not None else ""}


def disentanglement_table(comp: "Comparison") -> Table:
    """Methods with face and pose heads x benchmarks: primary metric from F_f, from F_p, Δ ± SE."""
    benches = _benches(comp)
    rows_of, left_out = head_methods(comp)
    prim = {b: comp.primary_metric(b) for b in benches}
    labels, header = [], ["method"]
    for b in benches:
        m, arrow = prim[b], comp.arrow(b, prim[b])
        labels += [f"{metric_label(m)} face {arrow}", f"{metric_label(m)} pose {arrow}",
                   f"Δ (claim: {claimed_head(comp.task_of[b])}) ± SE"]
        header += [f"{b}:{m}:{h}{s}" for h in HEADS for s in ("", ":std", ":n")]
        header += [f"{b}:{m}:difference", f"{b}:{m}:difference:se", f"{b}:{m}:difference:gt_2se"]
    t = Table("disentanglement", "Disentanglement: face head F_f vs pose head F_p (primary metric per benchmark)",
              [(b, 3) for b in benches], labels)
    t.csv_header = header
    for x in rows_of:
        cells, tex, row_csv = [], [], {"method": x}
        for b in benches:
            m = prim[b]
            for h in HEADS:
                c, tx, c_csv, _ = comp.cell(x, b, h, m)
                cells.append(c), tex.append(tx)
                row_csv.update({k.replace(f"{b}:{m}", f"{b}:{m}:{h}", 1): v for k, v in c_csv.items()})
            c, tx, c_csv = _difference_cells(comp, x, b, m)
            cells.append(c), tex.append(tx), row_csv.update(c_csv)
        t.rows.append(Row(x, cells, tex, [False] * len(cells), row_csv))
    t.notes = comp.notes(benches, rows_of, None, (), _claim_notes(left_out))
    return t


def _claim_notes(left_out: Sequence[str]) -> list[str]:
    return [
        "The claim (PCL, CVPR 2023; docs/method.md §1.1): the face-aware head F_f carries identity and "
        "expression and not pose; the pose-related head F_p carries pose. Columns per benchmark: its primary "
        "metric probed on F_f (face), on F_p (pose), and Δ.",
        "Δ = the advantage of the head the claim assigns the task to, oriented so that Δ > 0 = the claim "
        "holds. Head pose (lower MAE is better): Δ = MAE(face) - MAE(pose), Δ > 0 = the pose head is better "
        "at pose (MAE_pose < MAE_face). Expression, verification, AU (higher is better): Δ = face - pose, "
        "Δ > 0 = the face head is better.",
        f"± after Δ = its standard error SE = sqrt(s_f²/n_f + s_p²/n_p) from the two cells' sample std and n "
        f"(n/a when a cell has n < 2); {MARK} = |Δ| > 2 SE (the two-standard-error rule, about a 95% normal "
        "interval, no correction for the number of columns; SE = 0, i.e. every probe seed gave the same "
        "value, marks any Δ ≠ 0). Probe seeds (verification: folds) on one pretrained encoder are the only "
        "replication: SE is the probe noise, not the pretraining noise.",
        "Rows: methods with both the face and the pose readout probed on at least one benchmark; n/a = this "
        "readout was not probed for this benchmark. Left out (no face/pose heads probed): "
        + (", ".join(left_out) if left_out else "none") + ".",
    ]
