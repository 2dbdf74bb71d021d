"""The interactive inspect page: every scalar score of every clip in a compact form, thresholds tuned in the browser.

Per numeric score column, each clip is stored as a bin code (uint8/uint16) of the column's sorted
values: lossless (one bin per distinct value) up to 65,534 distinct values, else 16,384 bins of equal
clip counts, with the stored thresholds forced onto bin boundaries. A threshold in the page is a bin
boundary, so the page counts exactly what the rules count in Python for the value it exports: any
number between the last value below the boundary and the first value above it classifies every clip
the same way, and the page exports the shortest such number. Per clip the page also gets its duration
(float32), an error/duplicate flag byte, a category code per string column (camera types) and a
deflated "clip_id<TAB>path" list (decoded only when a contact sheet is first shown). Nothing is read
per clip beyond the scalar columns; the page is one self-contained file (no network, no server).

Thumbnails are drawn by the browser from the clip files themselves, lazily (only tiles that scroll
into view; 3 frames at 20/50/80% of the clip): a static page of a local root reads them through a
relative path, `--serve` serves them (any root, object stores included) from 127.0.0.1.
"""
from __future__ import annotations

import base64
import html as H
import json
import math
import os
import time
import zlib
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import tables
from curation.storage import Storage

MISSING16, MISSING8 = 65535, 255  # code of a missing/NaN score (breaks no rule, as in Rule.reason)
LOSSLESS_MAX = MISSING16 - 1  # up to this many distinct values a column is stored losslessly
LOSSY_BINS = 16384  # else: this many bins of equal clip counts (+ the stored thresholds as boundaries)
DISPLAY_BINS = 60  # histogram bars per score
MAX_CATEGORIES = 64  # string columns with more distinct values get no category view
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
DEDUP_GROUPS = 40  # duplicate groups shown side by side (largest first)
DEDUP_MEMBERS = 8  # clips shown per group


class Blobs:
    """Binary sections of the page, base64 in inert <script> tags; deflated where that saves a tenth."""

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.raw_bytes = 0

    def add(self, data: bytes, compress: bool = True) -> str:
        bid = f"b{len(self.tags)}"
        # Deflate only what it shrinks: a 64 KB sample decides (quantile codes of scores barely shrink).
        use = compress and len(zlib.compress(data[:65536], 1)) < 0.9 * min(len(data), 65536)
        z = zlib.compress(data, 1) if use else b""  # level 1: ~3x faster than 6 on the id list, ~15% larger
        body = z if use else data
        self.raw_bytes += len(body)
        self.tags.append(f'<script type="application/octet-stream" id="{bid}"{" data-z=1" if use else ""}>'
                         f'{base64.b64encode(body).decode()}</script>')
        return bid


def _num(x: float | None) -> float | str | None:
    """JSON-safe threshold: infinities as strings (JS Number() reads them back)."""
    if x is None:
        return None
    return x if math.isfinite(x) else ("Infinity" if x > 0 else "-Infinity")


def encode_column(values: np.ndarray, exact32: bool, mins: list[float], maxs: list[float], blobs: Blobs) -> dict:
    """Bin codes of one score column plus each bin's lowest and highest value (see the module docstring)."""
    ok = ~np.isnan(values)
    order = np.argsort(values[ok])
    srt = values[ok][order]
    if not len(srt):
        return {"empty": True}
    uniq = srt[np.concatenate([[True], srt[1:] != srt[:-1]])]
    lossless = len(uniq) <= LOSSLESS_MAX
    if lossless:
        bounds = uniq
    else:
        ranks = (np.arange(LOSSY_BINS) * len(srt)) // LOSSY_BINS
        forced = [uniq[i] for i in np.searchsorted(uniq, mins, "left") if i < len(uniq)]
        forced += [uniq[i] for i in np.searchsorted(uniq, maxs, "right") if i < len(uniq)]
        bounds = np.unique(np.concatenate([srt[ranks], forced, uniq[:1]]))
    lo = bounds
    hi = np.append(uniq[np.searchsorted(uniq, bounds[1:], "left") - 1], uniq[-1])
    missing = MISSING8 if len(bounds) < MISSING8 else MISSING16
    code = np.full(len(values), missing, np.uint8 if missing == MISSING8 else np.uint16)
    code[np.flatnonzero(ok)[order]] = np.searchsorted(bounds, srt, "right") - 1  # sorted lookups: fast
    ft = np.float32 if exact32 else np.float64
    fin = srt[np.isfinite(srt)]  # the axis and quantiles ignore infinite scores (they still count)
    a, b = np.quantile(fin, [0.001, 0.999]) if len(fin) else (0.0, 1.0)
    for t in mins + maxs:
        if math.isfinite(t):
            a, b = min(a, t), max(b, t)
    if b <= a:
        a, b = a - 0.5, b + 0.5
    return {"nbins": len(bounds), "missing": missing, "lossless": bool(lossless), "f": 4 if exact32 else 8,
            "code": blobs.add(code.astype("<" + code.dtype.str[1:]).tobytes()),
            "lo": blobs.add(lo.astype(ft).astype("<" + np.dtype(ft).str[1:]).tobytes(), compress=False),
            "hi": None if lossless else blobs.add(hi.astype(ft).astype("<" + np.dtype(ft).str[1:]).tobytes(),
                                                  compress=False),
            "range": [float(a), float(b)], "quantiles": np.quantile(fin, QUANTILES).tolist() if len(fin) else [],
            # The stored thresholds as bin boundaries: keep codes >= kmin (min) and <= kmax (max).
            "kmin": int(np.searchsorted(lo, mins[0], "left")) if mins else None,
            "kmax": int(np.searchsorted(hi, maxs[0], "right")) - 1 if maxs else None}


