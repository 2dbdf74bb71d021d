"""The table-stage contract: a pipeline stage declares its work, the framework does the bookkeeping.

A stage of the pipeline (probe, split, filter, caption, shard, ...) turns work items into the rows of
one table under the root. It declares:

    items()   every work item of the run (dicts; Ray Data needs one set of keys)
    steps()   the Ray steps (curation.stage.Stage) that turn an item into rows
    table, schema, key   where the rows go: `<root>/<table>/part-*.parquet`; `key` is the table's row
              key (readers keep the last row of a key; None: every row counts)
    resume_key            the column that names the work item a row came from (default: `key`)

and the framework (`execute`) does the rest, the same way for every stage:

- resume: an item whose key has a non-error row in the table is skipped; one whose rows are all
  errors is retried (`failed(row)` says what an error row is);
- the sink: rows are written as Parquet parts as they arrive (`write`), so a killed run keeps them;
- counts: work items, skipped, done, and one count per row status (`status(row)`);
- errors: the error rows of this run, as lines for the run manifest (`error_text(row)`);
- local (in this process: tests, small jobs) or on Ray (curation.runner.run_pipeline);
- GPU fallback: a step asking for a GPU on a Ray cluster without one runs on CPU, with a warning;
- progress: one bar per stage (the runner's), and `on_part(counts)` after every written part.

A new stage is one subclass here plus one `Section("key", Model, "package.module:MyTable", "table")`
line: `curation.pipeline.resolve` runs a TableStage class through `TableStage.run(cfg, ctx)`.
"""
from __future__ import annotations

import sys
from typing import Callable, ClassVar

import pyarrow as pa

from curation import tables
from curation.runner import run_pipeline
from curation.stage import Stage, run_local
from curation.storage import Storage


