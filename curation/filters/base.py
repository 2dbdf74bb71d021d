"""The scorer contract: what a filter declares (frames it needs, metrics it writes) and computes.

A scorer runs in one of two Ray steps:
- "cpu": inside the decode step, on the frames just decoded (motion: optical flow or codec vectors);
- "model": inside the model actor, with the frames and the shared CLIP embeddings of a batch of clips.
Each clip is decoded once; every scorer gets the same sampled frames at the sizes it declared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from curation.filters.config import ScorerConfig
from curation.filters.registry import scorer_class


@dataclass(frozen=True)
class FrameSpec:
    """One size/format of the sampled frames (decoded once per clip, shared by scorers that ask)."""

    fmt: Literal["rgb24", "gray"]  # pixel format handed to the scorer
    short_side: int  # frames are scaled so their shorter side is this (aspect kept, never below 8 px)
    square_crop: bool = False  # centre crop to short_side x short_side after scaling (CLIP input)
    upscale: bool = True  # false: a clip smaller than short_side keeps its native size (sharpness, quality)
    # Frames per sample: >1 gives (T, burst, H, W[, 3]) arrays, each sampled frame followed by the next
    # burst-1 decoded frames (frame-to-frame motion: camera shake, whose jitter a 2 fps sample aliases).
    burst: int = 1

    @property
    def key(self) -> str:
        return (f"{self.fmt}{self.short_side}{'sq' if self.square_crop else ''}{'' if self.upscale else 'n'}"
                f"{f'b{self.burst}' if self.burst > 1 else ''}")


@dataclass
class ClipFrames:
    """What the decode step produced for one clip."""

    times: np.ndarray  # (T,) seconds from the start of the clip of each sampled frame
    frames: dict[str, np.ndarray]  # FrameSpec.key -> (T, H, W[, 3]) uint8
    width: int  # display size of the clip (upright)
    height: int
    fps: float  # source frame rate of the clip
    # Codec motion vectors, reduced per decoded frame to a grid of cells: (N,) times and
    # (N, G, G) mean displacement in pixels per frame (NaN where a cell had no vector). None unless asked.
    mv_times: np.ndarray | None = None
    mv_grid: np.ndarray | None = None
    decoded_frames: int = 0  # every frame the decoder produced (all are decoded; sampled ones converted)
    # The picture inside black bars as fractions of the frame (left, top, right, bottom), set by a
    # `crops` scorer (filters/borders.py) before the others run; None = the whole frame.
    content: tuple[float, float, float, float] | None = None

    def inner(self, key: str) -> np.ndarray:
        """Frames of one FrameSpec key cropped to `content` (the picture inside the bars)."""
        f = self.frames[key]
        if self.content is None:
            return f
        h, w = f.shape[1:3]
        x0, y0, x1, y1 = self.content
        # Round inward so no bar pixel is left; keep at least 8 px each way.
        l, t = min(int(np.ceil(x0 * w)), w - 8), min(int(np.ceil(y0 * h)), h - 8)
        r, b = max(int(np.floor(x1 * w)), l + 8), max(int(np.floor(y1 * h)), t + 8)
        return f[:, t:b, l:r]


@dataclass
class Rule:
    """Drop a clip when `column` < min or > max; `reason` names it in the scores table."""

    column: str
    min: float | None = None
    max: float | None = None

    def reason(self, value: float | None) -> str | None:
        if value is None or value != value:  # NaN / missing: cannot judge, does not drop
            return None
        if self.min is not None and value < self.min:
            return f"{self.column}<{self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.column}>{self.max:g}"
        return None


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class Scorer:
    """Base class of a filter. Subclasses set `Config`, `step`, and implement `metrics` and `score`."""

    Config: ClassVar[type[ScorerConfig]] = ScorerConfig
    step: ClassVar[Literal["cpu", "model"]] = "cpu"
    needs_embedding: ClassVar[bool] = False  # model step: wants the shared per-frame CLIP embeddings
    # Finds the picture inside black bars: runs before every other CPU scorer and sets
    # ClipFrames.content from its `content_box(metrics)`, so the others score the picture, not the bars.
    crops: ClassVar[bool] = False

    def __init__(self, name: str, cfg: ScorerConfig) -> None:
        self.name, self.cfg = name, cfg
        bad = set(cfg.thresholds) - set(self.metrics())
        if bad:
            raise ValueError(f"scorers.{name}.thresholds: unknown metric(s) {sorted(bad)}; "
                             f"this scorer writes {sorted(self.metrics())}")
        # A metric may be a label (pa.string(), e.g. motion camera_type): shown and stored, never thresholded.
        labels = {m for m, t in self.metrics().items() if not (pa.types.is_floating(t) or pa.types.is_integer(t))}
        if set(cfg.thresholds) & labels:
            raise ValueError(f"scorers.{name}.thresholds: {sorted(set(cfg.thresholds) & labels)} are labels, not numeric "
                             "metrics: they cannot have min/max")

    def metrics(self) -> dict[str, pa.DataType]:
        """Metric name -> Arrow type (float32 numbers, or pa.string() labels); columns are `<name>_<metric>`."""
        raise NotImplementedError

    def frame_specs(self) -> list[FrameSpec]:
        """Frames this scorer reads (the decoder produces each distinct spec once)."""
        return []

    def max_frames(self) -> int | None:
        """At most this many of the sampled frames reach a model-step scorer (None: all of them)."""
        return None

    def mv_cells(self) -> int | None:
        """Ask the decoder for codec motion vectors reduced to a G x G grid (None: not needed)."""
        return None

    def setup(self, encoder: Any = None) -> None:
        """Load models once per worker; model-step scorers get the shared CLIP encoder."""

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        """Metric values of one clip (embeddings: (T, D) L2-normalised, when needs_embedding)."""
        raise NotImplementedError

    def score_batch(self, clips: list[ClipFrames], embeddings: list[np.ndarray | None]) -> list[dict[str, Any]]:
        """Batch version (model scorers override to run one forward pass per batch)."""
        return [self.score(c, e) for c, e in zip(clips, embeddings)]

    def content_box(self, metrics: dict[str, Any]) -> tuple[float, float, float, float] | None:
        """A `crops` scorer: the picture box (fractions) from the metrics it just computed."""
        return None

    def columns(self) -> dict[str, pa.DataType]:
        return {f"{self.name}_{m}": t for m, t in self.metrics().items()}

    def rules(self) -> list[Rule]:
        return [Rule(f"{self.name}_{m}", t.min, t.max) for m, t in self.cfg.thresholds.items()]


@dataclass
class ScorerSet:
    """The configured scorers of a run, split by step."""

    scorers: list[Scorer] = field(default_factory=list)

    @classmethod
    def from_config(cls, scorers_cfg: dict[str, ScorerConfig]) -> "ScorerSet":
        return cls([scorer_class(c.type)(name, c) for name, c in scorers_cfg.items() if c.enabled])

    def by_step(self, step: str) -> list[Scorer]:
        return [s for s in self.scorers if s.step == step]

    def needs_embedding(self) -> bool:
        return any(s.needs_embedding for s in self.scorers)

    def columns(self) -> dict[str, pa.DataType]:
        out: dict[str, pa.DataType] = {}
        for s in self.scorers:
            out.update(s.columns())
        return out

    def rules(self) -> list[Rule]:
        return [r for s in self.scorers for r in s.rules()]


def spread(frames: np.ndarray, k: int | None) -> np.ndarray:
    """At most k frames (None: all), evenly spread (first and last included): the one rule by which the
    filter ships frames and every scorer picks the frames it measures."""
    if k is None or len(frames) <= k:
        return frames
    return frames[np.unique(np.linspace(0, len(frames) - 1, k).round().astype(int))]
