"""`python -m curation inspect <root>`: what the pipeline kept and dropped, and why.

Terminal: counts of the videos/clips/scores tables, kept/dropped per reason, quantiles of every score
with its threshold, and per source video. HTML (<root>/report/index.html by default): the same, a
histogram per score (kept and dropped stacked, thresholds marked in red) and contact sheets, i.e.
thumbnails of clips just either side of each threshold and of dropped clips per reason, so thresholds
are tuned by looking.

It stays fast on large tables: only the scalar columns are read (never the embeddings), statistics
are vectorised, and only the few clips shown on contact sheets are opened (a bounded sample, seeded).
"""
from __future__ import annotations

import base64
import html as H
import json
import math
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import tables
from curation.storage import Storage

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
THUMBS_PER_SHEET = 8  # clips per contact sheet (each one decodes a few frames of one clip)
THUMB_HEIGHT = 72  # px of each frame in a thumbnail strip
THUMB_FRAMES = 3  # frames per clip: at 20%, 50% and 80% of its length (shows motion)
TOP_VIDEOS_TERMINAL = 15
TOP_VIDEOS_HTML = 200


# ----------------------------------------------------------------------------------------------- data
def load_scores(storage: Storage) -> tuple[pa.Table, list]:
    """Scalar columns of every scores part (deduplicated on clip_id) and the rules of the latest part."""
    from curation.filter import rules_of

    parts = storage.list("scores", ".parquet")
    if not parts:
        return pa.table({}), []
    ts, schema = [], None
    for p in parts:
        f = pq.ParquetFile(storage.fs.open_input_file(storage.path(p)))
        schema = f.schema_arrow
        ts.append(f.read(columns=[n for n in schema.names if n != "clip_embedding"]))
    t = tables.dedupe_last(pa.concat_tables(ts, promote_options="permissive"), "clip_id")
    return t, rules_of(schema)


def score_columns(t: pa.Table) -> list[str]:
    from curation.filter import BASE_FIELDS, TAIL_FIELDS

    skip = {n for n, _ in BASE_FIELDS + TAIL_FIELDS}
    return [f.name for f in t.schema if f.name not in skip and pa.types.is_floating(f.type)]


def summarize(t: pa.Table, rules: list) -> dict:
    """Counts, reasons, quantiles and per-video stats (all vectorised)."""
    import pandas as pd

    n = t.num_rows
    err = np.array([e is not None for e in t.column("error").to_pylist()]) if n else np.zeros(0, bool)
    passed = np.array(t.column("passed").fill_null(False).to_pylist(), bool) if n else np.zeros(0, bool)
    flat = pc.list_flatten(t.column("reasons")) if n else pa.array([], pa.string())
    parents = pc.list_parent_indices(t.column("reasons")) if n else pa.array([], pa.int64())
    reasons = pd.Series(flat.to_numpy(zero_copy_only=False)).value_counts()
    reasons = reasons[reasons.index != "error"]
    quant = {}
    for c in score_columns(t):
        v = t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[np.isfinite(v)]
        quant[c] = np.quantile(v, QUANTILES).tolist() if len(v) else []
    df = pd.DataFrame({"source": t.column("source").to_pylist(), "passed": passed, "error": err})
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
        t = pa.concat_tables([pq.read_table(storage.fs.open_input_file(storage.path(p)), columns=[key, col])
                              for p in parts], promote_options="permissive")
        t = tables.dedupe_last(t, key)
        vals = t.column(col).to_pylist()
        out[name] = ({"total": len(vals), "errors": sum(v is not None for v in vals)} if name == "videos"
                     else {s: vals.count(s) for s in sorted(set(vals), key=str)})
    return out


# ------------------------------------------------------------------------------------------- terminal
def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def terminal_report(root: str, counts: dict, s: dict) -> str:
    lines = [f"dataset root: {root}"]
    if "videos" in counts:
        lines.append(f"videos: {counts['videos']['total']} ({counts['videos']['errors']} errors)")
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


