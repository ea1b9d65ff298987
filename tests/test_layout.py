"""The package's layout: nothing below ``cli/`` imports ``cli/``, and no import cycles.

Reads every module's imports with ``ast`` (top-level and inside functions, since the
package imports heavy modules lazily), so a lazy import that closes a cycle counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import maskwatch

SRC = Path(maskwatch.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ("maskwatch", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the maskwatch modules it imports (a package import counts as its
    ``__init__``, ``from pkg import mod`` as ``pkg.mod`` when that is a module)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a module to its own package's ``__init__``: importing
    ``pkg.mod`` runs ``pkg/__init__`` first anyway, so such an edge is no design choice
    (timm's model modules import their package's registry the same way)."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_nothing_below_cli_imports_cli():
    graph = _imports()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if not m.startswith(
        "maskwatch.cli") and m != "maskwatch.__main__" for d in deps
        if d.startswith("maskwatch.cli"))
    assert upward == []


def test_no_import_cycles():
    assert _cycles(_without_package_parents(_imports())) == []


def test_readme_layout_names_every_module_and_package():
    """README's layout section lists every package and top-level module of src/maskwatch,
    and every module of training/ (the one package it details file by file)."""
    readme = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    names = [f"{p.name}/" for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"]
    names += [p.name for p in SRC.glob("*.py") if not p.name.startswith("__")]
    names += [p.name for p in (SRC / "training").glob("*.py") if not p.name.startswith("__")]
    assert [n for n in sorted(names) if n not in section] == []


def test_the_checks_see_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
