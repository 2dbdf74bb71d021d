"""Synthetic videos with known content: scenes with hard cuts, moving or still patterns, and frames
that carry their own index. Used by the tests, the benchmarks and the README's demo run, so the
project works on a fresh machine without any third-party media.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


@dataclass
class Scene:
    """One shot of a synthetic video."""

    frames: int  # length in frames
    motion: float = 2.0  # pixels per frame the pattern moves (0 = a still image)
    seed: int = 0  # picks the colours and the texture, so consecutive scenes differ (a hard cut)
    dissolve: int = 0  # this scene's first frames cross-fade in from the previous scene (0 = a hard cut)


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=3)
    # Smooth blobs + stripes: rich enough for optical flow and scene detection, compressible by x264.
    yy, xx = np.mgrid[0:h * 2, 0:w * 2].astype(np.float32)
    f1, f2 = rng.uniform(0.02, 0.08, 2)
    pat = 0.5 + 0.25 * np.sin(xx * f1 + rng.uniform(0, 6)) + 0.25 * np.cos(yy * f2 + rng.uniform(0, 6))
    img = (base[None, None, :] * (0.4 + 0.9 * pat[..., None])).clip(0, 255)
    return img.astype(np.uint8)


def index_marker(img: np.ndarray, index: int, bits: int = 10, cell: int = 8) -> None:
    """Write `index` as a row of black/white cells at the top-left (read back by read_index_marker)."""
    for b in range(bits):
        img[0:cell, b * cell:(b + 1) * cell] = 255 if (index >> b) & 1 else 0


def read_index_marker(img: np.ndarray, bits: int = 10, cell: int = 8) -> int:
    """Decode the frame index written by index_marker (robust to compression: cell means)."""
    h, w = img.shape[:2]
    sy, sx = h / img.shape[0], w / img.shape[1]
    v = 0
    for b in range(bits):
        y0, y1 = int(cell * 0.25 * sy), int(cell * 0.75 * sy)
        x0, x1 = int((b * cell + cell * 0.25) * sx), int((b * cell + cell * 0.75) * sx)
        if img[y0:y1, x0:x1].mean() > 127:
            v |= 1 << b
    return v


def _shot_frame(tex: np.ndarray, sc: Scene, j: int, height: int, width: int) -> np.ndarray:
    """Frame j of a shot: a window of its texture, moved by j * motion pixels."""
    off = int(round(j * sc.motion))
    dy, dx = off % height, (off * 2 // 3) % width
    return np.ascontiguousarray(tex[dy:dy + height, dx:dx + width])


def make_video(path: str, scenes: list[Scene], width: int = 160, height: int = 96, fps: float = 24.0,
               codec: str = "libx264", with_index: bool = False, crf: int = 18) -> list[int]:
    """Write a video of `scenes` and return the frame indices where each new scene starts (the cuts)."""
    cuts, start = [], 0
    with av.open(path, "w") as out:
        st = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            st.options = {"crf": str(crf), "preset": "ultrafast"}
        i = 0
        prev: tuple[np.ndarray, Scene, int] | None = None  # texture, scene and length of the previous shot
        for k, sc in enumerate(scenes):
            if k:
                cuts.append(start)
            tex = _texture(sc.seed * 7919 + k, height, width)
            for j in range(sc.frames):
                img = _shot_frame(tex, sc, j, height, width)
                if prev is not None and j < sc.dissolve:  # the previous shot goes on under the fade
                    a = (j + 1) / (sc.dissolve + 1)
                    old = _shot_frame(prev[0], prev[1], prev[2] + j, height, width)
                    img = (a * img.astype(np.float32) + (1 - a) * old).round().astype(np.uint8)
                if with_index:
                    index_marker(img, i)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for pkt in st.encode(frame):
                    out.mux(pkt)
                i += 1
            start += sc.frames
            prev = (tex, sc, sc.frames)
        for pkt in st.encode():
            out.mux(pkt)
    return cuts


def demo_videos(folder: str) -> list[str]:
    """A few small videos for the embedded default run (README): cuts, a still shot, varied sizes."""
    import os

    os.makedirs(folder, exist_ok=True)
    specs = {
        "three_scenes.mp4": ([Scene(72, 2.0, 1), Scene(60, 3.0, 2), Scene(84, 1.5, 3)], 192, 112),
        "still_then_moving.mp4": ([Scene(72, 0.0, 4), Scene(72, 2.5, 5)], 160, 96),
        "one_long_shot.mp4": ([Scene(150, 2.0, 6)], 128, 128),
    }
    paths = []
    for name, (scenes, w, h) in specs.items():
        p = os.path.join(folder, name)
        if not os.path.exists(p):
            make_video(p, scenes, w, h, fps=24.0)
        paths.append(p)
    return paths
