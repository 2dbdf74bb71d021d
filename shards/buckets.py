"""Bucketing and frame sampling: pure functions of a sample's metadata (no decoding).

Because the bucket and the frame indices of a sample follow from its metadata and a seed alone, the
loader can replay a worker's stream on resume without decoding anything (see shards/loader.py).
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from shards.config import Bucket


@dataclass(frozen=True)
class Plan:
    """How one sample becomes an array of the bucket's shape."""

    bucket: int  # index into the bucket list
    indices: tuple[int, ...]  # source frame indices to decode (one per output frame)
    fps: float  # effective frame rate of the sampled frames (target fps, or the source rate if slower)
    resize: tuple[int, int]  # (width, height) after the aspect-keeping resize that covers the bucket
    crop: tuple[int, int]  # (x, y) of the bucket-sized crop inside the resized frame


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A per-sample RNG that depends only on (seed, epoch, key): independent of order and workers."""
    h = hashlib.sha1(f"{seed}/{epoch}/{key}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def frame_step(src_fps: float, target_fps: float) -> float:
    """Source frames between two sampled frames; never below 1 (a slower source keeps every frame)."""
    return max(src_fps / target_fps, 1.0) if src_fps > 0 else 1.0


def max_frames(num_frames: int, src_fps: float, target_fps: float) -> int:
    """How many frames at the target fps fit in a clip of `num_frames` source frames."""
    if num_frames <= 0:
        return 0
    step = frame_step(src_fps, target_fps)
    return int(math.floor((num_frames - 1) / step + 1e-6)) + 1


def choose_bucket(buckets: list[Bucket], width: int, height: int, num_frames: int, src_fps: float,
                  target_fps: float, is_image: bool) -> int | None:
    """The bucket of a sample: the longest frame count that fits, then the nearest aspect ratio.

    Images go to 1-frame buckets only; videos to buckets of more than one frame. None: no bucket fits
    (a video too short for the shortest video bucket, or no bucket of the sample's kind).
    """
    if width <= 0 or height <= 0:
        return None
    if is_image:
        fitting = [i for i, b in enumerate(buckets) if b.frames == 1]
    else:
        avail = max_frames(num_frames, src_fps, target_fps)
        fitting = [i for i, b in enumerate(buckets) if 1 < b.frames <= avail]
        if fitting:
            longest = max(buckets[i].frames for i in fitting)
            fitting = [i for i in fitting if buckets[i].frames == longest]
    if not fitting:
        return None
    ar = math.log(width / height)
    # Nearest aspect ratio in log space (2:1 and 1:2 are equally far from 1:1); ties -> first listed.
    return min(fitting, key=lambda i: (abs(math.log(buckets[i].width / buckets[i].height) - ar), i))


def cover_resize(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int]:
    """Smallest aspect-keeping size that covers out_w x out_h (the crop then removes the excess)."""
    scale = max(out_w / width, out_h / height)
    return max(out_w, int(math.ceil(width * scale - 1e-6))), max(out_h, int(math.ceil(height * scale - 1e-6)))


def picture_box(width: int, height: int, content: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
    """The picture inside black bars in pixels (x, y, w, h): `content` fractions (left, top, right,
    bottom; filters/borders.py) rounded inward; the whole frame when None."""
    if content is None:
        return 0, 0, width, height
    x0, y0 = min(int(math.ceil(content[0] * width - 1e-6)), width - 1), min(int(math.ceil(content[1] * height - 1e-6)), height - 1)
    x1, y1 = max(int(math.floor(content[2] * width + 1e-6)), x0 + 1), max(int(math.floor(content[3] * height + 1e-6)), y0 + 1)
    return x0, y0, x1 - x0, y1 - y0


def plan_sample(buckets: list[Bucket], bucket: int, width: int, height: int, num_frames: int, src_fps: float,
                target_fps: float, rng: random.Random | None, crop: str = "center",
                content: tuple[float, float, float, float] | None = None) -> Plan:
    """Frame indices at the target fps (random start when `rng` is given) and the resize/crop geometry.

    With `content` (the picture box inside black bars) the picture alone is resized to cover the bucket
    and the crop is taken inside it: the whole frame is scaled by the same factor, and the crop offset
    skips the scaled bars. The decoders need no change.
    """
    b = buckets[bucket]
    step = frame_step(src_fps, target_fps)
    span = int(round((b.frames - 1) * step))
    last_start = max(0, num_frames - 1 - span)
    start = rng.randint(0, last_start) if rng is not None and b.frames > 1 else 0
    indices = tuple(start + int(round(k * step)) for k in range(b.frames))
    px, py, pw, ph = picture_box(width, height, content)
    iw, ih = cover_resize(pw, ph, b.width, b.height)
    scale = max(iw / pw, ih / ph)
    # The whole frame at the picture's scale; the picture then starts at (ox, oy) in it.
    rw, rh = (iw, ih) if content is None else (max(iw, int(math.ceil(width * scale - 1e-6))),
                                               max(ih, int(math.ceil(height * scale - 1e-6))))
    ox, oy = (0, 0) if content is None else (min(int(math.ceil(px * scale - 1e-6)), rw - iw),
                                             min(int(math.ceil(py * scale - 1e-6)), rh - ih))
    if crop == "random" and rng is not None:
        x, y = rng.randint(0, iw - b.width), rng.randint(0, ih - b.height)
    else:
        x, y = (iw - b.width) // 2, (ih - b.height) // 2
    eff = src_fps / step if src_fps > 0 else target_fps
    return Plan(bucket, indices, eff, (rw, rh), (ox + x, oy + y))
