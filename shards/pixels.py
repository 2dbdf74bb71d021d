"""Loader pixels -> model inputs: the one place uint8 frames become floats in [-1, 1].

The loader emits uint8 frames by default (shard.loader.frames_dtype): a quarter of the bytes through the
DataLoader's shared memory and the host-to-device copy, and no float pass in the worker. Every consumer
of batch["frames"] calls `unit_range`, which also accepts float frames (frames_dtype float32, the
synthetic data) unchanged, so both give bit-identical model inputs.
"""
from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 -1..1 (x / 127.5 - 1: 0 and 255 land exactly on -1 and 1)."""
    return x.float().div_(127.5).sub_(1.0)


def unit_range(frames: torch.Tensor, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, non_blocking: bool = False) -> torch.Tensor:
    """batch["frames"] on `device` as `dtype` in [-1, 1]; uint8 frames are moved as bytes, converted there."""
    x = frames.to(device, non_blocking=non_blocking) if device is not None else frames
    if x.dtype == torch.uint8:
        x = to_unit(x)
    return x.to(dtype)
