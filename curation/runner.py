"""Ray Data runner: a list of stages becomes one streaming pipeline.

read items -> map_batches(stage 1) -> map_batches(stage 2) -> ... -> driver sink

Stateful stages run as actor pools (models load once per actor), stateless ones as tasks; each
declares its CPUs/GPUs. Results stream back to the driver, which writes them as Parquet parts as they
arrive (see curation.tables.write_part): a killed run keeps everything already written, and the rows
are small (clip files are written by the workers themselves).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from typing import Callable, Iterable, Iterator

from curation import accounting
from curation.stage import Stage
from curation.uris import scrub

log = logging.getLogger(__name__)

MAX_BLOCKS = 20000  # upper bound on input blocks (= map tasks) of one pipeline
# What the console shows: set by console() for a run. Quiet: Ray's own logging (its loggers, Ray Data
# bars, worker output, library warnings) goes to the run's log file; our one bar per stage stays.
_CONSOLE: dict = {"verbose": True, "log": None, "stage": None}
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "py.warnings")


def console(log_path: str | None, verbose: bool) -> None:
    """Send Ray's own logging to `log_path` (appending) unless verbose; None restores the default."""
    _fd2_restore()
    old = _CONSOLE.get("log")
    if old is not None:
        old.close()
    _CONSOLE.update(verbose=verbose or log_path is None, log=None, handler=None)
    if log_path is None or verbose:
        logging.captureWarnings(False)
        return
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    _CONSOLE["log"] = open(log_path, "a", buffering=1)
    handler = logging.StreamHandler(_CONSOLE["log"])
    handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _CONSOLE["handler"] = handler
    import ray  # noqa: F401  (ray installs its console handler on import: replace it)

    _to_log_file()
    logging.captureWarnings(True)
    _route_worker_output()
    _fd2_to_log(_CONSOLE["log"])


def _fd2_to_log(f: "object") -> None:
    """C/C++ output of this process (Ray's core worker: "Actor with class name ... has constructor arguments
    in the object store ...") goes to the log file: file descriptor 2 points there, and Python's sys.stderr
    (our progress lines and summary) moves to a copy of the console's descriptor. Only when sys.stderr is
    the process's own descriptor 2 (not under a capturing test runner)."""
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, ValueError, OSError):
        return
    sys.stderr.flush()
    console_fd = os.dup(2)
    stream = os.fdopen(console_fd, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                       errors="backslashreplace")
    _CONSOLE["fd2"] = (stream, sys.stderr)
    sys.stderr = stream
    os.dup2(f.fileno(), 2)


def _fd2_restore() -> None:
    saved = _CONSOLE.pop("fd2", None)
    if saved is None:
        return
    stream, original = saved
    stream.flush()
    os.dup2(stream.fileno(), 2)
    sys.stderr = original
    stream.close()


def _to_log_file() -> None:
    """Point Ray's loggers at the run's log file. Called again once ray.data is imported (it installs its
    own handlers then; importing it before ray.init would slow the node start past Ray's timeout)."""
    handler = _CONSOLE.get("handler")
    if _CONSOLE["verbose"] or handler is None:
        return
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False


def _route_worker_output() -> None:
    """Worker stdout/stderr that Ray forwards to the driver goes to the log file (Ray's own dispatcher)."""
    try:
        from ray._private import worker as ray_worker
        dispatcher = ray_worker.global_worker_stdstream_dispatcher
    except (ImportError, AttributeError):  # another Ray release: leave its console output as it is
        return

    def to_log(data: dict) -> None:
        f = _CONSOLE.get("log")
        if f is None or f.closed:
            return ray_worker.print_to_stdstream(data, ignore_prefix=False)
        who = data.get("actor_name") or data.get("task_name") or ""
        for line in data.get("lines", []):
            f.write(scrub(f"({who} pid={data.get('pid')}) {line}") + "\n")

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", to_log)


class _ScrubbingFormatter(logging.Formatter):
    """Log records (tracebacks included) with every URI redacted: no credentials in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


@contextlib.contextmanager
def output_to_log() -> Iterator[None]:
    """Console output of library code run in the driver (transformers' "Writing model shards" bar while a
    tiny demo model is saved) goes to the run's log file, unless verbose or no run log is open."""
    f = _CONSOLE.get("log")
    if _CONSOLE["verbose"] or f is None or f.closed:
        yield
        return
    with contextlib.redirect_stderr(f), contextlib.redirect_stdout(f):
        yield


