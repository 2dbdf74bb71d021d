"""Frozen frames and slideshows: stretches where the picture does not change at all.

A camera or a renderer never produces two identical frames half a second apart while anything moves
(sensor noise alone changes every pixel a little); a frozen encode, a held frame or a slideshow
(stills held 1-2 s) does. Consecutive sampled frames (small gray, inside black bars) whose mean absolute
difference is at most `eps` (0-1 luma) are a frozen pair; runs of frozen pairs are held stretches.
`longest_s`: the longest held stretch, seconds; `share`: the share of the clip's sampled time held;
`jumps`: held stretches that end in a change bigger than `jump` (a slideshow's next slide).
A clip with fewer than `min_moving` sampled pairs changing by more than `moving` is not judged here (all
metrics 0): a stock tripod shot where nothing moves is encoded as near-identical frames, exactly like a
frozen clip, and no pixel statistic tells them apart; the motion filter (`motion_level`) drops both.
So this judges held stretches and slides inside clips that otherwise move.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class FrozenConfig(ScorerConfig):
    """filter.scorers.<name> with type: frozen."""

    short_side: int = Field(64, ge=16, le=512)  # analysis frame size (short side, px)
    # A pair of sampled frames whose mean |difference| (0-1 luma) is <= this is frozen. Measured at 64 px: held
    # frames re-encoded 0-0.00005, a still real shot with a living picture (Sintel, a tripod shot) >= 0.00065;
    # a stock tripod shot where nothing at all moves 0.000004-0.00008 (frozen by the encoder: reads as held).
    eps: float = Field(0.0003, ge=0)
    jump: float = Field(0.02, ge=0)  # a held stretch ending in a bigger change than this counts as a slide change
    moving: float = Field(0.002, ge=0)  # a sampled pair changing more than this moves (0-1 mean |difference|)
    # A clip with fewer moving pairs is still (or a still shot and one cut: a 2-s window of a tripod shot
    # with a cut reads exactly like two held stills) and is not judged: motion_level's, and split's.
    min_moving: int = Field(2, ge=1)


class FrozenScorer(Scorer):
    Config = FrozenConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"longest_s": pa.float32(), "share": pa.float32(), "jumps": pa.float32()}

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("gray", self.cfg.short_side)]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        g = clip.inner(FrameSpec("gray", self.cfg.short_side).key).astype(np.float32)
        if len(g) < 2:
            return {"longest_s": None, "share": None, "jumps": None}
        diff = np.abs(np.diff(g, axis=0)).reshape(len(g) - 1, -1).mean(axis=1) / 255.0
        dt = np.diff(clip.times)
        if (diff > self.cfg.moving).sum() < self.cfg.min_moving:  # a still clip: motion_level's judgement
            return {"longest_s": 0.0, "share": 0.0, "jumps": 0.0}
        held = diff <= self.cfg.eps
        longest = run = 0.0
        jumps = 0
        for i, h in enumerate(held):
            run = run + dt[i] if h else 0.0
            longest = max(longest, run)
            if not h and i and held[i - 1] and diff[i] > self.cfg.jump:
                jumps += 1
        return {"longest_s": float(longest), "share": float(dt[held].sum() / max(dt.sum(), 1e-9)),
                "jumps": float(jumps)}
