"""`python -m vidcurate inspect <root> [--serve]`: what the pipeline kept and dropped, and why; tune thresholds.

Terminal: counts of the videos/clips/scores tables, kept/dropped per reason, quantiles of every score
with its threshold, and per source video. HTML (<root>/report/index.html by default; one
self-contained file, vidcurate/report/): per score a histogram with draggable min/max thresholds;
moving one recounts in the page, exactly, the clips and hours kept and dropped overall and per reason,
and shows contact sheets of the clips nearest the threshold and of those the change adds or removes.
Views of camera types (string score columns), duplicate groups (<root>/dedup), captions and the
selection's distributions before/after (<root>/select, vidcurate/select_report.py).
"Export thresholds" gives the `filter.scorers.<name>.thresholds` yaml, which
`python -m vidcurate run pipelines.yaml --stage filter --rules-only` applies to the stored scores.

It stays fast on large tables: only the scalar columns are read (never the embeddings), statistics
are vectorised, and no clip is opened to build the page (the browser draws thumbnails lazily).
"""
from __future__ import annotations

import html as H
import json
import math
import os
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import tables
from curation.filter import BASE_FIELDS, TAIL_FIELDS, rules_of
from curation.storage import Storage
from curation.uris import redact
from vidcurate import run_report
from vidcurate.caption_report import caption_report
from vidcurate.report.page import build_data, relative_base, render

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
TOP_VIDEOS_TERMINAL = 15
TOP_VIDEOS_HTML = 200
ERRORS_HTML = 50


# ----------------------------------------------------------------------------------------------- data
def load_scores(storage: Storage) -> tuple[pa.Table, list]:
    """Scalar columns of every scores part (deduplicated on clip_id) and the rules of the latest part."""
    parts = storage.list("scores", ".parquet")
    if not parts:
        return pa.table({}), []
    ts, schema = [], None
    for p in parts:
        try:
            names = pq.read_schema(storage.fs.open_input_file(storage.path(p))).names
        except (OSError, pa.ArrowException):
            names = None  # a rotten footer: read_part quarantines it
        got = tables.read_part(storage, p, [n for n in names if n != "clip_embedding"] if names else None)
        if got is not None:
            ts.append(got)
            schema = got.schema
    if not ts:
        return pa.table({}), []
    t = pa.concat_tables(ts, promote_options="permissive")
    if pc.count_distinct(t.column("clip_id")).as_py() < t.num_rows:  # re-scored clips: the last row wins
        t = tables.dedupe_last(t, "clip_id")
    return t, rules_of(schema)


def score_columns(t: pa.Table, kind: str = "float") -> list[str]:
    """Scorer columns of a kind: float, numeric (float or integer) or string (e.g. a camera type)."""
    skip = {n for n, _ in BASE_FIELDS + TAIL_FIELDS}
    test = {"float": pa.types.is_floating,
            "numeric": lambda ty: pa.types.is_floating(ty) or pa.types.is_integer(ty),
            "string": lambda ty: pa.types.is_string(ty) or pa.types.is_large_string(ty)}[kind]
    return [f.name for f in t.schema if f.name not in skip and test(f.type)]


