"""Exposure of the picture inside black bars: luma level and the shares of crushed and clipped pixels.

Measured on full-range luma (0-255) of small gray frames (shares and means need no detail), cropped
to the borders scorer's picture box, so a letterboxed film does not read as underexposed.
`mean`: mean luma / 255; `dark`: share of pixels at or below `dark_level` (crushed blacks);
`bright`: share at or above `bright_level` (clipped highlights). Each is the median over the sampled
frames: one flash or fade-to-black frame is not an exposure problem; a clip that stays so is.
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


class ExposureScorer(Scorer):
    Config = ExposureConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"mean": pa.float32(), "dark": pa.float32(), "bright": pa.float32()}

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("gray", self.cfg.short_side)]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        g = clip.inner(FrameSpec("gray", self.cfg.short_side).key).reshape(len(clip.times), -1)
        return {"mean": float(np.median(g.mean(axis=1))) / 255.0,
                "dark": float(np.median((g <= self.cfg.dark_level).mean(axis=1))),
                "bright": float(np.median((g >= self.cfg.bright_level).mean(axis=1)))}
