"""The labelled clip set of bench/judgement.py: real shots, labelled degradations, split by source video.

Real footage (../shared/testdata, read in place) is cut into shots (PySceneDetect ContentDetector) and
each shot into windows of `window_s` seconds. Every window becomes a clean clip at several resolutions
(negatives) and, for a seeded subset of windows per kind, a degraded clip whose degradation is its label
(`DEGRADATIONS`). Windows of one source video all land in the same part, `calibration` or `report`, so a
threshold tuned on the calibration part is reported on videos it never saw.

Natural content counts too (`SOURCES[...].natural`): letterboxed films carry the tag "letterbox",
Sintel's "the Blender Foundation presents" card "title_card", testvideo.mp4's persistent copyright line
"watermark", the interview's faint "BBC FOUR" corner logo "logo", GoldenEye's computer-screen close-ups
"scene_text" (text in the scene: keep).

Everything is written under a cache folder outside the repo (`~/.cache/vidcurate/judgement` by default): the
clips as mp4 (libx264 crf 18, or the kind's own crf) and `labels.jsonl`, one row per clip. A second run
with the same options reuses them. i21b-style judgements plug in by naming the tags they detect.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

VERSION = 1  # bump when a degradation or the window rule changes: the cache key includes it


@dataclass(frozen=True)
class Source:
    """One real video of the test data."""

    name: str  # short id (clip ids start with it)
    path: str  # relative to the test-data folder
    part: str  # calibration | report: every window of the source lands there
    natural: tuple = ()  # ((t0, t1, (tags...)), ...): content the source really has in that time range


SOURCES = [
    Source("sintel", "sintel/test_video_30s.mp4", "calibration",
           ((0, 31, ("letterbox", "border")), (7.2, 9.2, ("title_card", "overlay_text")))),
    # A faint "BBC FOUR" channel logo sits in the top-left corner of every frame (a real persistent watermark).
    Source("interview", "scenedetect/issue-195-aspect-ratio.mp4", "calibration", ((0, 26, ("logo", "overlay_text")),)),
    Source("pancake", "decord/flipping_a_pancake.mkv", "calibration", ((0, 11, ("handheld",)),)),
    Source("bbb", "bbb/bigbuckbunny.mp4", "report"),
    Source("leaf", "scenedetect/testvideo.mp4", "report", ((0, 25, ("watermark", "overlay_text")),)),
    Source("goldeneye", "scenedetect/goldeneye-vfr-drop3.mp4", "report", ((0, 10, ("scene_text",)),)),  # screen UI
    Source("cartoon", "scenedetect/issue-236-split-copy.mkv", "report"),
]


@dataclass
class Clip:
    """One labelled clip of the set (a row of labels.jsonl)."""

    clip_id: str
    path: str  # mp4 under the cache folder
    source: str  # Source.name: the split unit
    part: str  # calibration | report
    window: str  # id of the source window the clip was made from (duplicates pair up by it)
    kind: str  # clean, or the degradation's name
    tags: list[str]  # labels: the degradation's tags + the window's natural tags
    short_side: int  # rendered short side (px)
    native_short: int  # the source's own short side (px): above it the clip was upscaled
    params: dict = field(default_factory=dict)  # the degradation's random parameters (sizes, offsets)


# ---------------------------------------------------------------- text rendering (PIL's bundled font)

WORDS = ("the river runs north past the old mill where we met last summer and never spoke again "
         "nobody knew what the letter said until morning came and the bells rang across town").split()


def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(px)))


def _sentence(rng: np.random.Generator, n: int) -> str:
    i = int(rng.integers(0, len(WORDS) - n))
    return " ".join(WORDS[i:i + n]).capitalize()


def _draw_text(img: Image.Image, xy: tuple[float, float], text: str, px: int, anchor: str,
               fill=(255, 255, 255, 255), stroke: int = 0) -> None:
    ImageDraw.Draw(img).text(xy, text, font=_font(px), fill=fill, anchor=anchor, stroke_width=stroke,
                             stroke_fill=(0, 0, 0, fill[3]))


def _overlay(frames: np.ndarray, layer_for: Callable[[int], Image.Image]) -> np.ndarray:
    """Alpha-composite an RGBA layer (per frame index) over each frame."""
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        base = Image.fromarray(f).convert("RGBA")
        out[i] = np.asarray(Image.alpha_composite(base, layer_for(i)).convert("RGB"))
    return out


def subtitles(frames: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """1-2 lines of white outlined text near the bottom, a new line every ~1 s."""
    h, w = frames.shape[1:3]
    px = int(h * rng.choice([0.04, 0.055, 0.07]))
    lines = int(rng.integers(1, 3))
    every = max(1, int(fps * rng.uniform(0.8, 1.5)))
    texts = [[_sentence(rng, int(rng.integers(4, 8))) for _ in range(lines)] for _ in range(len(frames) // every + 1)]
    cache: dict[int, Image.Image] = {}

    def layer(i: int) -> Image.Image:
        k = i // every
        if k not in cache:
            im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            for j, t in enumerate(texts[k]):
                _draw_text(im, (w / 2, h * 0.93 - (lines - 1 - j) * px * 1.25), t, px, "ms",
                           stroke=max(1, px // 12))
            cache[k] = im
        return cache[k]

    return _overlay(frames, layer), {"px": px, "lines": lines, "every": every}


def lower_third(frames: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """A name + role caption on a semi-opaque bar at the lower left (news / interview style)."""
    h, w = frames.shape[1:3]
    px = int(h * rng.choice([0.045, 0.06]))
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    x0, y0 = int(w * 0.06), int(h * 0.72)
    d.rectangle([x0, y0, x0 + int(w * rng.uniform(0.35, 0.55)), y0 + int(px * 2.7)],
                fill=(int(rng.integers(0, 60)), int(rng.integers(0, 60)), int(rng.integers(60, 160)), 190))
    _draw_text(im, (x0 + px * 0.4, y0 + px * 0.2), " ".join(_sentence(rng, 2).split()).title(), px, "la")
    _draw_text(im, (x0 + px * 0.4, y0 + px * 1.45), _sentence(rng, 3), int(px * 0.8), "la",
               fill=(230, 230, 230, 255))
    return _overlay(frames, lambda i: im), {"px": px}


def title_card(frames: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """Large centred text: on black (a card) or over the darkened picture (an opening title)."""
    h, w = frames.shape[1:3]
    px = int(h * rng.uniform(0.08, 0.14))
    on_black = bool(rng.integers(0, 2))
    im = Image.new("RGBA", (w, h), (0, 0, 0, 255 if on_black else 110))
    _draw_text(im, (w / 2, h * 0.45), _sentence(rng, 2).upper(), px, "mm")
    _draw_text(im, (w / 2, h * 0.45 + px * 1.3), _sentence(rng, 4), int(px * 0.45), "mm")
    return _overlay(frames, lambda i: im), {"px": px, "on_black": on_black}


def logo(frames: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """A persistent semi-transparent channel logo (badge + letters) in one corner."""
    h, w = frames.shape[1:3]
    px = int(h * rng.uniform(0.05, 0.08))
    alpha = int(255 * rng.uniform(0.45, 0.8))
    text = str(rng.choice(["TV5", "HD", "NEWS 24", "CH9", "SPORT+"]))
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    tw = int(_font(px).getlength(text))
    right, bottom = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    x = w - tw - int(w * 0.05) if right else int(w * 0.05)
    y = h - int(px * 1.6) - int(h * 0.05) if bottom else int(h * 0.05)
    ImageDraw.Draw(im).rounded_rectangle([x - px // 3, y - px // 4, x + tw + px // 3, y + int(px * 1.35)],
                                         radius=px // 3, outline=(255, 255, 255, alpha), width=max(1, px // 10))
    _draw_text(im, (x, y), text, px, "la", fill=(255, 255, 255, alpha))
    return _overlay(frames, lambda i: im), {"px": px, "alpha": alpha, "corner": f"{'b' if bottom else 't'}{'r' if right else 'l'}"}


def watermark(frames: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """A faint stock-footage watermark: a domain name, centred or in a corner."""
    h, w = frames.shape[1:3]
    px = int(h * rng.uniform(0.04, 0.09))
    alpha = int(255 * rng.uniform(0.3, 0.55))
    text = str(rng.choice(["www.stockclips.example", "(c) FootageHub", "preview - not licensed"]))
    centre = bool(rng.integers(0, 2))
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    xy, anchor = ((w / 2, h / 2), "mm") if centre else ((w * 0.96, h * 0.95), "rs")
    _draw_text(im, xy, text, px, anchor, fill=(255, 255, 255, alpha))
    return _overlay(frames, lambda i: im), {"px": px, "alpha": alpha, "centre": centre}


# ---------------------------------------------------------------- camera moves made by moving crops

def _crops(native: np.ndarray, boxes: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Frame i = native[i] cropped to boxes[i] = (cx, cy, scale) (scale: crop side / frame side), resized."""
    H, W = native.shape[1:3]
    out = []
    for f, (cx, cy, s) in zip(native, boxes):
        cw, ch = W * s, H * s
        m = np.array([[out_wh[0] / cw, 0, -(cx - cw / 2) * out_wh[0] / cw],
                      [0, out_wh[1] / ch, -(cy - ch / 2) * out_wh[1] / ch]], np.float32)
        out.append(cv2.warpAffine(f, m, out_wh, flags=cv2.INTER_AREA if out_wh[0] < cw else cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def jitter(native: np.ndarray, out_wh: tuple[int, int], rng: np.random.Generator, fps: float,
           rms: float) -> tuple[np.ndarray, dict]:
    """Handheld shake: a 0.8-scale crop whose centre follows low-passed noise of `rms` x the diagonal."""
    H, W = native.shape[1:3]
    n = len(native)
    noise = rng.normal(size=(n + 4, 2))
    path = np.stack([np.convolve(noise[:, k], np.ones(3) / 3, "valid")[:n] for k in range(2)], 1)
    path *= rms * math.hypot(W, H) / path.std(axis=0).clip(1e-6)
    boxes = np.column_stack([W / 2 + path[:, 0], H / 2 + path[:, 1], np.full(n, 0.8)])
    return _crops(native, boxes, out_wh), {"rms_diag": rms}


def pan(native: np.ndarray, out_wh: tuple[int, int], rng: np.random.Generator, fps: float,
        travel: float) -> tuple[np.ndarray, dict]:
    """A smooth pan: a 0.7-scale crop moving `travel` x the width at constant speed (ease in/out)."""
    H, W = native.shape[1:3]
    n = len(native)
    u = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, n))  # smooth start and stop, as a camera operator pans
    sign = 1 if rng.integers(0, 2) else -1
    boxes = np.column_stack([W / 2 + sign * (u - 0.5) * travel * W, np.full(n, H / 2), np.full(n, 0.7)])
    return _crops(native, boxes, out_wh), {"travel": travel}


