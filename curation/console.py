"""What the console shows during a run: our one bar per stage and the summary; Ray's own logging (its
loggers, Ray Data's bars, worker output, library warnings) goes to the run's log file unless verbose.

A `Console` belongs to one run (curation.pipeline.RunContext.console). Ray's loggers and its worker
output dispatcher are process-wide, so `open` points them at this console's file and `close` gives
them back.
"""
from __future__ import annotations

import logging
import os
from typing import IO

from curation.uris import scrub

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "py.warnings")


class ScrubbingFormatter(logging.Formatter):
    """Log records (tracebacks included) with every URI redacted: no credentials in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class Console:
    """Where Ray's own output goes for one run: the terminal (verbose) or a log file."""

    def __init__(self) -> None:
        self.verbose = True  # Ray's output on the terminal (no log file open)
        self.log: IO[str] | None = None  # the run's log file while open
        self.handler: logging.Handler | None = None  # the handler Ray's loggers write through

    def open(self, log_path: str | None, verbose: bool) -> None:
        """Send Ray's own logging to `log_path` (appending) unless verbose; None restores the default."""
        self.close()
        self.verbose = verbose or log_path is None
        if self.verbose:
            return
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        self.log = open(log_path, "a", buffering=1)
        self.handler = logging.StreamHandler(self.log)
        self.handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        import ray  # noqa: F401  (ray installs its console handler on import: replace it)

        self.to_log_file()
        logging.captureWarnings(True)
        self.route_worker_output()

    def close(self) -> None:
        """Close the log file; Ray's output goes back to the terminal."""
        if self.log is not None:
            self.log.close()
        self.verbose, self.log, self.handler = True, None, None
        logging.captureWarnings(False)

    def to_log_file(self) -> None:
        """Point Ray's loggers at the run's log file. Called again once ray.data is imported (it installs its
        own handlers then; importing it before ray.init would slow the node start past Ray's timeout)."""
        if self.verbose or self.handler is None:
            return
        for name in RAY_LOGGERS:
            lg = logging.getLogger(name)
            lg.handlers = [self.handler]
            lg.propagate = False

    def route_worker_output(self) -> None:
        """Worker stdout/stderr that Ray forwards to the driver goes to the log file (Ray's own dispatcher)."""
        try:
            from ray._private import worker as ray_worker
            dispatcher = ray_worker.global_worker_stdstream_dispatcher
        except (ImportError, AttributeError):  # another Ray release: leave its console output as it is
            return

        def to_log(data: dict) -> None:
            f = self.log
            if f is None or f.closed:
                return ray_worker.print_to_stdstream(data, ignore_prefix=False)
            who = data.get("actor_name") or data.get("task_name") or ""
            for line in data.get("lines", []):
                f.write(scrub(f"({who} pid={data.get('pid')}) {line}") + "\n")

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", to_log)
