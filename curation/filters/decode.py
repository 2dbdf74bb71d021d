"""Decode a clip once: sampled frames at every size the scorers asked for, plus codec motion vectors.

Every frame of the clip is decoded (a codec cannot skip), but only the sampled ones are converted
(swscale straight from YUV to each requested size/format), so the conversion cost follows the sample
rate. Motion vectors come from the same decode: FFmpeg exports them as frame side data when the
decoder is opened with `flags2=+export_mvs` (the fast path NVIDIA Cosmos-Curate uses).
"""
from __future__ import annotations

import math

import av
import numpy as np

from curation.filters.base import ClipFrames, FrameSpec
from curation.video import (VideoError, first_video_stream, frame_rotation, frame_time, open_container,
                            stream_rotation, stream_sar)


def _target(disp_w: float, disp_h: float, short: int, upscale: bool = True) -> tuple[int, int]:
    s = short / min(disp_w, disp_h)
    if not upscale:
        s = min(s, 1.0)
    return max(8, int(round(disp_w * s))), max(8, int(round(disp_h * s)))


def _convert(fr: "av.VideoFrame", spec: FrameSpec, rotation: int, out_w: int, out_h: int) -> np.ndarray:
    """Scale in coded orientation with swscale (area filter: clean downscaling), rotate, crop."""
    tw, th = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    arr = fr.reformat(width=tw, height=th, format=spec.fmt, interpolation="AREA").to_ndarray()
    if rotation:
        arr = np.rot90(arr, k=-(rotation // 90))
    if spec.square_crop:
        s = spec.short_side
        y0, x0 = (arr.shape[0] - s) // 2, (arr.shape[1] - s) // 2
        arr = arr[y0:y0 + s, x0:x0 + s]
    return np.ascontiguousarray(arr)


def _mv_cells(fr: "av.VideoFrame", coded_w: int, coded_h: int, cells: int) -> np.ndarray | None:
    """Mean motion-vector length (pixels per frame) per grid cell, area-weighted; None for intra frames."""
    sd = fr.side_data.get("MOTION_VECTORS")
    if sd is None:
        return None
    a = sd.to_ndarray()
    if not len(a):
        return None
    scale = np.maximum(a["motion_scale"].astype(np.float32), 1.0)
    # `source` is the signed distance (in frames) to the reference: normalise to one frame interval.
    dist = np.maximum(np.abs(a["source"]).astype(np.float32), 1.0)
    mag = np.hypot(a["motion_x"] / scale, a["motion_y"] / scale) / dist
    area = a["w"].astype(np.float32) * a["h"].astype(np.float32)
    cx = np.clip((a["dst_x"].astype(np.int64) * cells) // max(coded_w, 1), 0, cells - 1)
    cy = np.clip((a["dst_y"].astype(np.int64) * cells) // max(coded_h, 1), 0, cells - 1)
    idx = cy * cells + cx
    num = np.bincount(idx, weights=mag * area, minlength=cells * cells)
    den = np.bincount(idx, weights=area, minlength=cells * cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).reshape(cells, cells).astype(np.float32)  # NaN: a cell with only intra blocks


def decode_clip(source: str, specs: list[FrameSpec], sample_fps: float = 2.0, max_frames: int = 64,
                mv_cells: int | None = None) -> ClipFrames:
    """Decode `source` once; frames sampled at `sample_fps` (first frame at or after each 1/fps step).

    Raises VideoError for files that cannot be opened or decoded, or that hold no frame.
    """
    specs = list({s.key: s for s in specs}.values())
    with open_container(source) as c:
        st = first_video_stream(c, source)
        if mv_cells:
            st.codec_context.options = {"flags2": "+export_mvs"}
        fps_src = float(st.average_rate or st.guessed_rate or 25)
        duration = float(st.duration * st.time_base) if st.duration and st.time_base else 0.0
        rate = sample_fps
        if duration > 0 and duration * rate > max_frames:  # long clip: thin evenly up front
            rate = max_frames / duration
        times: list[float] = []
        out: dict[str, list[np.ndarray]] = {s.key: [] for s in specs}
        mv_t: list[float] = []
        mv_g: list[np.ndarray] = []
        geo: dict[str, tuple[int, int]] = {}
        rotation, next_t, n = 0, 0.0, 0
        cw, ch = st.codec_context.width, st.codec_context.height
        try:
            for n, fr in enumerate(c.decode(st), 1):
                t = frame_time(fr, st, n - 1, fps_src)
                if mv_cells:
                    g = _mv_cells(fr, fr.width or cw, fr.height or ch, mv_cells)
                    if g is not None:
                        mv_t.append(t)
                        mv_g.append(g)
                if t + 1e-6 < next_t:
                    for s in specs:  # the frames that follow a sampled one, for burst specs
                        if s.burst > 1 and out[s.key] and len(out[s.key][-1]) < s.burst:
                            out[s.key][-1].append(_convert(fr, s, rotation, *geo[s.key]))
                    continue
                if not geo:
                    rotation = frame_rotation(fr) or stream_rotation(st)
                    dw, dh = fr.width * stream_sar(st), float(fr.height)
                    if rotation in (90, 270):
                        dw, dh = dh, dw
                    geo = {s.key: _target(dw, dh, s.short_side, s.upscale) for s in specs}
                    geo["_display"] = (int(round(dw)), int(round(dh)))
                next_t = (math.floor(t * rate + 1e-6) + 1) / rate
                times.append(t)
                for s in specs:
                    img = _convert(fr, s, rotation, *geo[s.key])
                    out[s.key].append([img] if s.burst > 1 else img)
        except av.error.FFmpegError as e:
            raise VideoError(f"{source}: decode failed after {n} frames ({e})") from None
    if not times:
        raise VideoError(f"{source}: no decodable video frames")
    keep = np.arange(len(times))
    if len(times) > max_frames:  # duration unknown or wrong: thin afterwards
        keep = np.unique(np.linspace(0, len(times) - 1, max_frames).round().astype(int))
    t0 = times[0]
    return ClipFrames(
        times=np.asarray(times, np.float64)[keep] - t0,
        frames={k: np.stack([_full(b, s.burst) for b in out[k]] if s.burst > 1 else out[k])[keep]
                for k, s in ((s.key, s) for s in specs)},
        width=geo["_display"][0], height=geo["_display"][1], fps=fps_src,
        mv_times=(np.asarray(mv_t, np.float64) - t0) if mv_cells else None,
        mv_grid=(np.stack(mv_g) if mv_g else np.zeros((0, mv_cells, mv_cells), np.float32)) if mv_cells else None,
        decoded_frames=n)


def _full(burst: list[np.ndarray], n: int) -> np.ndarray:
    """A burst cut short by the clip's end (or the next sample) repeats its last frame."""
    return np.stack(burst + [burst[-1]] * (n - len(burst)))
