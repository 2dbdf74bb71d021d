"""Compare the tables of two dataset roots (e.g. the demo's before and after a refactor).

    python bench/compare_roots.py ROOT_A ROOT_B

Every table both roots hold (videos, clips, scores, dedup, dedup/phash, each captions run, each shard
set's index) is read as readers see it (last part wins on the table's key), sorted by its key and
compared column by column: ids, statuses and strings exactly, floats within a tolerance. Columns that
differ by nature from run to run (timings, creation times, run ids) are left out. Exit status 0 when
every table matches, 1 otherwise (each difference printed). The runs must use the same input paths
(video ids are hashes of the source URI): run both under the same root path and move the first away.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

# Columns whose values are timings or stamps of a run, never results (a shard's digest hashes its
# samples' metadata, which carries the filter's decode/score timings).
VOLATILE = {"latency_s", "created_at", "run_id", "seconds", "decode_s", "score_s", "digest"}
RTOL, ATOL = 1e-5, 1e-6  # float tolerance (scores computed in another process order may differ in the last bits)


def table_dirs(root: str) -> list[str]:
    """Table folders (relative) under `root` that hold Parquet parts or an index."""
    out = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in ("runs", "report", "training", "samples", "raw", "models"):
            continue
        if any(f.startswith("part-") and f.endswith(".parquet") for f in files) or "index.parquet" in files:
            out.append(rel)
    return sorted(out)


def read(root: str, rel: str) -> pa.Table:
    """The table as readers see it: the shard index file, or all parts with the last row per key."""
    folder = os.path.join(root, rel)
    if os.path.exists(os.path.join(folder, "index.parquet")):
        return pq.read_table(os.path.join(folder, "index.parquet"))
    parts = sorted(f for f in os.listdir(folder) if f.startswith("part-") and f.endswith(".parquet"))
    t = pa.concat_tables([pq.read_table(os.path.join(folder, p)) for p in parts], promote_options="permissive")
    key = sort_key(t)
    if key and not rel.startswith("captions"):  # captions runs keep every row (a caption beats an error)
        last = {k: i for i, k in enumerate(t.column(key).to_pylist())}
        t = t.take(sorted(last.values()))
    return t


def sort_key(t: pa.Table) -> str | None:
    return next((k for k in ("clip_id", "key", "video_id", "shard") if k in t.column_names), None)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def rows_of(t: pa.Table) -> list[dict]:
    cols = [c for c in t.column_names if c not in VOLATILE]
    rows = t.select(cols).to_pylist()
    key = sort_key(t)
    return sorted(rows, key=lambda r: (str(r.get(key)), repr(sorted(r.items(), key=lambda kv: kv[0]))))


def compare(a: str, b: str) -> list[str]:
    """Differences between the tables of roots `a` and `b` (empty when they match)."""
    diffs = []
    ta, tb = table_dirs(a), table_dirs(b)
    if ta != tb:
        diffs.append(f"tables differ: only in A {sorted(set(ta) - set(tb))}, only in B {sorted(set(tb) - set(ta))}")
    for rel in sorted(set(ta) & set(tb)):
        ra, rb = rows_of(read(a, rel)), rows_of(read(b, rel))
        if len(ra) != len(rb):
            diffs.append(f"{rel}: {len(ra)} rows vs {len(rb)}")
            continue
        if ra and ra[0].keys() != rb[0].keys():
            diffs.append(f"{rel}: columns {sorted(ra[0])} vs {sorted(rb[0])}")
            continue
        for x, y in zip(ra, rb):
            bad = [c for c in x if not same(x[c], y[c])]
            if bad:
                diffs.append(f"{rel}: row {x.get(sort_key(read(a, rel)))}: " +
                             ", ".join(f"{c}: {str(x[c])[:60]!r} vs {str(y[c])[:60]!r}" for c in bad))
        print(f"{rel}: {len(ra)} rows compared", file=sys.stderr)
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    diffs = compare(args.a, args.b)
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} differences")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
