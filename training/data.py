"""Training batches: the shard loader (shards/), precomputed latents, or synthetic moving patterns.

Every loader yields dicts with `frames` [B, F, C, H, W] (uint8 0..255 from the shard loader by default,
float in [-1, 1] otherwise: tasks read them through shards.pixels.unit_range) (or `latents` [B, F, C, h, w] and
`text_emb` [B, L, D] for precomputed latents), `captions` (list[str]) and `keys` (list[str]), and has
`state_dict()` / `load_state_dict()` giving its exact position, so a resumed run sees the same batches.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from training.config import DataConfig

# Named colours of the synthetic patterns (RGB in [-1, 1]); captions use the names.
PALETTE = {
    "red": (0.9, -0.7, -0.7), "green": (-0.6, 0.8, -0.6), "blue": (-0.7, -0.5, 0.9), "yellow": (0.9, 0.8, -0.6),
    "white": (0.9, 0.9, 0.9), "purple": (0.5, -0.6, 0.7), "orange": (0.9, 0.1, -0.8), "cyan": (-0.7, 0.8, 0.8),
}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def synthetic_clip(index: int, seed: int, frames: int, height: int, width: int) -> tuple[torch.Tensor, str]:
    """One smooth moving pattern: a drifting colour gradient with a soft blob moving in a straight line.

    Deterministic in (index, seed). Returns frames [F, 3, H, W] in [-1, 1] and a caption naming the
    blob's colour and direction, so text conditioning has something to learn.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    names = list(PALETTE)
    blob_name = names[int(torch.randint(len(names), (1,), generator=g))]
    dir_name = list(DIRECTIONS)[int(torch.randint(len(DIRECTIONS), (1,), generator=g))]
    c0, c1 = (torch.rand(3, generator=g) * 1.2 - 0.6 for _ in range(2))
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    freq = 0.5 + float(torch.rand(1, generator=g))  # gradient periods across the frame
    radius = (0.12 + 0.1 * float(torch.rand(1, generator=g))) * min(height, width)
    start = torch.rand(2, generator=g) * 0.5 + 0.25
    speed = (0.6 + 0.8 * float(torch.rand(1, generator=g))) * min(height, width) / max(frames, 1) * 0.5
    dx, dy = DIRECTIONS[dir_name]
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    out = torch.empty(frames, 3, height, width)
    for t in range(frames):
        phase = 2 * math.pi * (freq * (math.cos(angle) * x + math.sin(angle) * y) - 0.05 * t)
        mix = 0.5 + 0.5 * torch.sin(phase)
        bg = c0.view(3, 1, 1) + (c1 - c0).view(3, 1, 1) * mix
        cx = start[0] * width + dx * speed * t
        cy = start[1] * height + dy * speed * t
        d2 = (x * width - cx) ** 2 + (y * height - cy) ** 2
        alpha = torch.exp(-d2 / (2 * radius**2))
        out[t] = bg * (1 - alpha) + torch.tensor(PALETTE[blob_name]).view(3, 1, 1) * alpha
    return out.clamp(-1, 1), f"a {blob_name} blob moving {dir_name} over a soft colour gradient"


