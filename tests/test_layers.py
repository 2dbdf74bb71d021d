"""Import direction between the packages (docs/architecture.md, "Layers"), checked statically with ast.

A package's modules may import only the packages below it; `__main__.py` files are programs (run,
never imported) and may use any package. String references like "captioning.stage:run" count as
imports too: naming a higher layer's module in a lower one is the same dependency.
"""
from __future__ import annotations

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("model", "curation", "captioning", "shards", "training", "vidcurate")
# package -> the project packages its library modules may import (besides itself)
ALLOWED = {
    "model": set(),
    "curation": set(),
    "captioning": {"curation"},
    "shards": {"curation", "captioning"},
    "training": {"curation", "captioning", "shards", "model"},  # captioning: sample --enhance-prompt
    "vidcurate": {"model", "curation", "captioning", "shards", "training"},
}
_MODULE_REF = re.compile(r"^(%s)(\.\w+)*(:\w+)?$" % "|".join(PROJECT))


def imported_packages(source: str, module: str) -> set[tuple[str, int, str]]:
    """(top-level project package, line, what) of every import and module-path string in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.split(".")[: -node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_REF.match(node.value) \
                and ("." in node.value or ":" in node.value):
            names = [node.value]
        for name in names:
            top = name.split(".")[0].split(":")[0]
            if top in PROJECT:
                found.add((top, node.lineno, name))
    return found


def violations(repo: str = REPO) -> list[str]:
    out = []
    for pkg in PROJECT:
        for dirpath, _, files in os.walk(os.path.join(repo, pkg)):
            for f in sorted(files):
                if not f.endswith(".py") or f == "__main__.py":
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, repo)
                module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                for top, line, name in sorted(imported_packages(open(path).read(), module), key=lambda t: t[1]):
                    if top != pkg and top not in ALLOWED[pkg]:
                        out.append(f"{rel}:{line}: {pkg} must not import {name} ({top} is a higher layer)")
                    elif name.endswith("__main__"):
                        out.append(f"{rel}:{line}: a library module imports the program {name}")
    return out


def test_no_lower_layer_imports_a_higher_one():
    assert violations() == []


def test_the_check_catches_each_kind_of_violation(tmp_path):
    """The scanner finds plain, from, relative, function-level and string imports of a higher layer."""
    (tmp_path / "curation").mkdir()
    (tmp_path / "curation" / "bad.py").write_text(
        "import shards.writer\n"
        "from training.config import TrainingConfig\n"
        "def f():\n    from captioning import stage\n"
        "STAGES = {'caption': 'captioning.stage:run'}\n"
        "from .probe import run\n")  # relative within curation: fine
    (tmp_path / "curation" / "__main__.py").write_text("import vidcurate.cli\n")  # a program: fine
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "ok.py").write_text("from curation import tables\nfrom captioning.table import x\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "lib.py").write_text("from training.__main__ import train\n")
    found = violations(str(tmp_path))
    assert [v.split(":")[1] for v in found if v.startswith("curation")] == ["1", "2", "4", "5"], found
    assert any("training/lib.py:1: a library module imports the program" in v for v in found), found
    assert not any(v.startswith("shards") for v in found), found


# The folders a higher floor writes under a dataset root: the base layer never reads them (the readers of
# every floor, `inspect` and its reports, live in vidcurate/).
HIGHER_TABLES = ("captions", "shards")


def higher_table_paths(repo: str = REPO, pkg: str = "curation") -> list[str]:
    """`file:line: "path"` of every string (plain or f-string piece, docstrings aside) in `pkg` that is a
    root path into a higher floor's folder: "captions", "captions/<run>", "shards/<name>"."""
    out = []
    for dirpath, _, files in os.walk(os.path.join(repo, pkg)):
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            tree = ast.parse(open(path).read())
            docs = {id(n.value) for n in ast.walk(tree)
                    if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                    head = node.value.split("/")[0]
                    if head in HIGHER_TABLES and (node.value == head or "/" in node.value):
                        out.append(f"{os.path.relpath(path, repo)}:{node.lineno}: {node.value!r}")
    return out


def test_the_base_layer_reads_no_higher_floors_table():
    assert higher_table_paths() == []


def test_the_table_path_check_finds_plain_and_fstring_paths(tmp_path):
    (tmp_path / "curation").mkdir()
    (tmp_path / "curation" / "r.py").write_text(
        '"""Reads captions/<run> (a docstring: fine)."""\n'
        'def runs(storage, run):\n'
        '    a = storage.path("captions")\n'
        '    b = storage.list(f"captions/{run}", ".parquet")\n'
        '    return a, b, "shards: give a path", "no captions yet"\n')  # messages, not paths: fine
    assert [v.split(":")[1] for v in higher_table_paths(str(tmp_path))] == ["3", "4"]


# Model files that must stay plain single-process models: parallelism is applied from outside
# (training.parallelize.apply_context_parallel / apply_vae_context_parallel), as torchtitan does.
PLAIN_MODELS = ("model/transformer.py", "model/vae.py")
_PARALLEL_MODULES = ("torch.distributed", "model.context_parallel")
_PARALLEL_NAMES = {"dist", "split", "cp", "TimeSplit", "ContextParallel", "process_group"}


def parallelism_code(source: str) -> list[tuple[int, str]]:
    """(line, what) of every distributed import, and of every name, attribute, argument or definition
    that names a split, a process group or context parallelism (method calls like x.split(...) aside)."""
    found, tree = [], ast.parse(source)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, m) for m in mods if m.startswith(_PARALLEL_MODULES)]
            continue
        if isinstance(node, ast.Attribute) and id(node) not in calls:
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.arg):
            name = node.arg
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        else:
            continue
        if name in _PARALLEL_NAMES or "context_parallel" in name:
            found.append((node.lineno, name))
    return found


def test_models_hold_no_parallelism_code():
    bad = {p: parallelism_code(open(os.path.join(REPO, p)).read()) for p in PLAIN_MODELS}
    assert not any(bad.values()), bad


def test_the_parallelism_check_finds_split_attributes_and_dist_imports():
    src = ("import torch.distributed as dist\n"
           "class Conv:\n"
           "    def __init__(self):\n"
           "        self.split = None\n"
           "    def enable_context_parallel(self, split):\n"
           "        return x.split(2)\n")  # a tensor's split method: fine
    assert sorted(parallelism_code(src)) == [(1, "torch.distributed"), (4, "split"),
                                             (5, "enable_context_parallel"), (5, "split")]
