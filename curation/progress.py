"""Progress on the console: one bar per stage (from the rows as they arrive), and a one-line report
for driver-side loops."""
from __future__ import annotations

import sys
import time


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


class Progress:
    """A one-line progress report on stderr for driver-side loops (Ray shows its own bars too)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.t0 = total, label, 0, time.time()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        print(f"[{self.label}] {self.done}/{self.total} ({rate:.2f}/s)", file=sys.stderr, flush=True)
