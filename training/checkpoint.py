"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, atomic, keep-last-k, exact resume.

Layout of one checkpoint (`<out_dir>/checkpoints/step_00000100/`):
    .metadata, __*_*.distcp   DCP: every trained model, its optimiser, task tensors (EMA), sharded per rank
    rank_00000.pt ...         per-rank state: step, LR schedules, RNG states, loader position, task generators
    meta.json                 step, world size, task, the training config (so `training sample` can rebuild models)
A checkpoint is written to `step_X.tmp` and renamed once every rank has finished, so a crash mid-save
never leaves a directory that looks complete; the previous checkpoint stays intact until the new one is.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

STEP_DIR = re.compile(r"^step_(\d{8})$")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    """Every global RNG a step may touch: python, numpy, torch CPU and (when present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_root: str) -> list[str]:
    """Complete checkpoints under ckpt_root, oldest first (temporary `.tmp` folders are ignored)."""
    if not os.path.isdir(ckpt_root):
        return []
    names = sorted(n for n in os.listdir(ckpt_root) if STEP_DIR.match(n))
    return [os.path.join(ckpt_root, n) for n in names if os.path.isfile(os.path.join(ckpt_root, n, "meta.json"))]


def read_meta(path: str) -> dict[str, Any]:
    """meta.json of a checkpoint; clear error when `path` is not one."""
    meta = os.path.join(path, "meta.json")
    if not os.path.isfile(meta):
        raise FileNotFoundError(f"{path!r} is not a training checkpoint (no meta.json); "
                                f"pass a <out_dir>/checkpoints/step_XXXXXXXX folder or a run's out_dir")
    with open(meta) as f:
        return json.load(f)


def resolve_checkpoint(path: str) -> str:
    """Accept a checkpoint folder, a checkpoints/ folder or a run folder; return the newest checkpoint in it."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no training checkpoint found at {path!r}")


class Checkpointer:
    """Saves and restores the full training state of one run."""

    def __init__(self, out_dir: str, every: int, keep: int, rank: int, world_size: int, cp_size: int = 1):
        self.root = os.path.join(out_dir, "checkpoints")
        self.every, self.keep, self.rank, self.world_size = every, keep, rank, world_size
        self.cp_size = cp_size  # context-parallel group size: part of the layout that exact resume needs

    def latest(self) -> str | None:
        found = list_checkpoints(self.root)
        return found[-1] if found else None

    @staticmethod
    def _sharded(models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        state: dict[str, Any] = {"model": {}, "optim": {}}
        for name, model in models.items():
            state["model"][name], state["optim"][name] = get_state_dict(model, optimizers[name])
        return state

    def save(self, step: int, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             task_tensors: dict[str, Any], rank_state: dict[str, Any], meta: dict[str, Any]) -> str:
        """Write checkpoint `step` atomically (tmp folder + rename after a barrier), then prune old ones."""
        final = os.path.join(self.root, f"step_{step:08d}")
        tmp = final + ".tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()
        state = self._sharded(models, optimizers)
        state["task"] = task_tensors
        dcp.save(state, checkpoint_id=tmp)
        torch.save(rank_state, os.path.join(tmp, f"rank_{self.rank:05d}.pt"))
        _barrier()
        if self.rank == 0:
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({**meta, "step": step, "world_size": self.world_size, "cp_size": self.cp_size}, f, indent=1)
            if os.path.exists(final):  # a re-run of the same step (e.g. after a crash between save and prune)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.root)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: str, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             task_tensors: dict[str, Any]) -> dict[str, Any]:
        """Restore models, optimisers and task tensors in place; return this rank's per-rank state."""
        meta = read_meta(path)
        old_cp = meta.get("cp_size", 1)
        relayout = old_cp != self.cp_size or meta["world_size"] != self.world_size
        state = self._sharded(models, optimizers)
        state["task"] = task_tensors
        dcp.load(state, checkpoint_id=path)
        for name, model in models.items():
            set_state_dict(model, optimizers[name], model_state_dict=state["model"][name],
                           optim_state_dict=state["optim"][name])
        if relayout:
            # Another layout (process count or cp_size, e.g. dp=2 -> cp=2): DCP resharded weights, optimiser
            # and task tensors; step, schedules and the NaN count are global (rank 0's file). Data positions
            # and RNG were per rank of the old layout and do not map: they start afresh (same layout: exact).
            if self.rank == 0:
                print(f"[training] {path}: written with cp_size {old_cp} on {meta['world_size']} processes, "
                      f"resumed with cp_size {self.cp_size} on {self.world_size}: weights and optimiser resharded, "
                      f"data order and random streams restart", flush=True)
            state = torch.load(os.path.join(path, "rank_00000.pt"), weights_only=False)
            return {**state, "relayout": True}
        return torch.load(os.path.join(path, f"rank_{self.rank:05d}.pt"), weights_only=False)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict of a (possibly FSDP-wrapped) model, on rank 0 only (empty elsewhere)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_weights(path: str, name: str, model: nn.Module, ema: bool = False) -> nn.Module:
    """Load one model's weights (or its EMA) from a checkpoint into a plain, unsharded module.

    Works in a single process without a process group (sampling, export): DCP reshards on load.
    """
    if ema:  # the EMA holds parameters only (buffers come from the model's own state)
        sd = {n: p.detach() for n, p in model.named_parameters()}
        state: dict[str, Any] = {"task": {"ema": {name: sd}}}
    else:
        sd = model.state_dict()
        state = {"model": {name: sd}}
    dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    model.load_state_dict(sd, strict=not ema)
    return model
