"""A stand-in Task for testing the trainer without the real models: a tiny per-pixel MLP denoiser.

Usable from the CLI as `--task tests.training.toy:ToyTask`. TOY_NAN_AT=<step>[,<step>...] makes the loss
NaN at those optimiser steps (NaN-guard tests).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from shards.pixels import unit_range
from training.tasks.base import Task


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(torch.nn.functional.gelu(self.norm(x)))


class Toy(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2):
        super().__init__()
        self.inp = nn.Linear(3, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., 3]
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        # nn.Linear on an N-d input returns a view of its 2-d matmul; FSDP2 hooks the root's output for its
        # pre-backward all-gather, so give it a tensor of its own (what a real head's reshape copy does)
        return self.out(h).clone()


class ToyTask(Task):
    """Predict clean frames from noisy ones; per-rank noise comes from a generator saved for resume."""

    name = "toy"

    def build_models(self) -> dict[str, nn.Module]:
        self.gen = torch.Generator().manual_seed(1234 + self.info.rank)
        return {"toy": Toy()}

    def block_lists(self, name: str, model: nn.Module) -> list[nn.ModuleList]:
        return [model.blocks]

    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        x = unit_range(batch["frames"], self.info.device).movedim(2, -1)  # B,F,H,W,C
        noisy = x + 0.3 * torch.randn(x.shape, generator=self.gen).to(x.device)
        noisy = noisy + 0.01 * torch.randn_like(noisy)  # global RNG too: resume must restore it
        loss = torch.nn.functional.mse_loss(self.models["toy"](noisy), x)
        if str(step) in os.environ.get("TOY_NAN_AT", "").split(","):
            loss = loss * float("nan")
        loss.backward()
        return {"loss": loss.detach(), "samples": x.shape[0], "tokens": x[..., 0].numel()}

    def rank_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


class DeterministicToyTask(ToyTask):
    """The toy without random noise (the input is the clip at half contrast): a step's gradient depends on
    the batch only, so gradient accumulation can be compared with one bigger batch."""

    name = "toy"

    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        x = unit_range(batch["frames"], self.info.device).movedim(2, -1)
        loss = torch.nn.functional.mse_loss(self.models["toy"](0.5 * x), x)
        loss.backward()
        return {"loss": loss.detach(), "samples": x.shape[0], "tokens": x[..., 0].numel()}