# ----------------------------------------------------------------------------------------- thumbnails
def thumbnail(storage: Storage, path: str | None, start: float = 0.0, duration: float | None = None) -> str | None:
    """A strip of THUMB_FRAMES frames of one clip as a JPEG data URI (None when it cannot be read)."""
    import cv2

    from curation.video import Geometry, first_video_stream, frame_rotation, frame_time, open_container, stream_rotation, stream_sar

    if not path:
        return None
    try:
        with open_container(storage.uri(path)) as c:
            st = first_video_stream(c, path)
            dur = duration or (float(st.duration * st.time_base) if st.duration else None) or \
                (c.duration / 1e6 if c.duration else 2.0)
            want = [dur * f for f in np.linspace(0.2, 0.8, THUMB_FRAMES)]
            got: list[np.ndarray] = []
            for target in want:
                c.seek(int(target / st.time_base) + (st.start_time or 0), stream=st, backward=True)
                for i, fr in enumerate(c.decode(st)):
                    if frame_time(fr, st, i, 25.0) + 1e-3 >= target or i > 600:
                        geo = Geometry.fit(fr.width, fr.height, stream_sar(st), frame_rotation(fr) or
                                           stream_rotation(st), max_h=THUMB_HEIGHT, max_w=THUMB_HEIGHT * 3)
                        got.append(geo.apply(fr))
                        break
        if not got:
            return None
        h = min(g.shape[0] for g in got)
        strip = np.concatenate([g[:h] for g in got], axis=1)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None
    except Exception:  # a missing or broken clip shows as a placeholder, never stops the report
        return None


def sheets(t: pa.Table, rules: list, per_sheet: int, seed: int = 0) -> list[tuple[str, str, list[int]]]:
    """(title, note, row indices) of each contact sheet: either side of each threshold, dropped per reason."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rules:
        if r.column not in t.column_names:
            continue
        v = t.column(r.column).to_numpy(zero_copy_only=False).astype(np.float64)
        for thr, kind in ((r.min, "min"), (r.max, "max")):
            if thr is None:
                continue
            ok = np.isfinite(v)
            dist = np.where(ok, np.abs(v - thr), np.inf)
            k = min(per_sheet, int(ok.sum()))
            if not k:
                continue
            near = np.argpartition(dist, k - 1)[:k] if k < len(dist) else np.arange(len(dist))
            near = near[np.argsort(v[near])]
            out.append((f"{r.column} near its {kind} {thr:g}",
                        f"the {k} clips closest to the threshold, sorted by score", near.tolist()))
    flat = pc.list_flatten(t.column("reasons")).to_numpy(zero_copy_only=False) if t.num_rows else []
    parents = pc.list_parent_indices(t.column("reasons")).to_numpy() if t.num_rows else []
    for reason in sorted(set(flat) - {"error"}):
        idx = parents[flat == reason]
        pick = rng.choice(idx, size=min(per_sheet, len(idx)), replace=False)
        out.append((f"dropped: {reason}", f"{len(pick)} of {len(idx)} dropped clips, random sample", sorted(pick.tolist())))
    return out


# ----------------------------------------------------------------------------------------------- html
def svg_histogram(values: np.ndarray, passed: np.ndarray, thresholds: list[tuple[float, str]],
                  bins: int = 40, w: int = 560, h: int = 170) -> str:
    """Stacked histogram (kept green, dropped grey) with red threshold lines, as inline SVG."""
    ok = np.isfinite(values)
    v, p = values[ok], passed[ok]
    if not len(v):
        return "<p>no values</p>"
    lo, hi = np.quantile(v, [0.001, 0.999])
    for t, _ in thresholds:
        lo, hi = min(lo, t), max(hi, t)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    vc = np.clip(v, lo, hi)
    kept, _ = np.histogram(vc[p], edges)
    drop, _ = np.histogram(vc[~p], edges)
    top = max(1, int((kept + drop).max()))
    pl, pb, pw, ph = 40, 22, w - 75, h - 40
    bw = pw / bins
    x = lambda val: pl + (val - lo) / (hi - lo) * pw  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="hist">',
           f'<line x1="{pl}" y1="{h - pb}" x2="{pl + pw}" y2="{h - pb}" stroke="#444"/>']
    for i in range(bins):
        kh, dh = kept[i] / top * ph, drop[i] / top * ph
        y0 = h - pb
        if kh:
            out.append(f'<rect x="{pl + i * bw:.1f}" y="{y0 - kh:.1f}" width="{bw - 1:.1f}" height="{kh:.1f}" fill="#4caf50"/>')
        if dh:
            out.append(f'<rect x="{pl + i * bw:.1f}" y="{y0 - kh - dh:.1f}" width="{bw - 1:.1f}" height="{dh:.1f}" fill="#9e9e9e"/>')
    for t, label in thresholds:
        right = x(t) > pl + 0.7 * pw  # label on the inner side of the line, so it is never cut off
        out.append(f'<line x1="{x(t):.1f}" y1="8" x2="{x(t):.1f}" y2="{h - pb}" stroke="#d32f2f" stroke-width="2" '
                   f'stroke-dasharray="4 2" class="threshold"/><text x="{x(t) + (-3 if right else 3):.1f}" y="16" '
                   f'fill="#d32f2f" font-size="11" text-anchor="{"end" if right else "start"}">{H.escape(label)}</text>')
    for val in np.linspace(lo, hi, 5):
        out.append(f'<text x="{x(val):.1f}" y="{h - 6}" font-size="10" text-anchor="middle">{_fmt(float(val))}</text>')
    out.append(f'<text x="4" y="{h - pb}" font-size="10">0</text><text x="4" y="14" font-size="10">{top}</text></svg>')
    return "".join(out)


CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.score{display:inline-block;vertical-align:top;margin:0 24px 24px 0}.sheet{margin-bottom:18px}
.clip{display:inline-block;margin:4px;font-size:11px;text-align:center;vertical-align:top}
.clip img{display:block;border:1px solid #ccc}.bad{color:#c62828}.missing{width:160px;height:72px;background:#eee;
display:flex;align-items:center;justify-content:center;color:#888}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px}"""


