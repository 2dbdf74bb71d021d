"""Stage accounting: what each step of a Ray Data pipeline did, and which one held the others up.

Every call of a step's worker records one event (step, node, worker, start, end, CPU seconds, rows and
bytes in and out, and how long its input rows had waited since the step before produced them). Events
ride along with the data in a hidden column — no extra actor, and a batch that a dead node lost and
Ray re-ran reports itself once, from the run that delivered its rows. The driver strips the column,
and `summarize` turns the events into the manifest's accounting: per step busy time, utilisation,
queue waits, rows/s, bytes/s, a utilisation timeline, and the share of time each step was the
bottleneck (in each time bin: the step whose workers were busiest; ties go to the longer input queue).
The driver collects the events of a run in its RunContext.events (curation.pipeline): no module state.
"""
from __future__ import annotations

import json
import os
import time

import pyarrow as pa

EVENTS_COL = "__acct_events"  # JSON list of events of the batches that produced this row's batch
TIME_COL = "__acct_t"  # wall time at which the row left the step before (for queue waits)
BINS = 60  # timeline resolution of a summary
SINK = "sink"  # the driver-side step that writes the results

def _node() -> str:
    import ray

    if not ray.is_initialized():  # outside Ray (run_local in tests); asking would start a Ray
        return "local"
    return ray.get_runtime_context().get_node_id()[:12]


def event(step: str, t0: float, t1: float, cpu_s: float, rows_in: int, rows_out: int, bytes_in: int,
          bytes_out: int, waits: list[float], worker: str | None = None) -> dict:
    """One worker call of `step`; `waits` are the seconds each input row waited in the queue."""
    return {"step": step, "node": _node(), "worker": worker or str(os.getpid()), "t0": t0, "t1": t1,
            "cpu_s": cpu_s, "rows_in": rows_in, "rows_out": rows_out, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "wait_s": sum(waits), "wait_max_s": max(waits, default=0.0)}


def split_batch(batch: pa.Table) -> tuple[pa.Table, list[dict], list[float]]:
    """(batch without accounting columns, upstream events, per-row production times)."""
    events: list[dict] = []
    times: list[float] = []
    names = batch.column_names
    if EVENTS_COL in names:
        for v in batch.column(EVENTS_COL).to_pylist():
            if isinstance(v, str) and v:
                events.extend(json.loads(v))
    if TIME_COL in names:
        times = [float(t) for t in batch.column(TIME_COL).to_pylist() if t is not None and t == t]
    cols = [c for c in (EVENTS_COL, TIME_COL) if c in names]
    return (batch.drop_columns(cols) if cols else batch), events, times


def attach(batch: pa.Table, events: list[dict], now: float) -> pa.Table:
    """Put `events` on the batch's first row and stamp every row with its production time."""
    col = [None] * batch.num_rows
    if col:
        col[0] = json.dumps(events)
    batch = batch.append_column(EVENTS_COL, pa.array(col, pa.string()))
    return batch.append_column(TIME_COL, pa.array([now] * batch.num_rows, pa.float64()))


def batch_bytes(batch: pa.Table) -> int:
    """Bytes a batch occupies (what moves through the object store between steps)."""
    return int(batch.nbytes)


def cpu_now() -> float:
    """CPU seconds of this process so far (all threads: decoders and encoders run in helper threads)."""
    return time.process_time()


# ------------------------------------------------------------------------------------------ summary
def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _max_concurrency(evs: list[dict]) -> int:
    points = sorted([(e["t0"], 1) for e in evs] + [(e["t1"], -1) for e in evs], key=lambda p: (p[0], p[1]))
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return max(best, 1)


def summarize(events: list[dict], order: list[str] | None = None, bins: int = BINS) -> dict:
    """Manifest accounting of one stage's events (see the module doc). Empty input -> {}."""
    if not events:
        return {}
    first: dict[str, float] = {}
    for e in events:
        first[e["step"]] = min(first.get(e["step"], e["t0"]), e["t0"])
    steps = [s for s in (order or []) if s in first] + sorted((s for s in first if s not in (order or [])),
                                                              key=lambda s: (s == SINK, first[s]))
    t_start = min(e["t0"] - (e["wait_max_s"] if e["rows_in"] else 0.0) for e in events)
    t_end = max(e["t1"] for e in events)
    wall = max(t_end - t_start, 1e-9)
    width = wall / bins
    edges = [t_start + i * width for i in range(bins + 1)]
    util = {s: [0.0] * bins for s in steps}
    queue = {s: [0.0] * bins for s in steps}
    out: dict = {"t0": round(t_start, 3), "wall_s": round(wall, 3), "bin_s": round(width, 4), "steps": {}}
    for s in steps:
        evs = [e for e in events if e["step"] == s]
        slots = _max_concurrency(evs)
        busy = sum(e["t1"] - e["t0"] for e in evs)
        rows_in = sum(e["rows_in"] for e in evs)
        for e in evs:
            w0 = e["t0"] - (e["wait_s"] / e["rows_in"] if e["rows_in"] else 0.0)  # mean arrival of its rows
            for b in range(bins):
                util[s][b] += _overlap(e["t0"], e["t1"], edges[b], edges[b + 1]) / (width * slots)
                queue[s][b] += e["rows_in"] * _overlap(w0, e["t0"], edges[b], edges[b + 1]) / width
        span = max(e["t1"] for e in evs) - min(e["t0"] for e in evs)
        out["steps"][s] = {
            "workers": len({(e["node"], e["worker"]) for e in evs}), "nodes": len({e["node"] for e in evs}),
            "node_ids": sorted({e["node"] for e in evs}),
            "max_concurrent": slots, "calls": len(evs), "rows_in": rows_in,
            "rows_out": sum(e["rows_out"] for e in evs), "busy_s": round(busy, 4),
            "cpu_s": round(sum(e["cpu_s"] for e in evs), 4), "utilization": round(busy / (slots * wall), 4),
            "span_s": round(span, 4), "queue_wait_s": round(sum(e["wait_s"] for e in evs), 4),
            "queue_wait_mean_s": round(sum(e["wait_s"] for e in evs) / max(rows_in, 1), 4),
            "queue_wait_max_s": round(max(e["wait_max_s"] for e in evs), 4),
            "rows_per_s": round(rows_in / wall, 4),
            "bytes_in": sum(e["bytes_in"] for e in evs), "bytes_out": sum(e["bytes_out"] for e in evs),
            "bytes_per_s": round(sum(e["bytes_in"] for e in evs) / wall, 1),
            "timeline": [round(min(u, 1.0), 3) for u in util[s]],
        }
    neck = _bottlenecks(steps, util, queue, bins)
    active = sum(1 for n in neck if n is not None)
    for s in steps:
        out["steps"][s]["bottleneck_share"] = round(sum(1 for n in neck if n == s) / max(active, 1), 4)
    out["bottleneck"] = neck
    return out


def _bottlenecks(steps: list[str], util: dict, queue: dict, bins: int) -> list[str | None]:
    """Per bin, the step that held the pipeline up: the busiest (ties within 5%: the longer queue)."""
    out: list[str | None] = []
    for b in range(bins):
        best = max((util[s][b] for s in steps), default=0.0)
        if best <= 0.0:
            out.append(None)
            continue
        tied = [s for s in steps if util[s][b] >= best - 0.05]
        out.append(max(tied, key=lambda s: (queue[s][b], util[s][b])))
    return out
