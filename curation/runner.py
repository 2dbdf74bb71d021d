"""Ray Data runner: a list of steps becomes one streaming pipeline.

read items -> map_batches(step 1) -> map_batches(step 2) -> ... -> driver sink

Stateful steps run as actor pools (models load once per actor), stateless ones as tasks; each
declares its CPUs/GPUs. Batches are Arrow tables end to end (`batch_format="pyarrow"`): rows keep their
types (no NaN for null, no numpy arrays for lists) on the way through. Results stream back to the
driver, which writes them as Parquet parts as they arrive (see curation.tables.write_part): a killed
run keeps everything already written, and the rows are small (clip files are written by the workers
themselves).

The rooms around it: curation/console.py (where Ray's output goes), curation/cluster.py (starting Ray,
where files may go, pool sizes), curation/progress.py (the bar per stage).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import pyarrow as pa

from curation import accounting
from curation.cluster import check_root_placement, init_ray, pool_size  # noqa: F401 (re-exported: their old home)
from curation.console import Console, output_to_log  # noqa: F401 (output_to_log: re-exported)
from curation.progress import Progress, StageBar  # noqa: F401 (re-exported: their old home)
from curation.stage import Stage

if TYPE_CHECKING:  # ray is imported where a pipeline is built
    import ray.data

MAX_BLOCKS = 20000  # upper bound on input blocks (= map tasks) of one pipeline
EMPTY = "__empty__"  # the marker row of a batch whose step returned no rows (it carries the accounting)


class _Wrap:
    """Callable class for Ray Data: builds the step once per actor."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _accounted(self.stage, batch)


def _rows(batch: pa.Table) -> list[dict]:
    """The rows of a batch, without the marker row of an empty upstream batch."""
    if EMPTY not in batch.column_names:
        return batch.to_pylist()
    return [{k: v for k, v in r.items() if k != EMPTY} for r in batch.to_pylist() if r[EMPTY] is None]


def _to_batch(rows: list[dict]) -> pa.Table:
    """Rows as an Arrow table (every key of any row a column: error rows lack a step's result keys); no
    rows: one marker row (the accounting needs a row to ride on)."""
    if not rows:
        return pa.table({EMPTY: [True]})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def _accounted(stage: Stage, batch: pa.Table) -> pa.Table:
    """Run `stage` on a batch and record the call (curation/accounting.py) on the output batch."""
    t0, c0 = time.time(), accounting.cpu_now()
    batch, events, times = accounting.split_batch(batch)
    rows = _rows(batch)
    res = stage(rows)
    out = _to_batch(res)
    t1 = time.time()
    ev = accounting.event(stage.name, t0, t1, accounting.cpu_now() - c0, len(rows), len(res),
                          accounting.batch_bytes(batch), accounting.batch_bytes(out), [t0 - t for t in times])
    return accounting.attach(out, events + [ev], t1)


def _stateless(stage: Stage) -> Callable:
    def fn(batch: pa.Table) -> pa.Table:
        return _accounted(stage, batch)
    return fn


def unfused() -> dict:
    """map_batches arguments that keep a step its own Ray Data operator.

    Ray Data fuses adjacent map steps whose resources match, which would run a CPU decode step inside
    the model actors (the GPU then waits on decoding). An operator with a `ray_remote_args_fn` is never
    fused (tests/curation/test_cluster_accounting.py checks the plan); Ray warns that the argument is
    deprecated, and that warning is expected here.
    """
    return {"ray_remote_args_fn": _no_extra_args}


def _no_extra_args() -> dict:
    return {}


def build(items: list[dict], stages: list[Stage], fuse: bool = False) -> ray.data.Dataset:
    """The Ray Data dataset of `stages` over `items` (not yet run). `fuse`: let Ray Data fuse steps."""
    import warnings

    import ray

    # Small blocks so work spreads across workers even for a handful of long videos, and results (and
    # so resume points) stream back often; capped so a million-clip run does not schedule a million tasks.
    t_submit = time.time()  # the first step's queue waits count from here
    ds = ray.data.from_items([{**it, accounting.TIME_COL: t_submit} for it in items],
                             override_num_blocks=min(len(items), MAX_BLOCKS))
    for st in stages:
        r = st.resources
        common = dict(batch_format="pyarrow", batch_size=r.batch_size, num_cpus=r.num_cpus,
                      **({} if fuse else unfused()))
        if r.num_gpus:
            common["num_gpus"] = r.num_gpus
        pool = pool_size(r, st.stateful)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
            if st.stateful:
                ds = ds.map_batches(_Wrap, fn_constructor_args=(st,), concurrency=pool, **common)
            else:
                if pool:
                    common["concurrency"] = pool
                ds = ds.map_batches(_stateless(st), **common)
    return ds


def run_pipeline(items: list[dict], stages: list[Stage], sink: Callable[[list[dict]], None],
                 sink_every: int = 1, progress: bool = True, console: Console | None = None,
                 label: str | None = None, events: list[dict] | None = None) -> int:
    """Run `stages` over `items` on Ray, handing finished rows to `sink` in arrival order.

    `sink` is called with a list of rows each time `sink_every` rows have arrived (and at the end).
    `console`: the run's (Ray's own bars are shown only when it is verbose; None: shown); `label`: the
    bar's name (default: the last step's); `events`: the accounting events of every step and of the
    sink are appended to it (the run's RunContext.events). Returns the number of rows produced.
    """
    import ray

    if not items:
        return 0
    ctx = ray.data.DataContext.get_current()
    verbose = console is None or console.verbose
    ctx.enable_progress_bars = progress and verbose  # Ray Data's own bars (one per operator)
    if console is not None:
        console.to_log_file()
    ctx.execution_options.preserve_order = False
    ds = build(items, stages)
    n = 0
    pending: list[dict] = []
    bar = StageBar(items, label or stages[-1].name, enabled=progress)
    got: list[dict] = [] if events is None else events
    waits: list[float] = []  # of the rows handed to the next sink call

    def flush() -> None:
        t0 = time.time()
        sink(pending)
        got.append(accounting.event(accounting.SINK, t0, time.time(), 0.0, len(pending), len(pending), 0, 0,
                                    waits, worker="driver"))
        waits.clear()

    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        arrived = time.time()
        batch, evs, times = accounting.split_batch(batch)
        got.extend(evs)
        rows = _rows(batch)
        bar.update(rows)
        waits.extend(arrived - t for t in times[:len(rows)])
        pending.extend(rows)
        n += len(rows)
        if len(pending) >= sink_every:
            flush()
            pending = []
    if pending:
        flush()
    bar.close()
    return n