def zoom(native: np.ndarray, out_wh: tuple[int, int], rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """A smooth zoom in (or out): crop scale 1.0 <-> 0.6 over the clip."""
    H, W = native.shape[1:3]
    n = len(native)
    s = np.linspace(1.0, 0.6, n)
    if rng.integers(0, 2):
        s = s[::-1]
    boxes = np.column_stack([np.full(n, W / 2), np.full(n, H / 2), s])
    return _crops(native, boxes, out_wh), {"zoom_in": bool(s[0] > s[-1])}


# ---------------------------------------------------------------- picture degradations (i21b's judgements)

def _fit_inside(frames: np.ndarray, box_w: int, box_h: int) -> np.ndarray:
    """Each frame scaled into a box_w x box_h window centred on black (letterbox / pillarbox / windowbox)."""
    h, w = frames.shape[1:3]
    out = np.zeros_like(frames)
    y0, x0 = (h - box_h) // 2, (w - box_w) // 2
    for i, f in enumerate(frames):
        out[i, y0:y0 + box_h, x0:x0 + box_w] = cv2.resize(f, (box_w, box_h), interpolation=cv2.INTER_AREA)
    return out


def bars(frames: np.ndarray, rng: np.random.Generator, fps: float, style: str) -> tuple[np.ndarray, dict]:
    h, w = frames.shape[1:3]
    share = float(rng.choice([0.08, 0.12, 0.18]))  # each bar's share of the frame side
    bw = w - 2 * int(w * share) if style in ("pillarbox", "windowbox") else w
    bh = h - 2 * int(h * share) if style in ("letterbox", "windowbox") else h
    return _fit_inside(frames, bw & ~1, bh & ~1), {"bar_share": share}


def blur(frames: np.ndarray, rng: np.random.Generator, fps: float, sigma: float) -> tuple[np.ndarray, dict]:
    s = sigma * min(frames.shape[1:3]) / 360  # the same look at every resolution
    return np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in frames]), {"sigma_360": sigma}


