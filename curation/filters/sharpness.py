"""Sharpness / blur of the picture (inside black bars), independent of the clip's resolution.

`blur`: scikit-image's blur_effect (Crete-Roffe et al. 2007): how much of the picture's edge energy a
further blur would remove, 0 (sharp) to 1 (blurry). It is a ratio, so flat or dark content does not
read as blurry the way a raw Laplacian variance does. It is measured on frames scaled to `short_side`
but never up: a 1080p clip is judged at the size a model trains at (softness below a pixel there does
not matter), a 144p clip at its own size (upscaling would blur every small clip). The per-clip value is
the median over the sampled frames (a motion-blurred frame or two does not condemn a clip).
`laplacian`: the variance of the Laplacian at the same size (the common peer metric, shown for
comparison; it depends on content).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class SharpnessConfig(ScorerConfig):
    """filter.scorers.<name> with type: sharpness."""

    short_side: int = Field(256, ge=32, le=2160)  # analysis size (short side, px); smaller clips keep their own size
    frames: int = Field(8, ge=1)  # frames per clip measured (evenly spread over the sampled ones)
    h_size: int = Field(11, ge=3)  # blur_effect's re-blur filter length (px at the analysis size)


class SharpnessScorer(Scorer):
    Config = SharpnessConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"blur": pa.float32(), "laplacian": pa.float32()}

    def spec(self) -> FrameSpec:
        return FrameSpec("gray", self.cfg.short_side, upscale=False)

    def frame_specs(self) -> list[FrameSpec]:
        return [self.spec()]

    def setup(self, encoder: Any = None) -> None:
        import cv2

        cv2.setNumThreads(1)

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        import cv2
        from skimage.measure import blur_effect

        g = spread(clip.inner(self.spec().key), self.cfg.frames)
        blur = [blur_effect(f, h_size=self.cfg.h_size) for f in g]
        lap = [cv2.Laplacian(f, cv2.CV_32F).var() for f in g]
        blur = [b for b in blur if np.isfinite(b)]  # a flat frame has no edge to judge
        return {"blur": float(np.median(blur)) if blur else None, "laplacian": float(np.median(lap))}


def spread(frames: np.ndarray, k: int) -> np.ndarray:
    """At most k frames, evenly spread (first and last included)."""
    if len(frames) <= k:
        return frames
    return frames[np.unique(np.linspace(0, len(frames) - 1, k).round().astype(int))]
