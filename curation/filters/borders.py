"""Black borders: letterbox (top/bottom), pillarbox (left/right) and windowbox (both) bars of a clip.

Bars are never a reason to drop: the scorer stores the picture box (`left`, `top`, `right`, `bottom`
as fractions of the frame) in the scores table, the other CPU scorers score only the picture inside it
(ClipFrames.content: exposure, sharpness, quality, frozen), and the training loader crops the box away
(shards/buckets.py) so the model never learns to draw bars.

Per sampled frame (gray, full range 0-255), a bar is the run of edge rows (columns) that are dark
(mean <= `limit`, like ffmpeg's cropdetect but stricter) and flat (std <= `flat_std`: dark scene content has
texture or noise, a bar has none). A bar of the clip is one that holds on every frame that shows
anything (frames darker than `limit` overall tell nothing and are skipped): the clip's bar is the
smallest of its frames' bars, so a dark moment or a fade never widens it. The mixed row where a bar
meets the picture (half bar, half picture after scaling) goes to the bar. Bars are found in centred
pairs: the thinner of top/bottom (left/right) counts for both, so one dark side of the picture (a night
sky, the black edge of a filmed screen, a black frame with a caption) is not a bar.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class BordersConfig(ScorerConfig):
    """filter.scorers.<name> with type: borders."""

    short_side: int = Field(144, ge=32, le=1080)  # analysis frame size (short side, px): bar precision ~1/short_side
    # A bar row/column has mean luma <= this (0-255, full range). ffmpeg cropdetect's 24 took the dark picture
    # next to Sintel's bars in a night shot for bar (box area 0.435, true 0.243) and the dark edges of
    # underexposed copies for bars; real bars decode at 0-0.2 (Sintel, the set's added bars; bench/judgement.py).
    limit: float = Field(8.0, ge=0, le=255)
    flat_std: float = Field(8.0, ge=0)  # ... and luma std <= this (bars are flat; dark picture content is not)
    min_picture: float = Field(0.3, gt=0, le=1)  # bars leaving less than this share of a side are not bars (a dark clip)
    # Thinner bars (share of the side) are none: encoder edge lines, the dark rim of a filmed screen
    # (GoldenEye: 0.019 a side). 1.85:1 films in 16:9 (bars 0.019) keep theirs.
    min_bar: float = Field(0.025, ge=0, lt=0.5)


class BordersScorer(Scorer):
    Config = BordersConfig
    step = "cpu"
    crops = True

    def metrics(self) -> dict[str, pa.DataType]:
        return {"left": pa.float32(), "top": pa.float32(), "right": pa.float32(), "bottom": pa.float32(),
                "area": pa.float32(), "kind": pa.string()}

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("gray", self.cfg.short_side)]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        g = clip.frames[FrameSpec("gray", self.cfg.short_side).key].astype(np.float32)
        # A frame tells where bars end when some row or column of it is brighter than a bar can be.
        lit = (g.mean(axis=2).max(axis=1) > self.cfg.limit) | (g.mean(axis=1).max(axis=1) > self.cfg.limit)
        if not lit.any():  # an all-dark clip: no frame can show where a bar ends
            return box_metrics(0, 0, 0, 0)
        g = g[lit]
        h, w = g.shape[1:3]
        top = min(_edge_bar(f, self.cfg.limit, self.cfg.flat_std) for f in g)
        bottom = min(_edge_bar(f[::-1], self.cfg.limit, self.cfg.flat_std) for f in g)
        left = min(_edge_bar(f.T, self.cfg.limit, self.cfg.flat_std) for f in g)
        right = min(_edge_bar(f.T[::-1], self.cfg.limit, self.cfg.flat_std) for f in g)
        # Bars come in centred pairs (letterbox, pillarbox): one dark side alone is dark picture content
        # (a black sky, the dark edge of a screen, text on black), so each pair is cut to its thinner bar,
        # and bars thinner than min_bar are none.
        top = bottom = min(top, bottom)
        left = right = min(left, right)
        if top < self.cfg.min_bar * h or (h - 2 * top) < self.cfg.min_picture * h:
            top = bottom = 0
        if left < self.cfg.min_bar * w or (w - 2 * left) < self.cfg.min_picture * w:
            left = right = 0
        # Half an analysis pixel more on every found bar: the mixed, darkened rows next to a bar at
        # full resolution (Sintel: 1-2 rows at 480p) fall inside the crop.
        return box_metrics(*(((n + 0.5) if n else 0) / d for n, d in ((left, w), (top, h), (right, w), (bottom, h))))

    def content_box(self, metrics: dict[str, Any]) -> tuple[float, float, float, float] | None:
        return content_box(metrics)


def _edge_bar(f: np.ndarray, limit: float, flat_std: float) -> int:
    """Rows of bar at the top of one frame (2-D): dark and flat rows, plus the mixed row after them."""
    mean, std = f.mean(axis=1), f.std(axis=1)
    bar = (mean <= limit) & (std <= flat_std)
    n = int(np.argmin(bar)) if not bar.all() else len(bar)
    # The row where bar and picture meet is scaled from both: part of the bar when darker than half
    # the picture row after it.
    if 0 < n < len(mean) - 1 and mean[n] < 0.5 * mean[n + 1]:
        n += 1
    return n


def box_metrics(left: float, top: float, right: float, bottom: float) -> dict[str, Any]:
    """Bar widths (fractions of the frame side) -> the scorer's metrics, with the picture's lost area."""
    area = 1.0 - (1.0 - left - right) * (1.0 - top - bottom)
    lr, tb = left + right > 0, top + bottom > 0
    kind = "windowbox" if lr and tb else "pillarbox" if lr else "letterbox" if tb else "none"
    return {"left": float(left), "top": float(top), "right": float(right), "bottom": float(bottom),
            "area": float(area), "kind": kind}


def content_box(scores: dict[str, Any], prefix: str = "") -> tuple[float, float, float, float] | None:
    """The picture box (left, top, right, bottom fractions) from border metrics (or a scores row with
    `prefix`, e.g. "borders_"); None when there are no bars or the row has no border columns."""
    try:
        l, t, r, b = (float(scores[f"{prefix}{k}"]) for k in ("left", "top", "right", "bottom"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.isfinite([l, t, r, b])) or l + t + r + b <= 0:
        return None
    return (l, t, 1.0 - r, 1.0 - b)