class SyntheticLoader:
    """Endless batches of synthetic clips; rank r of w takes every w-th batch of one global sequence."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, seed: int | None = None,
                 clips: int | None = None):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.seed = cfg.synthetic_seed if seed is None else seed
        self.clips = clips or cfg.synthetic_clips
        self.position = 0  # batches this rank has yielded
        self._cache: dict[int, tuple[torch.Tensor, str]] = {}

    def _clip(self, index: int) -> tuple[torch.Tensor, str]:
        if index not in self._cache:  # clips repeat every `clips`; generating is the slow part
            self._cache[index] = synthetic_clip(index, self.seed, self.cfg.frames, self.cfg.height, self.cfg.width)
        return self._cache[index]

    def batch(self, position: int) -> dict[str, Any]:
        b = self.cfg.batch_size
        first = (position * self.world_size + self.rank) * b
        idx = [(first + j) % self.clips for j in range(b)]
        clips = [self._clip(i) for i in idx]
        return {"frames": torch.stack([c[0] for c in clips]), "captions": [c[1] for c in clips],
                "keys": [f"synthetic-{self.seed}-{i}" for i in idx], "meta": [{} for _ in idx]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            out = self.batch(self.position)
            self.position += 1
            yield out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class LatentLoader:
    """Batches of precomputed latents + T5 embeddings (files written by `python -m training latents`).

    Latents of several buckets have different shapes: a batch only ever holds one shape. The batches of
    an epoch are each shape's items in file order cut into batch_size chunks (a shape's last chunk may
    be smaller), ordered by their first item; rank r of w takes every w-th batch.
    """

    def __init__(self, folder: str, batch_size: int, rank: int = 0, world_size: int = 1):
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
        if not files:
            raise FileNotFoundError(f"training.data.latents_dir {folder!r}: no .safetensors latent files "
                                    f"(write them with `python -m training latents pipelines.yaml`)")
        self.items: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        for name in files:
            data = load_file(os.path.join(folder, name))
            for i in range(data["latents"].shape[0]):
                self.items.append((data["latents"][i], data["text_emb"][i], f"{name}:{i}"))
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.batches = self._plan()
        self.position = 0

    def _plan(self) -> list[list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i, (z, emb, _) in enumerate(self.items):
            groups.setdefault((tuple(z.shape), tuple(emb.shape)), []).append(i)
        chunks = [idx[j:j + self.batch_size] for idx in groups.values() for j in range(0, len(idx), self.batch_size)]
        return sorted(chunks, key=lambda c: c[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            chunk = self.batches[(self.position * self.world_size + self.rank) % len(self.batches)]
            items = [self.items[i] for i in chunk]
            self.position += 1
            yield {"latents": torch.stack([i[0] for i in items]), "text_emb": torch.stack([i[1] for i in items]),
                   "captions": [""] * len(items), "keys": [i[2] for i in items]}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class StagedLoader:
    """Progressive training: one inner loader per stage (training.stages), switched by the trainer's step.

    `set_step(step)` builds the loader of the stage that step falls in (a new stage starts its data from
    the beginning); the state holds the stage and its loader's exact position, so a resumed run lands in
    the same stage at the same batch.
    """

    def __init__(self, make: Callable[[int], Any], stage_at: Callable[[int], int]):
        self.make, self.stage_at = make, stage_at
        self.stage = 0
        self.inner = make(0)
        self._it: Iterator[dict[str, Any]] | None = None

    def set_step(self, step: int) -> None:
        stage = self.stage_at(step)
        if stage != self.stage:
            self._switch(stage)

    def _switch(self, stage: int) -> None:
        if self._it is not None:
            self._it.close()  # stops the old stage's DataLoader workers
        self.stage, self.inner, self._it = stage, self.make(stage), None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if self._it is None:
                self._it = endless(self.inner)
            yield next(self._it)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._switch(int(state["stage"]))  # a fresh inner loader (and iterator) at the saved position
        self.inner.load_state_dict(state["inner"])


def stage_loader(pipeline_cfg: Any, stage: int, rank: int, world_size: int) -> Any:
    """The loader of progressive stage `stage`: the shard loader with the stage's buckets, or synthetic
    clips of the stage's one shape."""
    tcfg = pipeline_cfg.training
    s, data = tcfg.stages[stage], tcfg.data
    key = f"training.stages[{stage}]"
    if data.source in ("latents", "cache"):
        raise ValueError(f"{key}: progressive stages need data.source shards or synthetic (not {data.source})")
    if data.source == "synthetic":
        if len(s.buckets) != 1:
            raise ValueError(f"{key}.buckets: synthetic data has one shape per stage (got {len(s.buckets)} buckets)")
        b = s.buckets[0]
        size = s.batch_size or b.batch_size or data.batch_size
        return SyntheticLoader(data.model_copy(update={"frames": b.frames, "height": b.height, "width": b.width,
                                                       "batch_size": size}), rank, world_size)
    from shards.loader import ShardLoader

    lc = pipeline_cfg.shard.loader
    lc = lc.model_copy(update={"buckets": list(s.buckets), "batch_size": s.batch_size or lc.batch_size})
    return ShardLoader(pipeline_cfg.shard.model_copy(update={"loader": lc}), rank=rank, world_size=world_size,
                       seed=tcfg.seed, root=pipeline_cfg.root, weights=data.weights)


def build_loader(pipeline_cfg: Any, out_dir: str, rank: int, world_size: int) -> Any:
    """The loader that training.data.source names, for this rank."""
    data = pipeline_cfg.training.data
    if pipeline_cfg.training.stages:
        return StagedLoader(lambda s: stage_loader(pipeline_cfg, s, rank, world_size), pipeline_cfg.training.stage_at)
    if data.source == "synthetic":
        return SyntheticLoader(data, rank, world_size)
    if data.source == "latents":
        return LatentLoader(data.latents_dir or os.path.join(out_dir, "latents"), data.batch_size, rank, world_size)
    if data.source == "cache":  # built by training.cache.cache_loader (it needs the frozen encoders' ids)
        raise ValueError("training.data.source=cache: the loader is training.cache.cache_loader (python -m training "
                         "builds it); build_loader reads shards, synthetic clips or latents")
    from shards.loader import ShardLoader  # owns decoding, frame sampling, buckets and batch size (shard.loader)

    if rank == 0:
        write_data_manifest(pipeline_cfg, out_dir)
    return ShardLoader(pipeline_cfg, rank=rank, world_size=world_size, seed=pipeline_cfg.training.seed,
                       weights=data.weights)


def write_data_manifest(pipeline_cfg: Any, out_dir: str) -> str:
    """<out_dir>/data_manifest.json: the shards, sampling weights and score text this run trains with."""
    import json

    data = pipeline_cfg.training.data
    path = os.path.join(out_dir, "data_manifest.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"source": data.source, "shards": pipeline_cfg.shard.loader.shards or
                   f"{pipeline_cfg.root.rstrip('/')}/shards/{pipeline_cfg.shard.writer.name}",
                   "weights": data.weights.model_dump(mode="json")}, f, indent=2)
    return path


def endless(loader: Any) -> Iterator[dict[str, Any]]:
    """Batches across epochs: a loader whose iteration ends (one epoch) is iterated again."""
    while True:
        got = False
        for batch in loader:
            got = True
            yield batch
        if not got:
            raise RuntimeError("the training loader produced no batch in a whole epoch (empty shards, or every "
                               "sample too short for the buckets: see shard.loader.buckets)")
