"""Exposure of the picture inside black bars: luma level and the shares of crushed and clipped pixels.

Measured on full-range luma (0-255) of small gray frames (shares and means need no detail), cropped
to the borders scorer's picture box, so a letterboxed film does not read as underexposed.
`mean`: mean luma / 255; `dark`: share of pixels at or below `dark_level` (crushed blacks);
`bright`: share at or above `bright_level` (clipped highlights). Each is the median over the sampled
frames: one flash or fade-to-black frame is not an exposure problem; a clip that stays so is.
`highlight`: the 99th percentile of luma / 255, the top of the histogram. Mean luma cannot tell a night
scene from an underexposed copy (bench/judgement.py's calibration part: Sintel's night shots read mean
0.07-0.09, as dark as or darker than its gain-reduced copies), but a night scene keeps its highlights
(lamps, a lit face: p99 >= 0.27 there) while underexposure pulls the whole histogram down (p99 0.14-0.18).
Cards are not footage: a frame that is plain (`plain` of its pixels within `plain_levels` of its median)
with something drawn on it (its brightest 0.1% `card_levels` above the median: a title card, a caption on
black) is left out; a clip of cards only is not judged (None). A plain frame with nothing on it (a black
or white screen) is judged as it is: black footage is dropped.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class ExposureConfig(ScorerConfig):
    """filter.scorers.<name> with type: exposure."""

    short_side: int = Field(64, ge=16, le=1080)  # analysis frame size (short side, px)
    dark_level: int = Field(10, ge=0, le=255)  # a pixel at or below this luma (0-255) is crushed black
    bright_level: int = Field(250, ge=0, le=255)  # a pixel at or above this luma is clipped white
    plain_levels: float = Field(2.0, ge=0)  # a frame is plain when `plain` of its pixels are within this of its median
    plain: float = Field(0.85, gt=0, le=1)
    card_levels: float = Field(24.0, ge=0)  # ... and a card when its brightest 0.1% are this far above the median


class ExposureScorer(Scorer):
    Config = ExposureConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"mean": pa.float32(), "dark": pa.float32(), "bright": pa.float32(), "highlight": pa.float32()}

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("gray", self.cfg.short_side)]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        g = clip.inner(FrameSpec("gray", self.cfg.short_side).key).reshape(len(clip.times), -1).astype(np.float32)
        g = g[~self.cards(g)]
        if not len(g):  # title cards / captions on a plain background only: not footage to judge
            return {"mean": None, "dark": None, "bright": None, "highlight": None}
        return {"mean": float(np.median(g.mean(axis=1))) / 255.0,
                "dark": float(np.median((g <= self.cfg.dark_level).mean(axis=1))),
                "bright": float(np.median((g >= self.cfg.bright_level).mean(axis=1))),
                "highlight": float(np.median(np.percentile(g, 99, axis=1))) / 255.0}

    def cards(self, g: np.ndarray) -> np.ndarray:
        """(T,) True where a frame (T, pixels) is a card: plain, with text or a logo drawn on it."""
        med = np.median(g, axis=1, keepdims=True)
        plain = (np.abs(g - med) <= self.cfg.plain_levels).mean(axis=1) >= self.cfg.plain
        return plain & (np.percentile(g, 99.9, axis=1) - med[:, 0] > self.cfg.card_levels)
