"""Video access through PyAV: open local files or object-store URIs, probe, decode upright frames.

Decoding honours the container's rotation (display matrix) and sample aspect ratio, so every frame a
stage sees is upright with square pixels — the way a player shows it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from curation.uris import redact


class VideoError(RuntimeError):
    """A file that cannot be read as a video; the message says which file and why."""


def video_id_for(source: str) -> str:
    """Deterministic id of a source: the first 16 hex digits of sha1 of its path or URI.

    It is computed from the redacted form (curation.uris.redact: no user info, no query), so the
    credentials and connection options of a URI are not part of the id."""
    return hashlib.sha1(redact(source).encode()).hexdigest()[:16]


def open_container(source: str) -> "av.container.InputContainer":
    """Open a local path or an object-store URI (through pyarrow.fs) for decoding."""
    try:
        if "://" in source and not source.startswith("file://"):
            from curation.storage import filesystem

            fs, path = filesystem(source)
            return av.open(fs.open_input_file(path), "r", metadata_errors="replace")
        # A tag that is not valid UTF-8 (a damaged or odd file) must not make its frames unreadable.
        return av.open(source.removeprefix("file://"), "r", metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise VideoError(f"{source}: cannot open as a video ({e})") from None
    except FileNotFoundError:
        raise VideoError(f"{source}: file not found") from None


def stream_rotation(stream: "av.video.stream.VideoStream") -> int:
    """Clockwise display rotation in degrees (0, 90, 180, 270) from the stream's display matrix."""
    rot = 0
    try:
        for sd in getattr(stream, "side_data", {}) or {}:
            pass
    except Exception:
        pass
    meta = stream.metadata or {}
    if "rotate" in meta:
        try:
            rot = int(float(meta["rotate"]))
        except ValueError:
            rot = 0
    return rot % 360


def frame_rotation(frame: "av.VideoFrame") -> int:
    """Rotation of a decoded frame from its display-matrix side data (PyAV >= 14), 0 if absent.

    FFmpeg's convention is counter-clockwise degrees; we return the clockwise angle a player applies.
    """
    r = getattr(frame, "rotation", None)
    if r is None:
        return 0
    return int(round(-r)) % 360


@dataclass
class Geometry:
    """How to turn a coded frame into an upright, square-pixel frame of a target size."""

    rotation: int  # clockwise degrees to rotate the coded frame
    sar: float  # sample aspect ratio of the coded frame
    out_w: int  # output width after SAR, rotation and scaling
    out_h: int  # output height

    @staticmethod
    def fit(coded_w: int, coded_h: int, sar: float, rotation: int, max_w: int | None = None,
            max_h: int | None = None, even: bool = True) -> "Geometry":
        disp_w, disp_h = coded_w * (sar or 1.0), float(coded_h)
        if rotation in (90, 270):
            disp_w, disp_h = disp_h, disp_w
        scale = 1.0
        if max_w:
            scale = min(scale, max_w / disp_w)
        if max_h:
            scale = min(scale, max_h / disp_h)
        w, h = disp_w * scale, disp_h * scale
        if even:
            w, h = max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)
        else:
            w, h = max(1, int(round(w))), max(1, int(round(h)))
        return Geometry(rotation, sar or 1.0, w, h)

    def apply(self, frame: "av.VideoFrame", fmt: str = "rgb24") -> np.ndarray:
        """Decode-side conversion: scale in the coded orientation with swscale, then rotate."""
        tw, th = (self.out_h, self.out_w) if self.rotation in (90, 270) else (self.out_w, self.out_h)
        arr = frame.reformat(width=tw, height=th, format=fmt).to_ndarray()
        if self.rotation:
            arr = np.ascontiguousarray(np.rot90(arr, k=-(self.rotation // 90)))
        return arr


def stream_sar(stream: "av.video.stream.VideoStream") -> float:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(sar) if sar and sar.numerator and sar.denominator else 1.0


def first_video_stream(container: "av.container.InputContainer", source: str) -> "av.video.stream.VideoStream":
    if not container.streams.video:
        raise VideoError(f"{source}: no video stream")
    st = container.streams.video[0]
    st.thread_type = "AUTO"  # frame + slice threads: decoding is the floor of every stage
    return st


def frame_time(frame: "av.VideoFrame", stream: "av.video.stream.VideoStream", index: int, fps: float) -> float:
    """Presentation time of a frame in seconds (frame index / fps when the pts is missing)."""
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base) - float((stream.start_time or 0) * stream.time_base)
    return index / fps if fps else 0.0


def iter_frames(source: str, max_w: int | None = None, max_h: int | None = None, fmt: str = "rgb24",
                fps: float | None = None, start_s: float = 0.0, end_s: float = math.inf
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode upright frames as (index, seconds, array), optionally subsampled to `fps`.

    Frames are scaled to fit max_w x max_h (aspect kept, never upscaled beyond given bounds).
    `fps` picks the first frame at or after each multiple of 1/fps, so sampling is deterministic.
    """
    with open_container(source) as c:
        st = first_video_stream(c, source)
        src_fps = float(st.average_rate or st.guessed_rate or 25)
        geo = None
        next_t = start_s
        try:
            for i, fr in enumerate(c.decode(st)):
                t = frame_time(fr, st, i, src_fps)
                if t < start_s - 1e-6:
                    continue
                if t >= end_s - 1e-6:
                    break
                if fps and t + 1e-6 < next_t:
                    continue
                if geo is None:
                    rot = frame_rotation(fr) or stream_rotation(st)
                    geo = Geometry.fit(fr.width, fr.height, stream_sar(st), rot, max_w, max_h, even=False)
                if fps:
                    next_t = start_s + (math.floor((t - start_s) * fps + 1e-6) + 1) / fps
                yield i, t, geo.apply(fr, fmt)
        except av.error.FFmpegError as e:
            raise VideoError(f"{source}: decode failed ({e})") from None


def fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(100000)
