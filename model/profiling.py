"""Exact peak CPU tensor memory of a call, for the VAE memory tests and bench/model.py."""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def cpu_peak_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """(fn(), peak bytes of CPU tensor memory allocated during the call above what was live before it).

    Uses the profiler's allocator events (profile_memory=True): every allocation and free through
    PyTorch's CPU allocator carries the running total, so the peak is exact and independent of glibc
    caching or other processes (RSS-based numbers are not: freed blocks stay resident and get reused).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation and e.typed[1].device.type == "cpu":
            events.append((e.start_time_ns, e.typed[1].total_allocated, e.typed[1].alloc_size))
    if not events:
        return out, 0
    events.sort()
    before = events[0][1] - events[0][2]
    return out, max(total for _, total, _ in events) - before
