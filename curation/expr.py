"""Score expressions: "aesthetic_mean + 0.5 * motion_mean" evaluated over table columns, vectorised.

Used by `select.score` (what a training set maximises) and `training.data.weights` (per-clip sampling
weight). A small AST walk over numpy arrays rather than `eval`: only names (columns), numbers,
+ - * / ** and a few functions are allowed, so a config can never run code.
"""
from __future__ import annotations

import ast
from typing import Callable, Mapping

import numpy as np

FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs,
    "min": np.minimum, "max": np.maximum, "clip": np.clip,
}
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power}


def parse(text: str) -> ast.Expression:
    """The checked AST of `text`; raises ValueError naming what is not allowed."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"expression {text!r}: not valid ({e.msg})") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Call, ast.Load,
                               ast.USub, ast.UAdd, *_BINARY))
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            ok = False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                                               and not node.keywords):
            ok = False
        if not ok:
            raise ValueError(f"expression {text!r}: {type(node).__name__} is not allowed (columns, numbers, "
                             f"+ - * / ** and {', '.join(FUNCTIONS)})")
    return tree


def names(text: str) -> list[str]:
    """The column names an expression reads (function names excluded), in order of appearance."""
    tree = parse(text)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    out: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and id(n) not in calls and n.id not in out:
            out.append(n.id)
    return out


def evaluate(text: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The expression over `columns` (float64; a missing value, NaN, stays NaN)."""
    missing = [n for n in names(text) if n not in columns]
    if missing:
        raise ValueError(f"expression {text!r}: no column {missing[0]!r} (columns: {', '.join(sorted(columns))})")

    def walk(node: ast.AST) -> np.ndarray | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return np.asarray(columns[node.id], np.float64)
        if isinstance(node, ast.UnaryOp):
            v = walk(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        return FUNCTIONS[node.func.id](*(walk(a) for a in node.args))

    with np.errstate(all="ignore"):  # log(0), x/0: NaN/inf in the result, judged by the caller
        out = walk(parse(text))
    n = len(next(iter(columns.values()))) if columns else 1
    return np.broadcast_to(np.asarray(out, np.float64), (n,)).copy()
