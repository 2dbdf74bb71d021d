"""No import circles among the project's modules, whether the imports sit at module level or inside
functions (an import inside a function that only dodges a circle is still a circle), checked with ast.

A module's edges are every `import x.y` / `from x.y import z` naming a project module (`z` counts as
the module x.y.z when that file exists). `__main__.py` files are programs, never imported.
"""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("model", "curation", "captioning", "shards", "training", "vidcurate")


def modules(repo: str) -> dict[str, str]:
    """module name -> file of every library module of the project."""
    out = {}
    for pkg in PROJECT:
        for dirpath, _, files in os.walk(os.path.join(repo, pkg)):
            for f in files:
                if f.endswith(".py") and f != "__main__.py":
                    rel = os.path.relpath(os.path.join(dirpath, f), repo)[:-3]
                    out[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


def imports_of(source: str, module: str, known: set[str], is_pkg: bool) -> set[str]:
    """Project modules that `source` (the module `module`) imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a name inside a module: its module
                t = t.rpartition(".")[0]
            if t and t != module:
                found.add(t)
    return found


def graph(repo: str = REPO) -> dict[str, set[str]]:
    mods = modules(repo)
    known = set(mods)
    return {m: imports_of(open(p).read(), m, known, p.endswith("__init__.py")) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_check_finds_function_level_and_relative_circles(tmp_path):
    """A circle closed by an import inside a function, and one through a relative import, are found."""
    pkg = tmp_path / "curation"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from curation import b\n")
    (pkg / "b.py").write_text("def f():\n    from curation.a import x\n")
    (pkg / "c.py").write_text("from .d import y\n")
    (pkg / "d.py").write_text("import curation.c\n")
    (pkg / "e.py").write_text("from curation import a\n")  # imports into a circle: not part of it
    assert cycles(graph(str(tmp_path))) == [["curation.a", "curation.b"], ["curation.c", "curation.d"]]
