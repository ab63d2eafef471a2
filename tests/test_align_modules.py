"""The split align package: imports go one way (no cycle among pclbench.align's modules), and the
steps below the stage entry never import it (its config dataclasses reach them as arguments).

Reference: the import statements themselves, read with ``ast`` (every import, at any depth: module
level, inside functions, under ``if TYPE_CHECKING``), not the modules' own claims.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ALIGN = SRC / "pclbench" / "align"


def _imports(path: Path) -> set[str]:
    """The pclbench.align modules that ``path`` imports (``from pclbench.align import x`` counts as x)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["pclbench", "align"] and len(parts) >= 3 and (ALIGN / f"{parts[2]}.py").is_file():
                out.add(parts[2])
    out.discard(path.stem)
    return out


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in ALIGN.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycle_among_align_modules():
    graph = _graph()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_steps_do_not_import_the_stage_entry():
    graph = _graph()
    assert {"geometry", "images", "warp", "rejection", "chunks", "workdir", "qc", "contact_sheet", "landmarks",
            "pts", "shards"} <= set(graph)
    assert [m for m, deps in graph.items() if "aligner" in deps] == []
    # the hand-written expectation of the layering: .pts files and shards need no other align module
    assert graph["pts"] == set() and graph["shards"] == set()
    assert graph["geometry"] == {"landmarks"}
