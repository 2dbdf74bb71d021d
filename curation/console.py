"""What the console shows during a run: our one bar per stage and the summary; Ray's own logging (its
loggers, Ray Data's bars, worker output, library warnings) goes to the run's log file unless verbose.

A `Console` belongs to one run (curation.pipeline.RunContext.console). Ray's loggers and its worker
output dispatcher are process-wide, so `open` points them at this console's file and `close` gives
them back.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import IO, Iterator

from curation.uris import scrub

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "py.warnings")


class ScrubbingFormatter(logging.Formatter):
    """Log records (tracebacks included) with every URI redacted: no credentials in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class Console:
    """Where Ray's own output goes for one run: the terminal (verbose) or a log file."""

    active: "Console | None" = None  # the console of the run in progress (library output inside it: output_to_log)

    def __init__(self) -> None:
        self.verbose = True  # Ray's output on the terminal (no log file open)
        self.log: IO[str] | None = None  # the run's log file while open
        self.handler: logging.Handler | None = None  # the handler Ray's loggers write through
        self._fd2: tuple | None = None  # (console stream, original sys.stderr) while fd 2 points at the log

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
        self._fd2_to_log()
        Console.active = self

    def close(self) -> None:
        """Close the log file; Ray's output goes back to the terminal."""
        self._fd2_restore()
        if self.handler is not None:  # Ray's loggers must not keep writing to the closed file
            for name in RAY_LOGGERS:
                lg = logging.getLogger(name)
                if self.handler in lg.handlers:
                    lg.removeHandler(self.handler)
                    lg.propagate = True
        if self.log is not None:
            self.log.close()
        self.verbose, self.log, self.handler = True, None, None
        logging.captureWarnings(False)
        if Console.active is self:
            Console.active = None

    def _fd2_to_log(self) -> None:
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
        stream = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")
        self._fd2 = (stream, sys.stderr)
        sys.stderr = stream
        os.dup2(self.log.fileno(), 2)

    def _fd2_restore(self) -> None:
        if self._fd2 is None:
            return
        stream, original = self._fd2
        self._fd2 = None
        stream.flush()
        os.dup2(stream.fileno(), 2)
        sys.stderr = original
        stream.close()

    @contextlib.contextmanager
    def output_to_log(self) -> Iterator[None]:
        """Console output of library code run in the driver (transformers' "Writing model shards" bar while a
        tiny demo model is saved) goes to the run's log file, unless verbose or no log file is open."""
        if self.verbose or self.log is None or self.log.closed:
            yield
            return
        with contextlib.redirect_stderr(self.log), contextlib.redirect_stdout(self.log):
            yield

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


@contextlib.contextmanager
def output_to_log() -> Iterator[None]:
    """Library output inside the run in progress goes to its log file (see Console.output_to_log); outside
    a run it stays where it is."""
    console = Console.active
    if console is None:
        yield
        return
    with console.output_to_log():
        yield
