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


@dataclass
class Camera:
    """A shot of known camera (or object) motion over a still textured scene (make_camera_video)."""

    pan: float = 0.0  # camera moves right, pixels per frame (the picture moves left)
    tilt: float = 0.0  # camera moves down, pixels per frame
    zoom: float = 0.0  # scale change per frame (0.005 = the picture grows 0.5% a frame)
    rotate: float = 0.0  # camera roll, degrees per frame
    shake: float = 0.0  # handheld jitter: std of a random offset of every frame, pixels
    square: float = 0.0  # camera still; a textured square moves right over the scene at this many px/frame
    square_size: float = 0.25  # the square's side / frame height
    seed: int = 0


def _noise_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Non-periodic multi-scale texture (periodic ones alias in optical flow at small sizes)."""
    import cv2

    acc = np.zeros((h, w), np.float32)
    for k, amp in ((48, 1.0), (12, 0.6), (3, 0.35)):
        small = rng.random((max(2, h // k), max(2, w // k))).astype(np.float32)
        acc += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-6)
    tint = rng.uniform(0.6, 1.0, 3)
    return (30 + 195 * acc[..., None] * tint[None, None, :]).clip(0, 255).astype(np.uint8)


def camera_matrices(cam: Camera, frames: int, width: int, height: int, margin: int) -> list[np.ndarray]:
    """Per frame, the 3x3 map from scene (texture) coordinates to frame pixels."""
    rng = np.random.default_rng(cam.seed + 1)
    c_tex = np.array([width / 2 + margin, height / 2 + margin])
    c_frame = np.array([width / 2, height / 2])
    out = []
    for j in range(frames):
        jitter = rng.normal(0, cam.shake, 2) if cam.shake else np.zeros(2)
        o = np.array([cam.pan * j, cam.tilt * j]) + jitter
        s, th = (1 + cam.zoom) ** j, np.deg2rad(cam.rotate * j)
        a = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        m = np.eye(3)
        m[:2, :2], m[:2, 2] = a, c_frame - a @ (c_tex + o)
        out.append(m)
    return out


def make_camera_video(path: str, cam: Camera, frames: int = 48, width: int = 320, height: int = 192,
                      fps: float = 24.0) -> list[np.ndarray]:
    """Write a shot of known motion; returns camera_matrices (scene -> frame, per frame)."""
    import cv2

    margin = max(width, height)
    rng = np.random.default_rng(cam.seed)
    tex = _noise_texture(rng, height + 2 * margin, width + 2 * margin)
    mats = camera_matrices(cam, frames, width, height, margin)
    side = max(8, int(round(cam.square_size * height)))
    sq = _noise_texture(np.random.default_rng(cam.seed + 99), side, side)
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"crf": "16", "preset": "ultrafast"}
        for j, m in enumerate(mats):
            img = cv2.warpAffine(tex, m[:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if cam.square:
                x0, y0 = int(round(side * 0.25 + cam.square * j)), (height - side) // 2
                x1 = min(width, x0 + side)
                if x0 < width:
                    img[y0:y0 + side, x0:x1] = sq[:, :x1 - x0]
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return mats
