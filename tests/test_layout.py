"""The layering of docs/ARCHITECTURE.md, checked on the AST import graph (imports at module level and inside
functions alike): no cycle, no back arrow, small modules, a small core."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "colq_sweep"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the colq_sweep modules it imports (a `from pkg import name` of a submodule counts as that module)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_no_back_arrows():
    def inside(m: str, room: str) -> bool:
        return m == room or m.startswith(room + ".")

    bad = []
    for mod, deps in import_graph().items():
        for d in deps:
            if inside(mod, "colq_sweep.evaluate") and inside(d, "colq_sweep.track"):
                bad.append((mod, d))
            if mod == "colq_sweep.keys" and inside(d, "colq_sweep.quantize"):
                bad.append((mod, d))
            if inside(mod, "colq_sweep.launch") and inside(d, "colq_sweep.track"):
                bad.append((mod, d))
            if inside(d, "colq_sweep.fixtures") and not inside(mod, "colq_sweep.fixtures"):
                bad.append((mod, d))
            if mod in ("colq_sweep.contract", "colq_sweep.config.checks", "colq_sweep.fsio") and d.startswith("colq_sweep"):
                bad.append((mod, d))  # the bottom imports nothing of the package
    assert bad == []


def test_small_modules_and_a_small_core():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
    top = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 10, top


def test_the_graph_sees_function_level_imports():
    """A check that could not fail would be worthless: the graph does see an import inside a function."""
    graph = import_graph()
    assert "colq_sweep.pipeline.plan" in graph["colq_sweep.pipeline.job"]  # imported inside run_job
    assert "colq_sweep.evaluate.run" in graph["colq_sweep.pipeline.point"]  # imported inside _evaluate