def scorer_names(t: pa.Table) -> list[str]:
    """Scorer names from the table's `filter.config` metadata (column = <scorer>_<metric>)."""
    raw = (t.schema.metadata or {}).get(b"filter.config")
    try:
        return sorted(json.loads(raw).get("scorers", {}), key=len, reverse=True) if raw else []
    except (ValueError, AttributeError):
        return []


def split_column(col: str, names: list[str]) -> tuple[str, str]:
    """(scorer, metric) of a score column; without config metadata the first underscore splits."""
    for n in names:
        if col.startswith(n + "_"):
            return n, col[len(n) + 1:]
    head, _, tail = col.partition("_")
    return head, tail or col


def _categories(t: pa.Table, cols: list[str], blobs: Blobs) -> list[dict]:
    out = []
    for c in cols:
        enc = pc.dictionary_encode(t.column(c).combine_chunks())
        vals = enc.dictionary.to_pylist()
        if len(vals) > MAX_CATEGORIES:
            out.append({"name": c, "skipped": f"{len(vals)} distinct values (a view needs at most {MAX_CATEGORIES})"})
            continue
        idx = enc.indices.fill_null(MISSING8).to_numpy(zero_copy_only=False).astype(np.uint8)
        out.append({"name": c, "values": [str(v) for v in vals], "code": blobs.add(idx.tobytes())})
    return out


def _dedup(storage: Storage, t: pa.Table) -> tuple[dict | None, np.ndarray | None]:
    """Duplicate groups for the view, and which scored rows dedup dropped (None when dedup did not run)."""
    if not storage.list("dedup", ".parquet"):
        return None, None
    row_of = {c: i for i, c in enumerate(t.column("clip_id").to_pylist())}
    d = tables.read_table(storage, "dedup", key="clip_id")
    need = {"clip_id", "group", "kept"}
    if not need <= set(d.column_names):
        return {"error": f"dedup table lacks {sorted(need - set(d.column_names))}"}, None
    rows = d.to_pylist()
    groups: dict = {}
    for r in rows:
        if r.get("group") is not None:
            groups.setdefault(r["group"], []).append(r)
    multi = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), str(g[0]["clip_id"])))
    shown = []
    for g in multi[:DEDUP_GROUPS]:
        g = sorted(g, key=lambda r: (not r["kept"], -(r.get("similarity") or 0), r["clip_id"]))
        shown.append({"group": str(g[0]["group"]), "size": len(g), "members": [
            {"clip_id": r["clip_id"], "row": row_of.get(r["clip_id"], -1), "kept": bool(r["kept"]),
             "duplicate_of": r.get("duplicate_of"), "similarity": r.get("similarity"), "method": r.get("method")}
            for r in g[:DEDUP_MEMBERS]]})
    dropped = np.zeros(len(row_of), bool)
    for r in rows:
        if not r["kept"] and r["clip_id"] in row_of:
            dropped[row_of[r["clip_id"]]] = True
    sizes = np.bincount([len(g) for g in groups.values()]) if groups else np.zeros(1, int)
    return {"rows": len(rows), "groups": len(multi), "duplicates": int(sum(not r["kept"] for r in rows)),
            "methods": sorted({str(r.get("method")) for r in rows}),
            "sizes": {str(k): int(v) for k, v in enumerate(sizes) if v and k > 1}, "shown": shown}, dropped