def set_stage(name: str | None) -> None:
    """The stage whose progress bar run_pipeline draws (curation.pipeline.run_stages sets it)."""
    _CONSOLE["stage"] = name


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster (`ray job submit` sets RAY_ADDRESS) or start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers must import this project: ship the checkout when we start Ray ourselves; under
    # `ray job submit --working-dir .` the job's working dir is already on every worker's path.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"env_vars": {"PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=None if os.environ.get("RAY_JOB_ID") else env)
    else:
        # A session folder of its own: concurrent embedded Rays sharing /tmp/ray can pick up each other's
        # session files (a driver then waits on another node's GCS).
        for attempt in range(3):  # Ray gives its node 30 s to start: a busy machine can need a second try
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=env,
                         _node_ip_address="127.0.0.1", _temp_dir=tempfile.mkdtemp(prefix="ray-"))
                break
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise
                log.warning("the local Ray node did not start in time (%s); starting it again", e)
                ray.shutdown()
    if not _CONSOLE["verbose"]:
        _route_worker_output()  # ray.init installs its printer of worker output: send it to the log file
        _to_log_file()


def check_root_placement(storage: "object", shared: bool = False) -> None:
    """Refuse a local-folder root when the Ray cluster has several nodes (unless declared shared).

    Workers write clip and shard files themselves: with a per-node folder each node would keep its
    own piece of the dataset and the tables would point at files other nodes cannot read.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if storage.is_local and len(nodes) > 1 and not shared:
        raise ValueError(f"root {storage.root!r} is a local folder but the Ray cluster has {len(nodes)} nodes: "
                         "each node would write its files to its own disk. Use an object-store root "
                         "(s3://..., gs://...), or set ray.shared_root: true if the folder is a shared "
                         "filesystem mounted at the same path on every node")


class _Wrap:
    """Callable class for Ray Data: builds the stage once per actor and converts batch formats."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.ensure_setup()

    def __call__(self, batch: "object") -> "object":
        return _accounted(self.stage, batch)


def _from_batch(batch: "object") -> list[dict]:
    if "__empty__" in batch.columns:  # the marker row of an empty upstream batch (it carries accounting)
        batch = batch[batch["__empty__"].isna()].drop(columns="__empty__")
    return batch.to_dict("records")


def _accounted(stage: Stage, batch: "object") -> "object":
    """Run `stage` on a batch and record the call (curation/accounting.py) on the output batch."""
    t0, c0 = time.time(), accounting.cpu_now()
    batch, events, times = accounting.split_batch(batch)
    rows = _from_batch(batch)
    res = stage(rows)
    out = _to_batch(res) if res else _to_batch([{"__empty__": True}])
    t1 = time.time()
    ev = accounting.event(stage.name, t0, t1, accounting.cpu_now() - c0, len(rows), len(res),
                          accounting.batch_bytes(batch), accounting.batch_bytes(out), [t0 - t for t in times])
    return accounting.attach(out, events + [ev], t1)


def _to_batch(rows: list[dict]) -> "object":
    import pandas as pd

    return pd.DataFrame(rows if rows else [{"__empty__": True}]) if rows else pd.DataFrame({"__empty__": []})


def _stateless(stage: Stage) -> Callable:
    def fn(batch: "object") -> "object":
        return _accounted(stage, batch)
    return fn


def run_pipeline(items: list[dict], stages: list[Stage], sink: Callable[[list[dict]], None],
                 sink_every: int = 1, progress: bool = True) -> int:
    """Run `stages` over `items` on Ray, handing finished rows to `sink` in arrival order.

    `sink` is called with a list of rows each time `sink_every` rows have arrived (and at the end).
    Returns the number of rows produced.
    """
    import ray

    if not items:
        return 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and _CONSOLE["verbose"]  # Ray Data's own bars (one per operator)
    _to_log_file()
    ctx.execution_options.preserve_order = False
    # Small blocks so work spreads across workers even for a handful of long videos, and results (and
    # so resume points) stream back often; capped so a million-clip run does not schedule a million tasks.
    t_submit = time.time()  # the first step's queue waits count from here
    ds = ray.data.from_items([{**it, accounting.TIME_COL: t_submit} for it in items],
                             override_num_blocks=min(len(items), MAX_BLOCKS))
    for st in stages:
        r = st.resources
        common = dict(batch_format="pandas", batch_size=r.batch_size, num_cpus=r.num_cpus, **_no_fusion())
        if r.num_gpus:
            common["num_gpus"] = r.num_gpus
        pool = pool_size(r, st.stateful)
        if st.stateful:
            ds = ds.map_batches(_Wrap, fn_constructor_args=(st,), concurrency=pool, **common)
        else:
            if pool:
                common["concurrency"] = pool
            ds = ds.map_batches(_stateless(st), **common)
    n = 0
    pending: list[dict] = []
    bar = StageBar(items, _CONSOLE["stage"] or stages[-1].name, enabled=progress)
    events: list[dict] = []
    waits: list[float] = []  # of the rows handed to the next sink call

    def flush() -> None:
        t0 = time.time()
        sink(pending)
        events.append(accounting.event(accounting.SINK, t0, time.time(), 0.0, len(pending), len(pending), 0, 0,
                                       waits, worker="driver"))
        waits.clear()

    for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
        arrived = time.time()
        batch, evs, times = accounting.split_batch(batch)
        events.extend(evs)
        if "__empty__" in batch.columns:
            batch = batch[batch["__empty__"].isna()].drop(columns="__empty__") if len(batch.columns) > 1 else batch.iloc[0:0]
        rows = [{k: _clean(v) for k, v in r.items()} for r in batch.to_dict("records")]
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
    accounting.add(events)
    return n


