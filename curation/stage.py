"""The contract of a pipeline stage.

A stage is a small class: `setup()` loads models once per worker (a Ray actor, or the test process),
`__call__(rows) -> rows` does the work on a batch of row dicts, and `resources` says what a worker
needs. The runner turns a list of stages into one Ray Data pipeline; the same objects run in-process
in unit tests (`run_local`).
"""
from __future__ import annotations

import traceback

from curation.schema import Resources, check_pool  # noqa: F401 (check_pool: re-exported, its old home)
from curation.storage import DiskFull


# A step's resources are the config's own model (a copy: the GPU fallback changes the step's, never the config's).
StageResources = Resources


class Stage:
    """Base class of a stage. Subclasses set `name`, override `process_row` or `__call__`."""

    name: str = "stage"
    #: A stateful stage (models loaded in setup) runs as a pool of Ray actors; a stateless one as tasks.
    stateful: bool = False
    #: The config key of its resources, for messages (e.g. "filter.model.resources"); None: "<stage>.resources".
    resources_key: str | None = None

    def __init__(self, resources: StageResources | None = None) -> None:
        self.resources = resources or StageResources()
        self._ready = False

    def setup(self) -> None:
        """Load models or open resources once per worker."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def process_row(self, row: dict) -> list[dict]:
        """Work on one row; return zero or more output rows."""
        raise NotImplementedError

    def error_rows(self, row: dict, message: str) -> list[dict]:
        """The row(s) that record a failure of `row` (stages override to fit their table)."""
        return [{**row, "error": message}]

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        out: list[dict] = []
        for row in rows:
            try:
                out.extend(self.process_row(row))
            except DiskFull:  # not the input's fault, and every later write would fail too: stop the run
                raise
            except Exception as e:  # one bad input never stops the batch: it becomes an error row
                msg = f"{type(e).__name__}: {e}"
                if not str(e):
                    msg += " | " + traceback.format_exc(limit=3).replace("\n", " ")
                out.extend(self.error_rows(row, msg))
        return out


def run_local(stages: list[Stage], rows: list[dict]) -> list[dict]:
    """Run stages one after another in this process (tests, tiny inputs)."""
    for st in stages:
        bs = max(1, st.resources.batch_size)
        nxt: list[dict] = []
        for i in range(0, len(rows), bs):
            nxt.extend(st(rows[i:i + bs]))
        rows = nxt
    return rows