def html_report(root: str, storage: Storage, t: pa.Table, counts: dict, s: dict, per_sheet: int) -> str:
    thr = _thresholds(s["rules"])
    passed = np.array(t.column("passed").fill_null(False).to_pylist(), bool) if t.num_rows else np.zeros(0, bool)
    e = H.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Filter report: {e(root)}</title>"
           f"<style>{CSS}</style></head><body><h1>Filter report</h1><p>{e(root)} &middot; "
           f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p><h2>Counts</h2><table>"]
    for name, c in counts.items():
        out.append(f"<tr><th class=l>{name}</th><td class=l>{e(json.dumps(c))}</td></tr>")
    n = max(1, s["clips"])
    out.append(f"<tr><th class=l>scores</th><td class=l id=summary>{s['clips']} clips: kept {s['kept']} "
               f"({100 * s['kept'] / n:.1f}%), dropped {s['dropped']}, errors {s['errors']}</td></tr></table>")
    out.append("<h2>Dropped by reason</h2><table><tr><th class=l>reason</th><th>clips</th><th>share</th></tr>")
    for r, k in s["reasons"].items():
        out.append(f"<tr><td class=l>{e(r)}</td><td>{k}</td><td>{100 * k / n:.1f}%</td></tr>")
    out.append("</table><h2>Scores</h2><p class=legend><span style='background:#4caf50'></span>kept"
               "<span style='background:#9e9e9e'></span>dropped<span style='background:#d32f2f'></span>threshold</p>")
    rules_by_col: dict[str, list] = {}
    for r in s["rules"]:
        rules_by_col.setdefault(r.column, []).append(r)
    for c, qs in s["quantiles"].items():
        marks = [(x, f"{k} {x:g}") for r in rules_by_col.get(c, []) for x, k in ((r.min, "min"), (r.max, "max"))
                 if x is not None]
        v = t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        q = " ".join(f"p{int(a * 100)}={_fmt(b)}" for a, b in zip(QUANTILES, qs))
        out.append(f"<div class=score><h3>{e(c)} <small>{e(thr.get(c, ''))}</small></h3>"
                   f"{svg_histogram(v, passed, marks)}<div><small>{e(q)}</small></div></div>")
    out.append("<h2>Contact sheets</h2><p id=thumbs>Each strip: frames at 20%, 50% and 80% of a clip; "
               "<span class=bad>red</span> = dropped (for any reason). Thumbnails: "
               "<span id=thumbs-loaded>?</span> loaded.</p>")
    cache: dict[int, str | None] = {}
    cols = set(t.column_names)
    for title, note, idx in sheets(t, s["rules"], per_sheet):
        out.append(f"<div class=sheet><h3>{e(title)}</h3><p><small>{e(note)}</small></p>")
        col = title.split(" ")[0] if " near " in title else None
        for i in idx:
            row = {k: t.column(k)[i].as_py() for k in ("clip_id", "path", "passed", "start_s", "end_s") if k in cols}
            if i not in cache:
                dur = (row.get("end_s") or 0) - (row.get("start_s") or 0)
                cache[i] = thumbnail(storage, row.get("path"), duration=dur if dur > 0 else None)
            val = f"{col}={_fmt(t.column(col)[i].as_py())}<br>" if col else ""
            img = f"<img src='{cache[i]}' alt='{e(row['clip_id'])}'>" if cache[i] else "<div class=missing>no frame</div>"
            cls = "" if row.get("passed") else " bad"
            out.append(f"<div class='clip{cls}'>{img}{val}{e(row['clip_id'][-28:])}</div>")
        out.append("</div>")
    per = s["per_video"].head(TOP_VIDEOS_HTML)
    out.append(f"<h2>Per source video</h2><p>{len(s['per_video'])} videos; the {len(per)} with most clips</p><table>"
               "<tr><th class=l>source</th><th>clips</th><th>kept</th><th>dropped</th><th>errors</th>"
               "<th class=l>top reason</th></tr>")
    for src, r in per.iterrows():
        tr = r.top_reason if isinstance(r.top_reason, str) else ""
        out.append(f"<tr><td class=l>{e(str(src))}</td><td>{r.clips}</td><td>{r.kept}</td><td>{r.dropped}</td>"
                   f"<td>{r.errors}</td><td class=l>{e(tr)}</td></tr>")
    out.append("</table>")
    if s["errors"]:
        errs = [(a, b) for a, b in zip(t.column("clip_id").to_pylist(), t.column("error").to_pylist()) if b][:50]
        out.append("<h2>Errors</h2><table>" + "".join(
            f"<tr><td class=l>{e(a)}</td><td class=l>{e(b)}</td></tr>" for a, b in errs) + "</table>")
    # Count thumbnails the browser actually decoded (a broken image shows up here, not silently).
    out.append("<script>addEventListener('load',()=>{const im=[...document.images];"
               "document.getElementById('thumbs-loaded').textContent="
               "im.filter(i=>i.complete&&i.naturalWidth>0).length+' of '+im.length;});</script></body></html>")
    return "".join(out)


def main(root: str, html: str | None = None, per_sheet: int = THUMBS_PER_SHEET) -> int:
    """Print the summary; write the HTML report unless `html` is None ("" = <root>/report/index.html)."""
    storage = Storage(root)
    t, rules = load_scores(storage)
    counts = table_counts(storage)
    if not t.num_rows and not counts:
        print(f"error: no tables under {root} (videos/, clips/, scores/): is this a dataset root?", file=sys.stderr)
        return 1
    s = summarize(t, rules) if t.num_rows else {"clips": 0, "rules": rules}
    print(terminal_report(root, counts, s))
    from curation import run_report  # stage accounting of the latest run (its own module)

    run = run_report.latest_manifest(storage)
    if run:
        print("\n".join(run_report.terminal_lines(run)))
    if html is not None and t.num_rows:
        page = html_report(root, storage, t, counts, s, per_sheet)
        page = page.replace("</body></html>", (run_report.html_section(run) if run else "") + "</body></html>").encode()
        if html == "":
            storage.write_bytes("report/index.html", page)
            html = storage.uri("report/index.html")
        else:
            with open(html, "wb") as f:
                f.write(page)
        print(f"html report: {html}")
    return 0
