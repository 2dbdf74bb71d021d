"""Sharpness / blur of the picture (inside black bars), independent of the clip's resolution.

`blur`: scikit-image's blur_effect (Crete-Roffe et al. 2007): how much of the picture's edge energy a
further blur would remove, 0 (sharp) to 1 (blurry). It is a ratio, so flat or dark content does not
read as blurry the way a raw Laplacian variance does. It is taken on each tile of a `tiles` x `tiles`
grid and the SHARPEST textured tile counts: a shallow depth of field (a sharp subject on a soft
background, common in films) is not blur; a clip with nothing sharp anywhere is. Measured on frames
scaled to `short_side` but never up: a 1080p clip is judged at the size a model trains at (softness
below a pixel there does not matter), a 144p clip at its own size (upscaling would blur every small
clip). The per-clip value is the median over the sampled frames (a motion-blurred frame does not
condemn a clip). On the quick degradations of the test videos (docs/measurements.md) the sharpest
tile separated a gaussian blur of 0.8% of the height from the same clip clean by 0.07-0.25 on every
source, where the whole-frame value overlapped across sources by 0.08.
`laplacian`: the variance of the Laplacian at the same size (the common peer metric, shown for
comparison; it depends on content).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer, spread
from curation.filters.config import ScorerConfig


class SharpnessConfig(ScorerConfig):
    """filter.scorers.<name> with type: sharpness."""

    short_side: int = Field(256, ge=32, le=2160)  # analysis size (short side, px); smaller clips keep their own size
    frames: int = Field(8, ge=1)  # frames per clip measured (evenly spread over the sampled ones)
    h_size: int = Field(11, ge=3)  # blur_effect's re-blur filter length (px at the analysis size)
    tiles: int = Field(3, ge=1, le=8)  # grid of tiles; the sharpest textured one is the frame's value
    min_std: float = Field(4.0, ge=0)  # a tile with less luma std (0-255) is flat: no edge to judge


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
        blur = [self.sharpest_tile(f, blur_effect) for f in g]
        lap = [cv2.Laplacian(f, cv2.CV_32F).var() for f in g]
        blur = [b for b in blur if b is not None and np.isfinite(b)]  # a flat frame has no edge to judge
        return {"blur": float(np.median(blur)) if blur else None, "laplacian": float(np.median(lap))}

    def sharpest_tile(self, frame: np.ndarray, blur_effect: Any) -> float | None:
        """blur_effect of the sharpest textured tile of one frame (None: every tile is flat)."""
        h, w = frame.shape
        k = self.cfg.tiles
        vals = []
        for i in range(k):
            for j in range(k):
                t = frame[i * h // k:(i + 1) * h // k, j * w // k:(j + 1) * w // k]
                if min(t.shape) >= 8 and t.std() > self.cfg.min_std:
                    vals.append(blur_effect(t, h_size=self.cfg.h_size))
        return min(vals) if vals else None

