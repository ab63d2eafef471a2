"""No import cycle in the package: the stages' dependencies point one way (docs/architecture.md
"Package layout"). Built from the source text with ``ast`` (every import statement that runs, at module
level and inside functions; not those under ``if TYPE_CHECKING:``, which only a type checker reads:
typing docs, ``typing.TYPE_CHECKING``), independently of the modules' own idea of their dependencies."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package modules it imports. ``from a.b import c`` is an edge to ``a.b.c`` when that is a
    module (a submodule import), else to ``a.b``; relative imports are resolved against the importer."""
    mods = module_names(root)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods if m.split(".")[0] == package}
    for m in graph:
        f = mods[m]
        here = m if f.name == "__init__.py" else m.rpartition(".")[0]
        tree = ast.parse(f.read_text(), str(f))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                k = known(t)
                if k and k != m and k in graph:
                    graph[m].add(k)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_cycle_finder_on_known_graphs(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p import b\n")
    (pkg / "b.py").write_text("def f():\n    from p.a import x\n")  # a lazy import closes a cycle too
    (pkg / "c.py").write_text("import p.a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from .d import y\n")
    (pkg / "sub" / "d.py").write_text("from p.sub import e\n")  # a submodule import: an edge to p.sub.e only
    (pkg / "sub" / "e.py").write_text("")
    g = import_graph(tmp_path, "p")
    assert g["p.sub"] == {"p.sub.d"} and g["p.sub.d"] == {"p.sub.e"} and g["p.c"] == {"p.a"}
    assert cycles(g) == [["p.a", "p.b"]]


def test_no_import_cycle_in_pclbench():
    found = cycles(import_graph(SRC, "pclbench"))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