def build_data(t: pa.Table, rules: list, numeric: list[str], strings: list[str], storage: Storage,
               clip_base: str | None) -> tuple[dict, Blobs]:
    """The page's JSON metadata and binary sections (one pass over the scalar columns)."""
    blobs = Blobs()
    n = t.num_rows
    names = scorer_names(t)
    by_col: dict[str, dict] = {}
    for r in rules:
        e = by_col.setdefault(r.column, {"min": None, "max": None})
        e["min"] = r.min if r.min is not None else e["min"]
        e["max"] = r.max if r.max is not None else e["max"]
    cols = []
    for c in numeric:
        arr = t.column(c)
        v = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        st = by_col.get(c, {"min": None, "max": None})
        enc = encode_column(v, pa.types.is_float32(arr.type) or pa.types.is_float16(arr.type),
                            [st["min"]] if st["min"] is not None else [], [st["max"]] if st["max"] is not None else [],
                            blobs)
        scorer, metric = split_column(c, names)
        cols.append({"name": c, "scorer": scorer, "metric": metric, "min": _num(st["min"]), "max": _num(st["max"]),
                     **enc})
    err = pc.fill_null(pc.greater(pc.utf8_length(t.column("error").cast(pa.string())), 0), False).to_numpy(zero_copy_only=False)
    dedup, dup = _dedup(storage, t)
    flags = err.astype(np.uint8) | (dup.astype(np.uint8) << 1 if dup is not None else 0)
    dur = (pc.subtract(t.column("end_s"), t.column("start_s")).cast(pa.float64()).fill_null(0.0)
           .to_numpy(zero_copy_only=False).astype("<f4"))
    ids = _lines(t.column("clip_id"), t.column("path"))
    passed = t.column("passed").fill_null(False).to_numpy(zero_copy_only=False)
    meta = {"n": n, "columns": cols, "dur": blobs.add(dur.tobytes()), "flags": blobs.add(flags.tobytes()),
            "ids": blobs.add(ids), "categories": _categories(t, strings, blobs), "dedup": dedup,
            "stored_kept": int(passed.sum()), "clip_base": clip_base}
    return meta, blobs


def _lines(ids: pa.ChunkedArray, paths: pa.ChunkedArray) -> bytes:
    """b"clip_id<TAB>path<NL>" for every row, joined in Arrow (no Python string per row)."""
    empty = pa.scalar("", pa.string())
    row = pc.binary_join_element_wise(ids.fill_null(""), paths.fill_null(""), "\t")
    row = pc.binary_join_element_wise(row, empty, "\n").combine_chunks()  # "x" + "\n" + "" per row
    offsets = np.frombuffer(row.buffers()[1], np.int32, len(row) + 1, row.offset * 4)
    return row.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


def _asset(name: str) -> str:
    return resources.files("vidcurate.report").joinpath(name).read_text()


def render(root: str, meta: dict, blobs: Blobs, static: dict) -> str:
    """The whole page: style, data sections, static HTML parts (counts, per video, errors, captions), script."""
    e = H.escape
    meta = {**meta, "root": root, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    body = json.dumps(meta, allow_nan=False).replace("</", "<\\/")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Inspect: {e(root)}</title><style>{_asset('page.css')}</style></head><body>"
            f"<header><h1>Inspect</h1><span class=sub>{e(root)} &middot; {meta['built']}</span></header>"
            "<div id=app><p id=loading>Loading the scores of "
            f"{meta['n']} clips&hellip;</p></div>"
            + "".join(f"<template id='static-{k}'>{v}</template>" for k, v in static.items())
            + f"<script type='application/json' id=meta>{body}</script>" + "".join(blobs.tags)
            + f"<script>{_asset('page.js')}</script></body></html>")


def relative_base(root_local: str | None, html_path: str | None) -> str | None:
    """URL prefix from the page's folder to the root (static page of a local root), else None."""
    if root_local is None or html_path is None or "://" in html_path:
        return None
    rel = os.path.relpath(root_local, os.path.dirname(os.path.abspath(html_path)))
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"