def summarize(t: pa.Table, rules: list) -> dict:
    """Counts, reasons, quantiles and per-video stats (all vectorised)."""
    import pandas as pd

    n = t.num_rows
    err = pc.fill_null(pc.greater(pc.utf8_length(t.column("error").cast(pa.string())), 0), False).to_numpy(zero_copy_only=False) \
        if n else np.zeros(0, bool)  # an empty error string is no error (as in filter.decide)
    passed = t.column("passed").fill_null(False).to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    flat = pc.list_flatten(t.column("reasons")) if n else pa.array([], pa.string())
    parents = pc.list_parent_indices(t.column("reasons")) if n else pa.array([], pa.int64())
    reasons = pd.Series(flat.to_numpy(zero_copy_only=False)).value_counts()
    reasons = reasons[reasons.index != "error"]
    quant = {}
    for c in score_columns(t):
        v = t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[np.isfinite(v)]
        quant[c] = np.quantile(v, QUANTILES).tolist() if len(v) else []
    df = pd.DataFrame({"source": t.column("source").to_pandas(), "passed": passed, "error": err})
    per = df.groupby("source", dropna=False).agg(clips=("passed", "size"), kept=("passed", "sum"),
                                                 errors=("error", "sum"))
    per["dropped"] = per["clips"] - per["kept"] - per["errors"]
    if len(flat):
        rs = pd.DataFrame({"source": np.asarray(df["source"])[parents.to_numpy()], "reason": flat.to_numpy(zero_copy_only=False)})
        top = rs[rs.reason != "error"].groupby(["source", "reason"]).size().reset_index(name="k")
        top = top.sort_values("k", ascending=False).drop_duplicates("source").set_index("source")["reason"]
        per["top_reason"] = per.index.map(top)
    else:
        per["top_reason"] = None
    per = per.sort_values(["clips", "dropped"], ascending=False)
    return {"clips": n, "kept": int(passed.sum()), "errors": int(err.sum()),
            "dropped": int(n - passed.sum() - err.sum()), "reasons": reasons.to_dict(), "quantiles": quant,
            "per_video": per, "rules": rules}


def table_counts(storage: Storage) -> dict:
    """Row counts of the upstream tables (only their status/error columns are read)."""
    out = {}
    for name, col in (("videos", "error"), ("clips", "status")):
        parts = storage.list(name, ".parquet")
        if not parts:
            continue
        key = "video_id" if name == "videos" else "clip_id"
        cols = [key, col] + (["reasons"] if name == "videos" else [])  # videos: also the prefilter reasons
        ts = [t for t in (tables.read_part(storage, p, cols) for p in parts) if t is not None]
        if not ts:  # every part rotten (quarantined)
            continue
        t = pa.concat_tables(ts, promote_options="permissive")
        t = tables.dedupe_last(t, key)
        vals = t.column(col).to_pylist()
        out[name] = ({"total": len(vals), "errors": sum(v is not None for v in vals)} if name == "videos"
                     else {s: vals.count(s) for s in sorted(set(vals), key=str)})
        if name == "videos" and "reasons" in t.column_names:
            why = Counter(r for rs in t.column("reasons").to_pylist() if rs for r in rs)
            out[name]["prefiltered"] = sum(bool(rs) for rs in t.column("reasons").to_pylist())
            out[name]["prefilter_reasons"] = dict(why.most_common())
    return out


# ------------------------------------------------------------------------------------------- terminal
def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def terminal_report(root: str, counts: dict, s: dict) -> str:
    lines = [f"dataset root: {root}"]
    if "videos" in counts:
        v = counts["videos"]
        why = ", ".join(f"{r} {n}" for r, n in v.get("prefilter_reasons", {}).items())
        lines.append(f"videos: {v['total']} ({v['errors']} errors, {v.get('prefiltered', 0)} prefiltered"
                     + (f": {why})" if why else ")"))
    if "clips" in counts:
        lines.append("clips: " + ", ".join(f"{v} {k}" for k, v in counts["clips"].items()))
    if not s["clips"]:
        lines.append("scores: none yet (run the filter stage)")
        return "\n".join(lines)
    n = s["clips"]
    lines.append(f"scores: {n} clips: kept {s['kept']} ({100 * s['kept'] / n:.1f}%), dropped {s['dropped']}, "
                 f"errors {s['errors']}")
    if s["reasons"]:
        lines.append("dropped by reason (a clip can break several rules):")
        w = max(len(r) for r in s["reasons"])
        for r, k in s["reasons"].items():
            lines.append(f"  {r:<{w}}  {k:>8}  {100 * k / n:5.1f}%")
    thr = _thresholds(s["rules"])
    if s["quantiles"]:
        w = max(len(c) for c in s["quantiles"])
        head = "".join(f"{'p' + str(int(q * 100)):>10}" for q in QUANTILES)
        lines.append(f"score quantiles:\n  {'':<{w}}{head}  threshold")
        for c, qs in s["quantiles"].items():
            lines.append(f"  {c:<{w}}" + "".join(f"{_fmt(v):>10}" for v in qs) + f"  {thr.get(c, '')}")
    per = s["per_video"]
    lines.append(f"per source video ({len(per)} videos; top {min(len(per), TOP_VIDEOS_TERMINAL)} by clips):")
    for src, r in per.head(TOP_VIDEOS_TERMINAL).iterrows():
        lines.append(f"  {r.clips:>6} clips {r.kept:>6} kept {r.dropped:>6} dropped {r.errors:>4} errors  "
                     f"{(r.top_reason or '') if isinstance(r.top_reason, str) else '':<20} {src}")
    return "\n".join(lines)


