"""Retries of object-store calls: transient errors (503 SlowDown, throttling, resets, timeouts, dropped
connections) are tried again with exponential backoff and full jitter; everything else fails at once.

pyarrow's S3 client already retries a few times itself; this layer catches what it gives up on and what
it never retries (a connection dropped mid-response), and counts every retry per call type, so a run's
manifest says how hard the store pushed back (`retries` in runs/<run_id>.json). Counts are per process:
the driver's calls (tables, manifests, listings) are the ones the manifest shows.
"""
from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

# Lower-cased fragments of the messages pyarrow/AWS SDK and the OS give for errors worth another try.
TRANSIENT = ("slowdown", "slow down", "slow_down", "service_unavailable", "internal_failure", "throttling",
             "request_timeout", "server returned nothing", "503", "500 ", "internal error", "internalerror", "service unavailable",
             "throttl", "requesttimeout", "timeout", "timed out", "connection reset", "connection refused",
             "broken pipe", "connection aborted", "unexpected eof", "curl error", "curlcode", "network_connection",
             "unable to connect", "empty reply", "transfer closed", "failed to read", "couldn't connect",
             "server closed", "remote end closed", "partial file", "recv failure", "send failure")


@dataclass
class Policy:
    """How hard to try one call."""

    attempts: int = 8  # tries per call, the first included (8: ~7 s of backoff at most, ~3.5 s on average)
    base_s: float = 0.1  # backoff before the first retry; doubles each time
    max_s: float = 2.0  # cap on one backoff
    seed: int | None = None  # jitter RNG seed (tests); None: random


POLICY = Policy()
COUNTS: Counter = Counter()  # "<op>" -> retries in this process since the last take()
FAILED: Counter = Counter()  # "<op>" -> calls that failed after every attempt
_rng = random.Random()


def transient(e: BaseException) -> bool:
    """Is `e` an error an object store gives for a while and then not (worth another try)?"""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    msg = str(e).lower()
    return isinstance(e, OSError) and any(t in msg for t in TRANSIENT)


def call(op: str, fn: Callable[..., T], *args: object, policy: Policy | None = None, **kw: object) -> T:
    """fn(*args, **kw), tried again on transient errors with backoff and full jitter (counted under `op`)."""
    p = policy or POLICY
    rng = random.Random(p.seed) if p.seed is not None else _rng
    for attempt in range(1, p.attempts + 1):
        try:
            return fn(*args, **kw)
        except Exception as e:
            if not transient(e) or attempt == p.attempts:
                if transient(e):
                    FAILED[op] += 1
                    raise OSError(f"object store: {op} failed after {attempt} attempts; last error: "
                                  f"{type(e).__name__}: {e}") from e
                raise
            COUNTS[op] += 1
            # Full jitter (AWS's advice): many workers hit by one throttle do not come back in step.
            time.sleep(rng.uniform(0, min(p.max_s, p.base_s * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


def take() -> dict:
    """{"retries": {op: n}, "gave_up": {op: n}} counted since the last take(), and reset."""
    out = {"retries": dict(sorted(COUNTS.items())), "gave_up": dict(sorted(FAILED.items()))}
    COUNTS.clear()
    FAILED.clear()
    return out


def snapshot() -> dict:
    return {"retries": dict(sorted(COUNTS.items())), "gave_up": dict(sorted(FAILED.items()))}
