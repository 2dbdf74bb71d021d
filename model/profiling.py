"""Exact peak CPU tensor memory of a call (VAE memory tests, bench/model.py) and the bytes autograd saves
for backward (transformer memory tests)."""
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


def saved_tensor_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """(fn(), bytes of the tensors autograd saves for backward during the call), each storage counted
    once, parameters and their views left out (weights stacked into a new tensor count): what a training
    step holds from forward into backward."""
    import torch

    params: set[int] = set()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):  # a weight or its .t()
            params.add(t.untyped_storage().data_ptr())
        else:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(n for ptr, n in storages.items() if ptr not in params)
