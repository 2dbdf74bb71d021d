"""Frozen frames and slideshows: stretches where the picture does not change at all.

A camera never produces two identical frames half a second apart, even on a tripod pointed at a still
object: sensor noise and the encoder's changing quantisation move every block a little. A frozen
encode, a held frame, a still image shown as video or a slideshow does produce them. Consecutive
sampled frames (gray, inside the black bars, at `short_side`, never scaled up) whose mean absolute
difference is at most `eps` grey levels are a held pair; runs of held pairs are held stretches. `longest_s`: the longest held stretch, seconds (one held pair = 1/sample_fps);
`share`: the share of the clip's sampled time held; `jumps`: held stretches that end in a change bigger
than `jump` grey levels (a slideshow's next slide).

Measured on bench/judgement.py's calibration part (frames 0.5 s apart, 256 px): held frames re-encoded
0-0.012 grey levels, a real static shot (a tripod shot of a fishbowl from a documentary) 0.22-0.54,
Sintel >= 2.8: an 18x gap, `eps` sits at its geometric middle (at 64 px: 0-0.011 against 0.16-0.38).
Still clips are judged too: an earlier version skipped clips with fewer than 2 moving pairs, taking a
slideshow of photographs (PySceneDetect's testvideo) for a tripod shot, and so never judged a frozen clip.
Plain frames (a black screen, a title card on black: `plain` of the pixels within `plain_levels` of
the frame's median) are left out: a held card is the text and exposure filters' business.
Known limit: a picture with no noise at all that does not change (a still photograph shown as video,
a render where nothing moves) is frozen by this definition, and is dropped.
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

    # Analysis size (short side, px), never upscaled: shared with the sharpness and BRISQUE frames (no extra
    # conversion). A still camera's noise survives downscaling: 64 px gives about the same gap.
    short_side: int = Field(256, ge=64, le=1080)
    # A sampled pair whose mean |difference| (grey levels, 0-255) is <= this is held. bench/judgement.py
    # calibration part at 256 px: held frames re-encoded 0-0.012, a real static shot >= 0.22.
    eps: float = Field(0.05, ge=0)
    jump: float = Field(5.0, ge=0)  # a held stretch ending in a bigger change (grey levels) counts as a slide change
    plain_levels: float = Field(2.0, ge=0)  # a frame is plain when `plain` of its pixels are within this of its median
    plain: float = Field(0.85, gt=0, le=1)


class FrozenScorer(Scorer):
    Config = FrozenConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"longest_s": pa.float32(), "share": pa.float32(), "jumps": pa.float32()}

    def spec(self) -> FrameSpec:
        return FrameSpec("gray", self.cfg.short_side, upscale=False)

    def frame_specs(self) -> list[FrameSpec]:
        return [self.spec()]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        g = clip.inner(self.spec().key).astype(np.float32)
        if len(g) < 2:
            return {"longest_s": None, "share": None, "jumps": None}
        flat = g.reshape(len(g), -1)
        med = np.median(flat, axis=1, keepdims=True)
        plain = (np.abs(flat - med) <= self.cfg.plain_levels).mean(axis=1) >= self.cfg.plain
        diff = np.abs(np.diff(flat, axis=0)).mean(axis=1)
        dt = np.diff(clip.times)
        judged = ~(plain[:-1] | plain[1:])  # a pair with a plain frame is neither held nor moving
        if not judged.any():  # all cards or black: nothing to judge here
            return {"longest_s": None, "share": None, "jumps": None}
        held = judged & (diff <= self.cfg.eps)
        return held_runs(held, diff, dt, judged, self.cfg.jump)


def held_runs(held: np.ndarray, diff: np.ndarray, dt: np.ndarray, judged: np.ndarray, jump: float) -> dict[str, Any]:
    """Longest held stretch (s), the held share of the judged time, and held stretches ending in a jump."""
    longest = run = 0.0
    jumps = 0
    for i, h in enumerate(held):
        run = run + dt[i] if h else 0.0
        longest = max(longest, run)
        if not h and i and held[i - 1] and diff[i] > jump:
            jumps += 1
    return {"longest_s": float(longest), "share": float(dt[held].sum() / max(dt[judged].sum(), 1e-9)),
            "jumps": float(jumps)}