def exposure(frames: np.ndarray, rng: np.random.Generator, fps: float, target: float) -> tuple[np.ndarray, dict]:
    """Exposure changed in linear light so the median pixel lands at `target` (linear): 0.004 is under-exposed
    (crushed to ~8% grey), 0.6 over-exposed (clipped highlights). A fixed gain would leave a dark scene
    looking normal after "over-exposure"; the target does not depend on the scene."""
    lin = (frames.astype(np.float32) / 255) ** 2.2
    gain = target / max(float(np.median(lin)), 1e-4)
    gain = min(gain, 0.25) if target < 0.1 else max(gain, 4.0)  # always a real change, whatever the scene
    return (np.clip(lin * gain, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8), {"gain": round(gain, 3)}


def down_up(frames: np.ndarray, rng: np.random.Generator, fps: float, factor: int) -> tuple[np.ndarray, dict]:
    h, w = frames.shape[1:3]
    small = [cv2.resize(f, (max(8, w // factor), max(8, h // factor)), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack([cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR) for s in small]), {"factor": factor}


def hold(frames: np.ndarray, rng: np.random.Generator, fps: float, hold_s: float | None) -> tuple[np.ndarray, dict]:
    """hold_s None: one frame for the whole clip (frozen); else a slideshow of stills held hold_s each."""
    n = len(frames)
    step = n if hold_s is None else max(1, int(round(hold_s * fps)))
    return frames[(np.arange(n) // step) * step], {"hold_s": hold_s}


# kind -> (tags, picture function or None, crf). Picture functions get (frames at the target size, rng, fps);
# camera functions (marked "crop") get the native frames and the output size.
PICTURE: dict[str, tuple[tuple[str, ...], Callable, int]] = {
    "subtitles": (("subtitles", "overlay_text"), subtitles, 18),
    "lower_third": (("lower_third", "overlay_text"), lower_third, 18),
    "title_card": (("title_card", "overlay_text"), title_card, 18),
    "logo": (("logo", "overlay_text"), logo, 18),
    "watermark": (("watermark", "overlay_text"), watermark, 18),
    "letterbox": (("letterbox", "border"), lambda f, r, fps: bars(f, r, fps, "letterbox"), 18),
    "pillarbox": (("pillarbox", "border"), lambda f, r, fps: bars(f, r, fps, "pillarbox"), 18),
    "windowbox": (("windowbox", "border"), lambda f, r, fps: bars(f, r, fps, "windowbox"), 18),
    "blur_mild": (("blur_mild",), lambda f, r, fps: blur(f, r, fps, 1.5), 18),
    "blur": (("blur",), lambda f, r, fps: blur(f, r, fps, 3.5), 18),
    "underexposed": (("underexposed", "exposure"), lambda f, r, fps: exposure(f, r, fps, 0.004), 18),
    "overexposed": (("overexposed", "exposure"), lambda f, r, fps: exposure(f, r, fps, 0.6), 18),
    "compressed": (("compressed", "low_quality"), lambda f, r, fps: (f, {}), 46),
    "down_up": (("down_up", "low_quality"), lambda f, r, fps: down_up(f, r, fps, 4), 18),
    "frozen": (("frozen",), lambda f, r, fps: hold(f, r, fps, None), 18),
    "slideshow": (("slideshow",), lambda f, r, fps: hold(f, r, fps, 1.0), 18),
}
CAMERA: dict[str, tuple[tuple[str, ...], Callable]] = {
    "jitter": (("shaky",), lambda n, wh, r, fps: jitter(n, wh, r, fps, 0.012)),
    "jitter_strong": (("shaky",), lambda n, wh, r, fps: jitter(n, wh, r, fps, 0.025)),
    "pan": (("smooth_move",), lambda n, wh, r, fps: pan(n, wh, r, fps, 0.25)),
    "pan_fast": (("smooth_move",), lambda n, wh, r, fps: pan(n, wh, r, fps, 0.6)),
    "zoom": (("smooth_move",), zoom),
}
# Near-duplicates of a window's clean clip (the dedup measurement): kind -> (description, transform).
DUPLICATES = ("reencode_crf28", "reencode_crf36", "rescale_half", "crop_90", "speed_125", "speed_080")
KINDS = tuple(PICTURE) + tuple(CAMERA)


# ---------------------------------------------------------------- windows, decoding, encoding

def shot_windows(path: str, window_s: float, min_s: float) -> list[tuple[float, float]]:
    """Windows of window_s seconds inside shots (ContentDetector cuts); shots shorter than min_s are skipped."""
    from scenedetect import ContentDetector, detect

    shots = [(a.get_seconds(), b.get_seconds()) for a, b in detect(path, ContentDetector())]
    if not shots:
        with av.open(path) as c:
            st = c.streams.video[0]
            dur = float(c.duration / 1e6) if c.duration else float(st.frames / float(st.average_rate))
        shots = [(0.0, dur)]
    out = []
    for a, b in shots:
        a, b = a + 0.1, b - 0.1  # stay clear of the cut and its dissolve frames
        t = a
        while b - t >= min_s:
            out.append((t, min(b, t + window_s)))
            t += window_s + 0.5
    return out


def decode_windows(path: str, windows: list[tuple[float, float]]) -> tuple[list[np.ndarray], float, int]:
    """Native-size upright RGB frames of each window (display aspect applied), the fps, the native short side."""
    from curation.video import iter_frames, open_container, first_video_stream

    with open_container(path) as c:
        fps = float(first_video_stream(c, path).average_rate or 25)
    got: list[list[np.ndarray]] = [[] for _ in windows]
    end = max(b for _, b in windows)
    for _, t, img in iter_frames(path, end_s=end):
        for k, (a, b) in enumerate(windows):
            if a <= t < b:
                got[k].append(img)
    frames = [np.stack(g) for g in got if g]
    return frames, fps, min(frames[0].shape[1:3]) if frames else 0


def size_for(native: np.ndarray, short: int) -> tuple[int, int]:
    """(w, h) with the given short side, even numbers, the native aspect kept."""
    h, w = native.shape[1:3]
    s = short / min(h, w)
    return int(round(w * s / 2)) * 2, int(round(h * s / 2)) * 2


def resize(frames: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    interp = cv2.INTER_AREA if wh[0] < frames.shape[2] else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, wh, interpolation=interp) for f in frames])


def encode(path: str, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """H.264 yuv420p mp4 (what the split stage writes), written atomically."""
    tmp = path + ".tmp.mp4"
    with av.open(tmp, "w") as c:
        st = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height = frames.shape[2], frames.shape[1]
        st.pix_fmt = "yuv420p"
        st.options = {"crf": str(crf), "preset": "veryfast"}
        st.codec_context.thread_count = 1
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    os.replace(tmp, path)


def duplicate(kind: str, frames: np.ndarray, fps: float) -> tuple[np.ndarray, float, int]:
    """(frames, fps, crf) of a near-duplicate of a clean clip."""
    h, w = frames.shape[1:3]
    if kind.startswith("reencode_crf"):
        return frames, fps, int(kind[-2:])
    if kind == "rescale_half":
        return resize(frames, (w // 4 * 2, h // 4 * 2)), fps, 23
    if kind == "crop_90":
        y, x = int(h * 0.05), int(w * 0.05)
        return resize(frames[:, y:h - y, x:w - x], (w, h)), fps, 23
    speed = {"speed_125": 1.25, "speed_080": 0.8}[kind]
    idx = np.arange(0, len(frames), speed).astype(int)  # frames dropped / repeated at the same fps
    return frames[idx[idx < len(frames)]], fps, 23


# ---------------------------------------------------------------- the set

@dataclass
class SetOptions:
    """How big the labelled set is (the default runs bench/judgement.py in ~15 min on 2 loaded cores)."""

    window_s: float = 2.0  # clip length (s)
    min_window_s: float = 1.0  # shots shorter than this give no window
    base_short: int = 360  # short side of degraded clips and of the main clean copy
    drift_shorts: tuple[int, ...] = (144, 1080)  # clean copies at these short sides too (the resolution drift) ...
    drift_windows: int = 6  # ... of this many windows per part (drawn by seed)
    per_kind: int = 3  # degraded clips per kind and part (windows drawn by seed)
    duplicates_per_part: int = 4  # windows per part that get the DUPLICATES variants
    kinds: tuple[str, ...] = KINDS  # degradations to make
    seed: int = 0

    def key(self) -> str:
        """Names the labels file: every option."""
        return hashlib.sha1(json.dumps([VERSION, asdict(self)], sort_keys=True, default=list).encode()).hexdigest()[:10]

    def clip_key(self) -> str:
        """Names the clips folder: only what changes a clip's pixels (a bigger set reuses a smaller one's clips)."""
        geo = [VERSION, self.window_s, self.min_window_s, self.base_short, self.seed]
        return hashlib.sha1(json.dumps(geo).encode()).hexdigest()[:10]


def natural_tags(src: Source, a: float, b: float) -> list[str]:
    return sorted({t for t0, t1, tags in src.natural if a < t1 and b > t0 for t in tags})


def plan_draws(windows: dict[str, int], sources: list[Source], opts: SetOptions) -> set[tuple[str, int, str]]:
    """Seeded choice, per part and kind, of the windows that get that kind: (source, window, kind)."""
    plan = set()
    for p, part in enumerate(("calibration", "report")):
        pool = [(s.name, w) for s in sources if s.part == part for w in range(windows[s.name])]
        for k, kind in enumerate(tuple(KINDS) + ("duplicates", "drift")):
            quota = {"duplicates": opts.duplicates_per_part, "drift": opts.drift_windows}.get(kind, opts.per_kind)
            rng = np.random.default_rng([opts.seed, k, p])
            plan |= {(pool[i][0], pool[i][1], kind) for i in rng.permutation(len(pool))[:quota]}
    return plan


def build_set(testdata: str, cache: str, opts: SetOptions, sources: list[Source] | None = None,
              log: Callable[[str], None] = print) -> list[Clip]:
    """Make (or reuse) every clip of the set under cache/<opts.key()>/; returns the labels."""
    sources = sources if sources is not None else SOURCES
    # The folder depends on what changes pixels only; natural tags are applied on every load (relabel).
    ident = repr([(s.name, s.path, s.part) for s in sources])
    folder = os.path.join(cache, opts.clip_key() + "-" + hashlib.sha1(ident.encode()).hexdigest()[:6])
    labels = os.path.join(folder, f"labels-{opts.key()}.jsonl")
    spans = _spans(testdata, folder, sources, opts)
    if os.path.exists(labels):
        clips = [Clip(**json.loads(line)) for line in open(labels)]
        if all(os.path.exists(c.path) for c in clips):  # else: make the missing ones (the others are kept)
            return relabel(clips, sources, spans)
    plan = plan_draws({k: len(v) for k, v in spans.items()}, sources, opts)
    clips: list[Clip] = []
    for si, src in enumerate(sources):
        natives, fps, native_short = decode_windows(os.path.join(testdata, src.path), spans[src.name])
        log(f"  {src.name}: {len(natives)} windows ({src.part})")
        for wi, native in enumerate(natives):
            kinds = [k for k in tuple(opts.kinds) + ("duplicates", "drift") if (src.name, wi, k) in plan]
            clips += _window_clips(folder, src, wi, spans[src.name][wi], native, fps, native_short, opts, si, kinds)
    with open(labels + ".tmp", "w") as f:
        for c in clips:
            f.write(json.dumps(asdict(c)) + "\n")
    os.replace(labels + ".tmp", labels)
    return relabel(clips, sources, spans)


def _spans(testdata: str, folder: str, sources: list[Source], opts: SetOptions) -> dict[str, list]:
    """Windows (t0, t1) of every source, computed once per folder (shot detection is the slow part)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "windows.json")
    spans = json.load(open(path)) if os.path.exists(path) else {}
    for src in sources:
        if src.name not in spans:
            video = os.path.join(testdata, src.path)
            if not os.path.exists(video):
                raise FileNotFoundError(f"test video {video} is missing (labelled source {src.name})")
            spans[src.name] = shot_windows(video, opts.window_s, opts.min_window_s)
    with open(path, "w") as f:
        json.dump(spans, f)
    return spans


def kind_tags(kind: str) -> list[str]:
    """The labels a kind of clip carries by construction."""
    if kind in PICTURE:
        return list(PICTURE[kind][0])
    if kind in CAMERA:
        return list(CAMERA[kind][0])
    return ["duplicate"] if kind in DUPLICATES else []


# Natural overlay tags that a camera move made by a moving crop takes away: the crop moves the source's own
# overlay (the leaf's copyright line, the interview's logo) with the picture, or cuts it off. What is left
# is text that moves with the camera, which no stability test can call an overlay: "moved_overlay"
# (the text judgements ignore it: neither a positive nor a negative).
OVERLAY_TAGS = {"overlay_text", "logo", "watermark", "title_card", "subtitles", "lower_third"}


def relabel(clips: list[Clip], sources: list[Source], spans: dict[str, list]) -> list[Clip]:
    """Tags = the kind's own + the natural tags of the window's time range (as SOURCES says now); on
    camera-move clips the natural overlay tags become "moved_overlay"."""
    by_name = {s.name: s for s in sources}
    for c in clips:
        wi = int(c.window.rsplit("-w", 1)[1])
        natural = set(natural_tags(by_name[c.source], *spans[c.source][wi]))
        if c.kind in CAMERA and natural & OVERLAY_TAGS:
            natural = (natural - OVERLAY_TAGS) | {"moved_overlay"}
        c.tags = sorted(set(kind_tags(c.kind)) | natural)
    return clips


def _window_clips(folder: str, src: Source, wi: int, span: tuple[float, float], native: np.ndarray, fps: float,
                  native_short: int, opts: SetOptions, si: int, kinds: list[str]) -> list[Clip]:
    """Every clip of one window: the clean copy, the drawn degradations, duplicates and resolution copies.
    A clip already on disk is not rendered again (its parameters come from its .json sidecar)."""
    wid = f"{src.name}-w{wi:02d}"
    out: list[Clip] = []

    def emit(kind: str, short: int, make: Callable[[], tuple[np.ndarray, dict, int, float]]) -> None:
        cid = f"{wid}-{kind}-{short}"
        p = os.path.join(folder, cid + ".mp4")
        if not os.path.exists(p):
            frames, params, crf, clip_fps = make()
            with open(p + ".json", "w") as f:
                json.dump(params, f)
            encode(p, frames, clip_fps, crf)
        params = json.load(open(p + ".json")) if os.path.exists(p + ".json") else {}
        out.append(Clip(cid, p, src.name, src.part, wid, kind, [], short, native_short, params))

    wh = size_for(native, opts.base_short)
    base = resize(native, wh)
    emit("clean", opts.base_short, lambda: (base, {}, 18, fps))
    for kind in kinds:
        krng = np.random.default_rng([opts.seed, si, wi, len(kind), sum(map(ord, kind))])
        if kind == "drift":
            for short in opts.drift_shorts:
                emit("clean", short, lambda short=short: (resize(native, size_for(native, short)), {}, 18, fps))
        elif kind == "duplicates":
            for dk in DUPLICATES:
                emit(dk, opts.base_short, lambda dk=dk: (*_dup(dk, base, fps, f"{wid}-clean-{opts.base_short}"),))
        elif kind in CAMERA:
            emit(kind, opts.base_short, lambda fn=CAMERA[kind][1], r=krng: (*fn(native, wh, r, fps), 18, fps))
        else:
            emit(kind, opts.base_short, lambda fn=PICTURE[kind][1], crf=PICTURE[kind][2], r=krng: (*fn(base, r, fps), crf, fps))
    return out


def _dup(kind: str, base: np.ndarray, fps: float, of: str) -> tuple[np.ndarray, dict, int, float]:
    frames, dfps, crf = duplicate(kind, base, fps)
    return frames, {"of": of}, crf, dfps
