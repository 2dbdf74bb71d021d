"""Motion scorer: how much the picture moves, from dense optical flow or from the codec's motion vectors.

Units are scale- and rate-free: displacement per second divided by the frame diagonal ("diagonals per
second"), so a threshold means the same at any resolution, frame rate or sample rate.
- mean: mean displacement over the whole frame and every sampled pair;
- min_patch: the same, per cell of a `patches` x `patches` grid averaged over time, then the minimum
  cell (a small moving object on a still background scores low here: Cosmos-Curate's patch minimum);
- still_share: share of consecutive sampled pairs whose mean is below `still_eps` (frozen stretches).

method "flow": OpenCV DIS (or Farneback) on grayscale frames with short side `short_side`, between
consecutive sampled frames (2 fps by default). method "mv": the H.264/HEVC/MPEG-4 motion vectors the
decoder exports for every frame (no extra image work); codecs without vectors fall back to flow.
bench/filter.py measures both against each other (agreement and speed).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class MotionConfig(ScorerConfig):
    """filter.scorers.<name> with type: motion."""

    method: Literal["flow", "mv"] = "flow"  # dense optical flow, or the codec's motion vectors (fast path)
    flow: Literal["dis", "farneback"] = "dis"  # OpenCV flow algorithm for method "flow"
    short_side: int = Field(96, ge=16, le=512)  # flow frames are scaled to this short side (64 aliases on 720p periodic texture)
    patches: int = Field(4, ge=1, le=16)  # grid for min_patch (patches x patches cells)
    still_eps: float = Field(0.01, ge=0)  # a sampled pair moving less than this (diagonals/s) counts as still


class MotionScorer(Scorer):
    Config = MotionConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"mean": pa.float32(), "min_patch": pa.float32(), "still_share": pa.float32()}

    def frame_specs(self) -> list[FrameSpec]:
        # The mv method keeps small gray frames too: the fallback for codecs without motion vectors.
        return [FrameSpec("gray", self.cfg.short_side)]

    def mv_cells(self) -> int | None:
        return self.cfg.patches if self.cfg.method == "mv" else None

    def setup(self, encoder: Any = None) -> None:
        import cv2

        cv2.setNumThreads(1)  # one clip per CPU worker: determinism and no oversubscription

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        if self.cfg.method == "mv" and clip.mv_grid is not None and len(clip.mv_grid):
            return self._from_mvs(clip)
        return self._from_flow(clip)

    def _summary(self, cells: np.ndarray, window_means: np.ndarray) -> dict[str, Any]:
        """cells: (N, G, G) diagonals/s per step; window_means: (P,) per sampled pair."""
        if not len(cells) or not len(window_means):
            return {"mean": None, "min_patch": None, "still_share": None}
        per_cell = np.nanmean(cells, axis=0)
        return {"mean": float(np.nanmean(cells)),
                "min_patch": float(np.nanmin(per_cell)) if np.isfinite(per_cell).any() else None,
                "still_share": float(np.mean(window_means < self.cfg.still_eps))}

    def _from_flow(self, clip: ClipFrames) -> dict[str, Any]:
        import cv2

        g = clip.frames[FrameSpec("gray", self.cfg.short_side).key]
        if len(g) < 2:
            return self._summary(np.zeros((0, 1, 1)), np.zeros(0))
        diag = float(np.hypot(g.shape[1], g.shape[2]))
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if self.cfg.flow == "dis" else None
        p = self.cfg.patches
        cells = np.empty((len(g) - 1, p, p), np.float32)
        for i in range(len(g) - 1):
            dt = max(float(clip.times[i + 1] - clip.times[i]), 1e-3)
            if dis is not None:
                f = dis.calc(g[i], g[i + 1], None)
            else:
                f = cv2.calcOpticalFlowFarneback(g[i], g[i + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
            mag = np.hypot(f[..., 0], f[..., 1]) / diag / dt
            cells[i] = _grid_mean(mag, p)
        return self._summary(cells, cells.reshape(len(cells), -1).mean(axis=1))

    def _from_mvs(self, clip: ClipFrames) -> dict[str, Any]:
        diag = float(np.hypot(clip.width, clip.height))
        cells = clip.mv_grid * (clip.fps / diag)  # pixels/frame -> diagonals/s
        per_frame = np.nanmean(cells.reshape(len(cells), -1), axis=1)
        # One value per sampled interval, so still_share means the same as with flow.
        edges = np.append(clip.times[1:], np.inf) if len(clip.times) > 1 else np.array([np.inf])
        win = np.searchsorted(edges, clip.mv_times, side="right")
        means = np.array([np.nanmean(per_frame[win == w]) for w in np.unique(win)])
        return self._summary(cells, means[np.isfinite(means)])


def _grid_mean(a: np.ndarray, p: int) -> np.ndarray:
    """Mean of a 2-D array over a p x p grid of (nearly) equal cells."""
    ys = np.linspace(0, a.shape[0], p + 1).astype(int)
    xs = np.linspace(0, a.shape[1], p + 1).astype(int)
    return np.array([[a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(p)] for i in range(p)],
                    np.float32)