class StageBar:
    """One progress bar per stage: inputs done / total and errors, from the rows as they arrive.

    An input counts as done when a row carrying its key (clip_id, video_id, key or source: the first
    the inputs have) arrives; rows without it count one input each. A bar on a terminal (tqdm), else
    one line at the end (logs of `ray job submit`, CI).
    """

    KEYS = ("clip_id", "video_id", "key", "shard", "source")

    def __init__(self, items: list[dict], label: str, enabled: bool = True) -> None:
        self.total, self.label, self.enabled, self.t0 = len(items), label, enabled, time.time()
        self.key = next((k for k in self.KEYS if items and k in items[0]), None)
        self.done: set = set()
        self.extra = self.errors = 0
        self.tqdm = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(total=self.total, desc=label, unit="in", file=sys.stderr, dynamic_ncols=True,
                             bar_format="{desc}: {n}/{total} |{bar}| {postfix} [{elapsed}<{remaining}]")
            self.tqdm.set_postfix_str("errors 0")

    def count(self) -> int:
        return min(self.total, len(self.done) + self.extra)

    def update(self, rows: list[dict]) -> None:
        before = self.count()
        for r in rows:
            if self.key and r.get(self.key) is not None:
                self.done.add(r[self.key])
            else:
                self.extra += 1
            self.errors += bool(r.get("error")) or r.get("status") == "error"
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(f"errors {self.errors}", refresh=False)
            self.tqdm.update(self.count() - before)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.enabled:
            print(f"{self.label}: {self.count()}/{self.total} done, {self.errors} errors, "
                  f"{time.time() - self.t0:.1f} s", file=sys.stderr, flush=True)


def pool_size(r: "object", stateful: bool) -> "int | tuple[int, int] | None":
    """Ray Data concurrency of a step: a fixed pool (`workers`), or an autoscaling pool between
    `min_workers` and `max_workers` that Ray Data grows while the step's input queue builds up (tasks:
    at most `max_workers` at once). An unset max is what the cluster's CPUs (GPUs) can hold."""
    lo, hi = getattr(r, "min_workers", None), getattr(r, "max_workers", None)
    if lo is None and hi is None:
        return (r.workers or 1) if stateful else r.workers
    lo = lo or 1
    hi = hi or max(lo, _fits(r))
    return (lo, hi) if stateful else hi


def _fits(r: "object") -> int:
    """Workers of `r`'s size the cluster holds (its scarcest resource decides)."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 0) // r.num_cpus) if r.num_cpus else 1 << 16
    if r.num_gpus:
        n = min(n, int(res.get("GPU", 0) // r.num_gpus))
    return max(n, 1)


def _no_fusion() -> dict:
    """Keep every stage its own Ray Data operator.

    Ray Data fuses adjacent map steps whose resources match, which would run a CPU decode step inside
    the model actors (the GPU then waits on decoding). An operator with a `ray_remote_args_fn` is never
    fused; where a Ray release no longer takes that argument, fusion rules apply as they are.
    """
    import inspect
    import warnings

    import ray

    if "ray_remote_args_fn" not in inspect.signature(ray.data.Dataset.map_batches).parameters:
        return {}
    warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated.*")
    return {"ray_remote_args_fn": _empty_args}


def _empty_args() -> dict:
    return {}


def _clean(v: object) -> object:
    """pandas turns nulls into NaN and lists into numpy arrays; give the sink plain Python values."""
    import numpy as np

    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, float) and v != v:
        return None
    return v


class Progress:
    """A one-line progress report on stderr for driver-side loops (Ray shows its own bars too)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.t0 = total, label, 0, time.time()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        print(f"[{self.label}] {self.done}/{self.total} ({rate:.2f}/s)", file=sys.stderr, flush=True)
