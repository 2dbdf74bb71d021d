"""Probe-level prefilters: cheap rules on a video's metadata, applied before anything is decoded.

A video that breaks one lands in the videos table with its `reasons` (e.g. "short_side<128") and is
not split, so it costs one probe and nothing more; `inspect` counts videos per reason. The rules read
only the probe's columns: the shorter display side, the frame rate, the duration, the display aspect
(long side / short side, so portrait and landscape are judged alike) and the bits per pixel of the
video stream (bitrate / (width x height x fps): how much the encoder had to describe each pixel; a
starved encode is blocky whatever its resolution).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PrefilterConfig(BaseModel):
    """probe.prefilter: a video breaking any rule is not split (null turns a rule off)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Display pixels of the shorter side. 64 lets the demo's synthetic 96-px videos through; real runs: 240-360
    # (the clean 144p copies pass 128).
    min_short_side: int | None = Field(64, ge=1)
    min_fps: float | None = Field(10.0, gt=0)  # average frames per second (below: stop-motion, timelapse stills, slides)
    max_fps: float | None = Field(121.0, gt=0)  # above: high-speed captures whose timing a video model would misread
    min_duration_s: float | None = Field(None, ge=0)  # null = split.min_clip_s: a shorter video gives no clip anyway
    max_duration_s: float | None = Field(None, gt=0)  # e.g. 4 hours: skip streams and surveillance dumps
    max_aspect: float | None = Field(3.0, ge=1)  # long side / short side of the display (21:9 = 2.33 passes)
    min_bpp: float | None = Field(0.003, ge=0)  # video bits per pixel per frame (real test videos: 0.010-0.22)


def bits_per_pixel(bits_per_s: float | None, width: int | None, height: int | None, fps: float | None) -> float | None:
    """Video bitrate spread over the pixels of one second of frames; None when a factor is unknown."""
    if not bits_per_s or not width or not height or not fps:
        return None
    return float(bits_per_s) / (width * height * fps)


def prefilter_reasons(row: dict, cfg: PrefilterConfig, min_clip_s: float | None = None) -> list[str]:
    """The rules a probed video (a videos-table row) breaks; [] when it passes or its metadata is missing.
    `min_clip_s` (split.min_clip_s) is the duration minimum when cfg.min_duration_s is null."""
    w, h = row.get("display_width") or 0, row.get("display_height") or 0
    min_dur = cfg.min_duration_s if cfg.min_duration_s is not None else min_clip_s
    checks = [("short_side", min(w, h) if w and h else None, cfg.min_short_side, None),
              ("fps", row.get("fps") or None, cfg.min_fps, cfg.max_fps),
              ("duration_s", row.get("duration_s"), min_dur, cfg.max_duration_s),
              ("aspect", max(w, h) / min(w, h) if w and h else None, None, cfg.max_aspect),
              ("bpp", row.get("bpp"), cfg.min_bpp, None)]
    out = []
    for name, v, lo, hi in checks:
        if v is None:  # unknown: cannot judge, does not drop
            continue
        if lo is not None and v < lo:
            out.append(f"{name}<{lo:g}")
        elif hi is not None and v > hi:
            out.append(f"{name}>{hi:g}")
    return out
