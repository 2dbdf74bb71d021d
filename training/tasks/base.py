"""The contract between the trainer and a task.

The trainer builds the task's models, shards them (parallelize.py), owns optimisers, LR schedules,
gradient clipping, the NaN guard, checkpoints and logging. A task says which models are trained,
which of their ModuleLists are the repeated blocks, and how one batch turns into gradients.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.config import TrainingConfig
from training.parallelize import DistInfo


class Task:
    """Base class; subclasses implement build_models, block_lists and forward_backward."""

    name = "task"

    def __init__(self, cfg: TrainingConfig, info: DistInfo, out_dir: str):
        self.cfg, self.info, self.out_dir = cfg, info, out_dir
        self.models: dict[str, nn.Module] = {}

    # --- building -------------------------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        """Trained models by name, unwrapped, identically initialised on every rank (same seed)."""
        raise NotImplementedError

    def block_lists(self, name: str, model: nn.Module) -> list[nn.ModuleList]:
        """ModuleLists of repeated blocks of model `name`: each entry is sharded/checkpointed on its own."""
        return []

    def lr(self, name: str) -> float:
        """Peak learning rate of model `name`."""
        return self.cfg.optim.lr

    def setup(self, models: dict[str, nn.Module]) -> None:
        """Called once the models are sharded: keep references, build frozen helpers (VAE, text encoder)."""
        self.models = models

    # --- one step ------------------------------------------------------------------------------------
    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """Compute the loss of `batch` at optimiser step `step` (0-based) and backpropagate it.

        Returns metrics: "loss" (a detached scalar tensor, checked for NaN/inf), other scalar terms,
        and the ints "samples" and "tokens" this rank processed (for throughput).
        """
        raise NotImplementedError

    def flops_per_step(self, batch: dict[str, Any]) -> float | None:
        """Analytic model FLOPs (forward + backward) of one step on `batch` for MFU; None = count them
        with FlopCounterMode on the first step instead (not possible with torch.compile)."""
        return None

    def after_optimizer_step(self, step: int) -> None:
        """Hook after a successful update (EMA)."""

    # --- state ---------------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Any]:
        """Small per-rank state for exact resume (generators)."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def task_tensors(self) -> dict[str, Any]:
        """Sharded tensors saved through DCP with the models (EMA weights); loaded in place."""
        return {}

    def meta(self) -> dict[str, Any]:
        """JSON-able facts stored in meta.json (task name, config) so sampling can rebuild the models."""
        return {"task": self.name, "config": self.cfg.model_dump(mode="json")}

    # --- outputs -------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int, folder: str) -> list[str]:
        """Write validation samples for `step` under folder (collective: every rank calls it)."""
        return []

    def export(self, folder: str) -> list[str]:
        """Write the trained weights in diffusers format under folder (collective; rank 0 writes)."""
        return []