class TableStage:
    """One pipeline stage: work items in, rows of one table out (see the module doc)."""

    name: ClassVar[str] = "stage"  # the stage's name: manifest entry, log lines, progress bar
    item_count: ClassVar[str] = "items"  # counts key of the number of work items
    done_count: ClassVar[str | None] = None  # counts key of the items written by this run (None: not counted)
    statuses: ClassVar[tuple[str, ...]] = ("errors",)  # counts keys that `status(row)` may return, in order
    count_retried: ClassVar[bool] = False  # count the items retried after an error row ("retried")
    error_columns: ClassVar[tuple[str, ...]] = ("error",)  # columns `failed(row)` reads when resuming

    def __init__(self, storage: Storage, table: str, schema: pa.Schema | None, key: str | None,
                 resume_key: str | None = None, resume: bool = True) -> None:
        self.storage = storage
        self.table = table  # folder under the root
        self.schema = schema  # Arrow schema of the rows (None: inferred from the rows)
        self.key = key  # row key of the table: readers keep its last row
        self.resume_key = resume_key or key  # the column naming a row's work item
        self.resume = resume  # False: every item is done again (e.g. filter.rescore)

    # ------------------------------------------------------------------ what a stage declares
    @classmethod
    def from_run(cls, cfg: "object", ctx: "object") -> "TableStage":
        """The stage for a run of pipelines.yaml `cfg` under `ctx.storage`."""
        raise NotImplementedError

    def items(self) -> list[dict]:
        """Every work item of this run (done ones included: the framework skips those)."""
        raise NotImplementedError

    def steps(self) -> list[Stage]:
        """The Ray steps that turn a work item into rows of the table."""
        raise NotImplementedError

    def item_key(self, item: dict) -> object:
        """The resume key of a work item (compared with the `resume_key` column of the table)."""
        return item[self.resume_key]

    def failed(self, row: dict) -> bool:
        """Whether a row records a failure (its item is retried by the next run)."""
        return bool(row.get("error"))

    def status(self, row: dict) -> str | None:
        """The counts key a written row adds one to (None: none)."""
        return "errors" if self.failed(row) else None

    def reported(self, row: dict) -> bool:
        """Whether a row's error goes into the run manifest: every failure, and rows a stage keeps despite an
        error (a salvaged, truncated video) so the damage is still shown."""
        return self.failed(row)

    def error_text(self, row: dict) -> str:
        """The manifest's line for an error row."""
        return f"{row.get(self.resume_key)}: {row.get('error')}"

    def sink_every(self, todo: int) -> int:
        """Rows per written part: parts often enough to resume, few enough to read back fast."""
        return max(1, min(256, todo // 10 or 1))

    def prepare(self, rows: list[dict]) -> list[dict]:
        """Rows as they arrive -> rows in the table's types (hook; default: as they are)."""
        return rows

    def write(self, rows: list[dict]) -> None:
        """Write arrived rows as one part of the table."""
        tables.write_part(self.storage, self.table, rows, self.schema)

    def begin(self, todo: list[dict]) -> None:
        """Before the pipeline runs (hook: e.g. a run's info file)."""

    def finish(self, counts: dict, local: bool) -> dict:
        """After the pipeline: the stage's counts (hook: e.g. an index built from the parts)."""
        return counts

    # ------------------------------------------------------------------ what the framework does
    def state(self) -> tuple[set, set]:
        """(keys done: with a non-error row, keys failed: with error rows only) of the table as it is."""
        if not self.resume or self.resume_key is None:
            return set(), set()
        cols = list(dict.fromkeys([self.resume_key, *([self.key] if self.key else []), *self.error_columns]))
        ok, bad = set(), set()
        for row in tables.read_columns(self.storage, self.table, cols, key=self.key).to_pylist():
            (bad if self.failed(row) else ok).add(row[self.resume_key])
        return ok, bad - ok

    def todo(self, items: list[dict]) -> tuple[list[dict], int]:
        """(items still to do, how many of them are retried after an error)."""
        done, failed = self.state()
        todo = [i for i in items if self.item_key(i) not in done]
        return todo, sum(1 for i in todo if self.item_key(i) in failed)

    @classmethod
    def run(cls, cfg: "object", ctx: "object") -> dict:
        """Section entry point (curation.pipeline): run the stage, its errors into the run's manifest."""
        stage = cls.from_run(cfg, ctx)
        result = execute(stage, progress=cfg.ray.progress, ctx=ctx)
        ctx.stages.setdefault(cls.name, {})["errors"] = result.errors
        return result.counts


class Result:
    """What one execution of a stage did: its counts and its error lines."""

    def __init__(self, counts: dict, errors: list[str]) -> None:
        self.counts = counts  # item_count, skipped, [retried], done_count, statuses... (and the stage's own)
        self.errors = errors  # error_text of every error row of this run


def execute(stage: TableStage, local: bool = False, progress: bool = True,
            on_part: Callable[[dict], None] | None = None, ctx: "object" = None) -> Result:
    """Run `stage`: resume, steps (here or on Ray), sink, counts and errors (see the module doc).

    `ctx` (a curation.pipeline.RunContext, or None outside a run) gets the pipeline's accounting
    events, and its console decides where Ray's own output goes."""
    items = stage.items()
    todo, retried = stage.todo(items)
    counts: dict = {stage.item_count: len(items), "skipped": len(items) - len(todo)}
    if stage.count_retried:
        counts["retried"] = retried
    if stage.done_count:
        counts[stage.done_count] = 0
    counts.update({s: 0 for s in stage.statuses})
    errors: list[str] = []
    steps = stage.steps()
    stage.begin(todo)

    def sink(rows: list[dict]) -> None:
        rows = stage.prepare(rows)
        stage.write(rows)
        if stage.done_count:
            counts[stage.done_count] += len({r.get(stage.resume_key) for r in rows})
        for r in rows:
            s = stage.status(r)
            if s is not None:
                counts[s] = counts.get(s, 0) + 1
            if stage.reported(r):
                errors.append(stage.error_text(r))
        if on_part is not None:
            on_part(counts)

    every = stage.sink_every(len(todo))
    if local:
        _run_here(steps, todo, sink, every)
    elif todo:
        cpu_fallback(stage.name, steps)
        run_pipeline(todo, steps, sink, sink_every=every, progress=progress, label=stage.name,
                     console=getattr(ctx, "console", None), events=getattr(ctx, "events", None))
    return Result(stage.finish(counts, local), errors)


def _run_here(steps: list[Stage], todo: list[dict], sink: Callable[[list[dict]], None], every: int) -> None:
    """The steps in this process, `every` items at a time; engines the steps opened are closed after."""
    try:
        for i in range(0, len(todo), every):
            sink(run_local(steps, todo[i:i + every]))
    finally:
        for st in steps:
            if getattr(st, "engine", None) is not None:
                st.engine.close()


def cpu_fallback(stage: str, steps: list[Stage]) -> None:
    """A step asking for a GPU on a Ray cluster without one runs on CPU (its actor would wait forever)."""
    if not any(st.resources.num_gpus for st in steps) or _cluster_gpus():
        return
    for st in steps:
        if st.resources.num_gpus:
            key = st.resources_key or f"{stage}.resources"
            print(f"[{stage}] WARNING: {key}.num_gpus={st.resources.num_gpus} but the Ray cluster has no GPU: "
                  f"the {st.name} step runs on CPU", file=sys.stderr, flush=True)
            st.resources.num_gpus = 0


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0