def _thresholds(rules: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in rules:
        parts = ([f">= {r.min:g}"] if r.min is not None else []) + ([f"<= {r.max:g}"] if r.max is not None else [])
        out[r.column] = " and ".join(parts)
    return out


# ----------------------------------------------------------------------------------------------- html
def static_parts(storage: Storage, t: pa.Table, counts: dict, s: dict, captions_html: str = "") -> dict[str, str]:
    """HTML of the parts that do not move with the thresholds: table counts, per video, errors, captions."""
    e = H.escape
    rows = "".join(f"<tr><th class=l>{name}</th><td class=l>{e(json.dumps(c))}</td></tr>" for name, c in counts.items())
    out = {"counts": f"<table>{rows}</table>"}
    per = s["per_video"].head(TOP_VIDEOS_HTML)
    body = "".join(f"<tr><td class=l>{e(str(src))}</td><td>{r.clips}</td><td>{r.kept}</td><td>{r.dropped}</td>"
                   f"<td>{r.errors}</td><td class=l>{e(r.top_reason if isinstance(r.top_reason, str) else '')}</td></tr>"
                   for src, r in per.iterrows())
    out["videos"] = (f"<p>{len(s['per_video'])} videos; the {len(per)} with most clips; kept/dropped as stored in the "
                     "table</p><table><tr><th class=l>source</th><th>clips</th><th>kept</th><th>dropped</th>"
                     f"<th>errors</th><th class=l>top reason</th></tr>{body}</table>")
    if s["errors"]:
        err = pc.filter(t.select(["clip_id", "error"]), pc.fill_null(pc.greater(pc.utf8_length(t.column("error").cast(pa.string())), 0),
                                                                       False)).slice(0, ERRORS_HTML).to_pylist()
        out["errors"] = "<table>" + "".join(f"<tr><td class=l>{e(r['clip_id'])}</td><td class=l>{e(r['error'])}</td>"
                                            "</tr>" for r in err) + "</table>"
    # caption quality (vidcurate/caption_report.py): lengths, flags, openings, shared captions, --compare
    out["captions"] = captions_html or "<p>No captions yet (run the caption stage).</p>"
    return out


def build_page(storage: Storage, t: pa.Table, rules: list, counts: dict, s: dict, clip_base: str | None,
               title: str | None = None, captions_html: str = "") -> bytes:
    """The interactive page (vidcurate/report/); `title` names the root as the user gave it."""
    meta, blobs = build_data(t, rules, score_columns(t, "numeric"), score_columns(t, "string"), storage, clip_base)
    return render(redact(title or storage.root), meta, blobs, static_parts(storage, t, counts, s, captions_html)).encode()


def _load(root: str) -> tuple[Storage, pa.Table, list, dict, dict] | None:
    storage = Storage(root)
    t, rules = load_scores(storage)
    counts = table_counts(storage)
    if not t.num_rows and not counts:
        print(f"error: no tables under {root} (videos/, clips/, scores/): is this a dataset root?", file=sys.stderr)
        return None
    s = summarize(t, rules) if t.num_rows else {"clips": 0, "rules": rules}
    print(terminal_report(redact(root), counts, s))  # shown: no credentials (curation/uris.py)
    return storage, t, rules, counts, s


def main(root: str, html: str | None = None, compare: tuple[str, str] | None = None) -> int:
    """Print the summary; write the HTML page unless `html` is None ("" = <root>/report/index.html).
    `compare`: two captions runs shown side by side."""
    got = _load(root)
    if got is None:
        return 1
    storage, t, rules, counts, s = got
    try:
        cap_lines, cap_html = caption_report(storage, compare=compare)
    except ValueError as e:  # a --compare run that does not exist
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cap_lines:
        print("\n".join(cap_lines))
    from vidcurate.select_report import selection_report  # the select stage's before/after (its own module)

    sel_lines, sel_html = selection_report(storage)
    if sel_lines:
        print("\n".join(sel_lines))

    run = run_report.latest_manifest(storage)
    if run:
        print("\n".join(run_report.terminal_lines(run)))
    if html is not None and t.num_rows:
        target = storage.local_path("report/index.html") if html == "" else html
        page = build_page(storage, t, rules, counts, s, relative_base(storage.local_path(""), target), root,
                          cap_html + sel_html + (run_report.html_section(run) if run else ""))
        if html == "":
            storage.write_bytes("report/index.html", page)
            html = redact(storage.uri("report/index.html"))
        else:
            with open(html, "wb") as f:
                f.write(page)
        print(f"html report: {html} ({len(page) / 1e6:.1f} MB, {t.num_rows} clips)")
    return 0


# ---------------------------------------------------------------------------------------------- serve
def make_server(root: str, port: int = 0):
    """An HTTP server on 127.0.0.1: the page at /, the root's clip files at /root/<path> (with Range)."""
    import posixpath
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got = _load(root)
    if got is None or not got[1].num_rows:
        raise ValueError(f"{root}: no scores table to inspect (run the filter stage)")
    storage, t, rules, counts, s = got

    page = build_page(storage, t, rules, counts, s, "/root/", root, caption_report(storage)[1])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:  # quiet: the browser asks for many ranges
            pass

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            rel = _inside_root(storage, self.path)
            if rel is None:
                return self._send(404, b"not found", "text/plain")
            with storage.fs.open_input_file(storage.path(rel)) as f:
                size = f.size()
                a, b = 0, size - 1
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    lo, _, hi = rng[6:].split(",")[0].partition("-")
                    a, b = (int(lo), min(int(hi or size - 1), size - 1)) if lo else (max(0, size - int(hi)), size - 1)
                f.seek(a)
                data = f.read(max(0, b - a + 1))
            self._send(206 if rng else 200, data, "video/mp4" if rel.endswith(".mp4") else "application/octet-stream",
                       {"Content-Range": f"bytes {a}-{b}/{size}"} if rng else {})

        def _send(self, code: int, data: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def _inside_root(storage: Storage, url_path: str) -> str | None:
    """The root-relative file a `/root/<path>` request names, or None when it names nothing inside the root.

    Decoded once (an encoded `..` is still `..`), normalised, and refused when it climbs out, is absolute,
    holds a NUL, or (local roots) resolves through a symlink to a file outside the root."""
    import posixpath
    from urllib.parse import unquote

    if not url_path.startswith("/root/"):
        return None
    raw = unquote(url_path.split("?", 1)[0].split("#", 1)[0][len("/root/"):])
    rel = posixpath.normpath(raw) if raw else ""
    if not rel or rel in (".", "..") or rel.startswith(("../", "/")) or "\x00" in rel or "\\" in rel:
        return None
    local = storage.local_path(rel)
    if local is not None:
        base = os.path.realpath(storage.local_path(""))
        real = os.path.realpath(local)
        if os.path.commonpath([base, real]) != base or not os.path.isfile(real):
            return None
        return rel
    return rel if storage.exists(rel) else None


def serve(root: str, port: int = 8765) -> int:
    """`inspect --serve`: serve the page until Ctrl-C (bound to 127.0.0.1 only)."""
    try:
        srv = make_server(root, port)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"serving http://127.0.0.1:{srv.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0
