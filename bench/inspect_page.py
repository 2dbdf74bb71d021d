"""Inspect-page benchmark: build time, page size, browser load and recount time at 100k and 1M clips.

    .venv/bin/python bench/inspect_page.py                  # 100k and 1M rows
    .venv/bin/python bench/inspect_page.py --rows 100000

A scores table like the default scorers plus the motion helper's columns writes (15 float32 scores,
a camera-type string, 16-d embeddings standing in for the real 512-d ones: they are never read), in
parts of 50k rows. Peers, measured in the same run on the same table:
- build vs read: the page build (binning, deflate, base64, HTML) against pyarrow reading the same
  scalar columns, the floor of any report over this table;
- browser load vs inert: headless Chromium until the page is ready (data decoded, first recount,
  histograms drawn) against the same browser loading a page of the same bytes that runs no script;
  sheets: until the first contact sheets are built too (they decode the clip id list);
- recount: one threshold move recounted over every clip (kept, hours, reasons, 15 histograms drawn),
  the median of 7 moves.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidcurate import inspect as insp  # noqa: E402
from curation import tables  # noqa: E402
from vidcurate.report.chromium import Chromium, chromium_exe  # noqa: E402
from curation.storage import Storage  # noqa: E402

SCORES = ["motion_mean", "motion_min_patch", "motion_still_share", "motion_camera", "motion_object",
          "motion_moving_area", "motion_shake", "aesthetic_mean", "aesthetic_min", "neg_text", "neg_lecture",
          "neg_screen", "neg_low_quality", "neg_effects", "neg_background"]
RULES = '[{"column": "motion_mean", "min": 0.01, "max": null}, {"column": "aesthetic_mean", "min": 4.5, "max": null}]'


def make_root(root: str, n: int, part: int = 50_000) -> None:
    rng = np.random.default_rng(0)
    st = Storage(root)
    for lo in range(0, n, part):
        m = min(part, n - lo)
        i = np.arange(lo, lo + m)
        vid = [f"{v:016x}" for v in (i // 40).astype(np.uint64) * np.uint64(2654435761)]
        cols = {"clip_id": [f"{v}_{(k % 40) * 120:07d}_{(k % 40) * 120 + 120:07d}" for v, k in zip(vid, i)],
                "video_id": vid, "source": [f"s3://raw/{v}.mp4" for v in vid],
                "path": [f"clips/{v}/{v}_{(k % 40) * 120:07d}_{(k % 40) * 120 + 120:07d}.mp4" for v, k in zip(vid, i)],
                "start_s": (i % 40) * 5.0, "end_s": (i % 40) * 5.0 + rng.uniform(2, 10, m),
                "frames_sampled": np.full(m, 8, np.int32)}
        for c in SCORES:
            cols[c] = (rng.normal(5, 0.8, m) if c.startswith("aesthetic") else rng.lognormal(-3, 1, m)).astype(np.float32)
        cols["motion_camera_type"] = np.array(["static", "pan", "tilt", "zoom", "rotate", "shaky", "mixed"],
                                              object)[rng.integers(0, 7, m)]
        passed = (cols["motion_mean"] >= 0.01) & (cols["aesthetic_mean"] >= 4.5)
        cols["passed"] = passed
        cols["reasons"] = [[] if p else ["motion_mean<0.01"] for p in passed]
        cols["clip_embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=m * 16).astype(np.float32)), 16).cast(pa.list_(pa.float32()))
        cols["error"] = pa.nulls(m, pa.string())
        cols["decode_s"] = np.zeros(m, np.float32)
        cols["score_s"] = np.zeros(m, np.float32)
        t = pa.table(cols).replace_schema_metadata({"filter.rules": RULES})
        tables.write_part(st, "scores", t)


def measure(n: int, exe: str | None) -> dict:
    root = tempfile.mkdtemp(prefix="bench-inspect-")
    try:
        make_root(root, n)
        st = Storage(root)
        scalar = [c for c in pq.read_schema(st.path(st.list("scores", ".parquet")[0])).names if c != "clip_embedding"]
        t0 = time.perf_counter()
        for p in st.list("scores", ".parquet"):
            pq.read_table(st.path(p), columns=scalar)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        t, rules = insp.load_scores(st)
        s = insp.summarize(t, rules)
        page = insp.build_page(st, t, rules, insp.table_counts(st), s, "../")
        build_s = time.perf_counter() - t0
        path = os.path.join(root, "report", "index.html")
        st.write_bytes("report/index.html", page)
        out = {"rows": n, "read_s": read_s, "build_s": build_s, "mb": len(page) / 1e6}
        if exe:
            inert = os.path.join(root, "inert.html")
            with open(inert, "wb") as f:  # same bytes, inert: what parsing the file alone costs
                f.write(b"<!doctype html><html><body><script type='application/octet-stream'>" + b"A" * len(page)
                        + b"</script><p>ok</p></body></html>")
            with Chromium(exe, 1300, 1000) as b:
                out["inert_s"] = b.goto(f"file://{inert}", ready="document.querySelector('p')")
                out["load_s"] = b.goto(f"file://{path}")
                b.eval("window.inspect.settled()")
                out["sheets_s"] = float(b.eval("document.body.dataset.sheetsMs")) / 1e3
                moves = [b.eval(f"window.inspect.recountMs('motion_mean', 'min', {v})")
                         for v in (0.02, 0.03, 0.015, 0.025, 0.012, 0.018, 0.022)]
                out["recount_ms"] = float(np.median(moves))  # median of 7 moves (the first warms the JIT)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, action="append", help="table sizes (default 100000 and 1000000)")
    args = ap.parse_args()
    exe = chromium_exe()
    print(f"{len(SCORES)} float32 scores + 1 string column; chromium: {exe or 'not found (no browser numbers)'}")
    print(f"{'rows':>9} {'page MB':>8} {'B/clip':>7} {'read s':>7} {'build s':>8} {'build/read':>10} "
          f"{'inert s':>8} {'load s':>7} {'load/inert':>10} {'sheets s':>8} {'recount ms':>10}")
    for n in args.rows or [100_000, 1_000_000]:
        r = measure(n, exe)
        print(f"{n:>9} {r['mb']:>8.1f} {r['mb'] * 1e6 / n:>7.1f} {r['read_s']:>7.2f} {r['build_s']:>8.2f} "
              f"{r['build_s'] / r['read_s']:>10.1f} {r.get('inert_s', float('nan')):>8.2f} "
              f"{r.get('load_s', float('nan')):>7.2f} {r.get('load_s', np.nan) / r.get('inert_s', np.nan):>10.1f} "
              f"{r.get('sheets_s', float('nan')):>8.2f} "
              f"{r.get('recount_ms', float('nan')):>10.0f}", flush=True)


if __name__ == "__main__":
    main()
