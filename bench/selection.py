"""Select-stage benchmark: 1M synthetic rows chosen under three quotas; quota shares checked exactly.

    .venv/bin/python bench/selection.py [--rows 1000000] [--budget 200000]

Synthetic table (seeded): a score (normal), an embedding cluster (1000 k-means-like clusters of Zipf
sizes), a camera type (7 values, skewed), a source video (50k videos, Zipf). Quotas: cluster 0.2%,
camera_type 25%, video 0.05% of a clips budget. Wall and CPU seconds, in this run:
  sort           numpy lexsort of the score with the seeded tie-break alone: the floor any selection pays
  choose         curation.select.choose (sort + the greedy pass under the three quotas)
  choose-table   the whole stage on tables: write the rows as Parquet, select(), read back the select table
and checks: no group above its cap, every group that turned a clip away exactly at its cap, the
budget filled, and a second run with the same seed identical.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curation.select import choose  # noqa: E402

SHARES = {"cluster": 0.002, "camera_type": 0.25, "video": 0.0005}


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores and group codes of n rows (skewed groups, so the quotas bind)."""
    rng = np.random.default_rng(seed)
    score = rng.normal(5, 1, n)
    groups = {"cluster": (rng.zipf(1.3, n) - 1) % 1000, "camera_type": np.minimum(rng.geometric(0.45, n) - 1, 6),
              "video": (rng.zipf(1.2, n) - 1) % 50_000}
    return score, {k: v.astype(np.int64) for k, v in groups.items()}


def check(sel: np.ndarray, reasons: list, groups: dict[str, np.ndarray], budget: int) -> dict[str, str]:
    """Each quota: largest group share of the selection, groups at cap, violations (must be 0)."""
    out = {}
    for k, g in groups.items():
        cap = int(np.floor(SHARES[k] * budget + 1e-9))
        per = np.bincount(g[sel], minlength=int(g.max()) + 1)
        turned = {int(g[i]) for i, r in enumerate(reasons) if r == f"quota {k}"}
        over = int((per > cap).sum())
        not_at_cap = sum(per[x] != cap for x in turned)
        assert over == 0 and not_at_cap == 0, (k, over, not_at_cap)
        out[k] = (f"cap {cap} ({SHARES[k]:.2%}), largest group {per.max() / budget:.4%} of the budget, {len(turned)} groups "
                  f"turned clips away and hold exactly {cap}, 0 above cap")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--budget", type=int, default=200_000)
    a = ap.parse_args()
    score, groups = synthetic(a.rows)
    units = np.ones(a.rows)
    t0, c0 = time.perf_counter(), time.process_time()
    tie = np.random.default_rng(0).permutation(a.rows)
    np.lexsort((tie, -score))
    t_sort, c_sort = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    sel, rank, reasons = choose(score, units, a.budget, groups, SHARES, seed=0)
    t_choose, c_choose = time.perf_counter() - t0, time.process_time() - c0
    lines = check(sel, reasons, groups, a.budget)
    sel2, _, _ = choose(score, units, a.budget, groups, SHARES, seed=0)
    assert (sel2 == sel).all()
    t_table, c_table = table_run(score, groups, a.budget)
    print(f"rows {a.rows}, budget {a.budget} clips, quotas {SHARES}: selected {int(sel.sum())}")
    print("  (wall s / CPU s of this process; on a shared machine the CPU seconds are the steadier number)")
    print(f"  sort (baseline)  {t_sort:7.2f} / {c_sort:6.2f}")
    print(f"  choose           {t_choose:7.2f} / {c_choose:6.2f}   ({c_choose / c_sort:.1f}x the sort, CPU)")
    print(f"  choose-table     {t_table:7.2f} / {c_table:6.2f}   ({c_table / c_sort:.1f}x the sort, CPU; "
          "Parquet in and out, the stage's select())")
    for k, v in lines.items():
        print(f"  {k:<12} {v}")
    print("  same seed, second run: identical selection")


def table_run(score: np.ndarray, groups: dict[str, np.ndarray], budget: int) -> tuple[float, float]:
    """The stage on tables: clips/scores/dedup Parquet parts of the synthetic rows, select(), read back."""
    import pyarrow as pa

    from curation import tables
    from curation.dedup import DEDUP
    from curation.select import SelectConfig, read_select, select
    from curation.storage import Storage

    n = len(score)
    ids = pa.array([f"c{i:08d}" for i in range(n)])
    cams = np.array(["static", "pan", "tilt", "zoom", "rotate", "shaky", "mixed"])[groups["camera_type"]]
    vids = pa.array([f"v{v:06d}" for v in groups["video"]])
    with tempfile.TemporaryDirectory(prefix="bench-select-") as d:
        st = Storage(d)
        tables.write_part(st, "clips", pa.table({
            "clip_id": ids, "video_id": vids, "source": vids, "start_frame": np.zeros(n, np.int64),
            "end_frame": np.full(n, 120), "start_s": np.zeros(n), "end_s": np.full(n, 5.0),
            "width": np.full(n, 1280, np.int32), "height": np.full(n, 720, np.int32), "fps": np.full(n, 24.0),
            "frames": np.full(n, 120), "bytes": np.full(n, 1000), "path": ids, "status": pa.array(["ok"] * n),
            "reason": pa.nulls(n, pa.string())}), tables.CLIPS)
        tables.write_part(st, "scores", pa.table({"clip_id": ids, "passed": np.ones(n, bool),
                                                  "error": pa.nulls(n, pa.string()), "aesthetic_mean": score,
                                                  "camera_type": pa.array(cams)}))
        tables.write_part(st, "dedup", pa.table({"clip_id": ids, "cluster": groups["cluster"].astype(np.int32),
                                                 "group": ids, "duplicate_of": pa.nulls(n, pa.string()),
                                                 "similarity": pa.nulls(n, pa.float32()),
                                                 "method": pa.nulls(n, pa.string()), "kept": np.ones(n, bool)}), DEDUP)
        t0, c0 = time.perf_counter(), time.process_time()
        counts = select(st, SelectConfig(max_clips=budget, quotas=SHARES))
        t = read_select(st)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert t.num_rows == n and counts["selected"] == int(t.column("selected").to_numpy().sum())
    return elapsed, cpu


if __name__ == "__main__":
    main()
