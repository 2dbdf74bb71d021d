"""CPU side of captioning: sample a clip's frames at a fixed rate and encode them as JPEG.

This runs in its own Ray Data step on CPU workers, ahead of the engine, so a GPU engine is fed
ready-made frames and never waits on decoding.
"""
from __future__ import annotations

import io
import math
import os
import tempfile

import numpy as np

from captioning.config import CaptionConfig
from curation.video import VideoError, first_video_stream, iter_frames, open_container


def frame_count(duration_s: float, cfg: CaptionConfig) -> int:
    """How many frames a clip of `duration_s` gets: sample_fps x duration, within [min_frames, max_frames]."""
    return max(cfg.min_frames, min(cfg.max_frames, int(math.floor(duration_s * cfg.sample_fps + 1e-6)) or 1))


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sample_frames(source: str, duration_s: float, cfg: CaptionConfig) -> tuple[list[bytes], float]:
    """JPEG frames of `source` evenly spread over the clip, and the rate they represent (frames/s).

    Decoding skips the conversion of frames that are not picked (curation.video.iter_frames at the
    target rate); a clip shorter than min_frames / sample_fps is sampled denser, never below 2 frames
    when it has them. Raises ValueError for a clip with fewer than 2 decodable frames.
    """
    if not duration_s or duration_s <= 0:
        raise ValueError(f"{source}: clip duration must be positive (got {duration_s})")
    n = frame_count(duration_s, cfg)
    rate = n / duration_s
    picked = [img for _, _, img in iter_frames(source, cfg.max_side, cfg.max_side, fps=rate)]
    if len(picked) < 2:  # e.g. a still image stored under a video name: not a clip to caption
        raise ValueError(f"{source}: {len(picked)} decodable frame(s); a clip needs at least 2")
    if len(picked) > n:  # rounding at the clip's end can give one extra frame
        picked = [picked[i] for i in np.linspace(0, len(picked) - 1, n).round().astype(int)]
    return [encode_jpeg(f, cfg.jpeg_quality) for f in picked], len(picked) / duration_s


def sample_frames_from_bytes(data: bytes, duration_s: float | None, cfg: CaptionConfig,
                             name: str = "clip") -> tuple[list[bytes], float]:
    """Same as sample_frames for an mp4 held in memory (a WebDataset sample, called `name` in errors);
    probes the duration if unknown."""
    with tempfile.NamedTemporaryFile(suffix=".mp4", delete=False) as f:
        f.write(data)
        path = f.name
    try:
        if not duration_s:
            duration_s = probe_duration(path)
        return sample_frames(path, duration_s, cfg)
    except (ValueError, VideoError) as e:
        raise type(e)(str(e).replace(path, name)) from None
    finally:
        os.remove(path)


def probe_duration(path: str) -> float:
    """Clip duration in seconds from the container, or frames / rate when the container does not say."""
    with open_container(path) as c:
        st = first_video_stream(c, path)
        if st.duration is not None and st.time_base is not None:
            return float(st.duration * st.time_base)
        if c.duration:
            return c.duration / 1_000_000
        rate = float(st.average_rate or 25)
        return (st.frames or sum(1 for _ in c.decode(st))) / rate
