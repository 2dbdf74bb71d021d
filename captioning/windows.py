"""caption.windows: a long clip captioned in overlapping windows, merged into one caption.

    clip (longer than window_s) ─► spans [0, w], [w - o, 2w - o], ... ─► frames of each span (sample_fps,
    max_frames per window) ─► one caption request per window (all in the clip's engine batch)
    ─► window_captions (start_s, end_s, text) + text = the window captions merged in time order

A clip of at most window_s stays one request. Merging drops a window's sentences that repeat a sentence
of the window before (overlapping windows describe the shared seconds twice); nothing is invented, so the
merged caption is exactly the window captions' content in order. The frame step sends all windows' frames
in one row (`frames`) with `window_spans` ([start_s, end_s, n_frames, fps] each) saying how to cut them.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from captioning import postprocess
from captioning.config import CaptionConfig
from captioning.engines.base import CaptionRequest, Generation, SamplingParams
from captioning.frames import encode_jpeg, frame_count
from curation.video import iter_frames


def window_spans(duration_s: float, window_s: float | None, overlap_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each window; one span for a clip no longer than a window. A last window
    shorter than half the stride joins the one before (a sliver of a second is no clip to caption)."""
    if window_s is None or duration_s <= window_s + 1e-6:
        return [(0.0, float(duration_s))]
    stride = window_s - overlap_s
    spans: list[tuple[float, float]] = []
    start = 0.0
    while True:
        end = min(start + window_s, duration_s)
        if spans and end - start < stride / 2 and end - spans[-1][1] < stride / 2:
            spans[-1] = (spans[-1][0], float(duration_s))
            break
        spans.append((round(start, 3), round(end, 3)))
        if end >= duration_s - 1e-6:
            break
        start += stride
    return spans


def sample_windows(source: str, duration_s: float, cfg: CaptionConfig) -> tuple[list[bytes], list[list[float]]]:
    """All windows' JPEG frames in order, and [start_s, end_s, n_frames, fps] per window. Each window is
    sampled as a clip of its own length would be. Raises ValueError for a window with < 2 frames."""
    frames: list[bytes] = []
    spans = []
    for start, end in window_spans(duration_s, cfg.windows.window_s, cfg.windows.overlap_s):
        n = frame_count(end - start, cfg)
        picked = [img for _, _, img in iter_frames(source, cfg.max_side, cfg.max_side, fps=n / (end - start),
                                                   start_s=start, end_s=end)]
        if len(picked) < 2:
            raise ValueError(f"{source}: window {start:.1f}-{end:.1f} s has {len(picked)} decodable frame(s)")
        picked = [picked[i] for i in np.linspace(0, len(picked) - 1, min(n, len(picked))).round().astype(int)]
        frames += [encode_jpeg(f, cfg.jpeg_quality) for f in picked]
        spans.append([start, end, float(len(picked)), len(picked) / (end - start)])
    return frames, spans


def is_windowed(row: dict) -> bool:
    spans = row.get("window_spans")
    return spans is not None and len(spans) > 1


def split_requests(row: dict) -> list[CaptionRequest]:
    """One request per window of a windowed row (the frames cut by window_spans)."""
    out, i = [], 0
    for start, end, n, fps in row["window_spans"]:
        n = int(n)
        out.append(CaptionRequest(row["clip_id"], list(row["frames"][i:i + n]), float(fps)))
        i += n
    return out


def whole_clip_request(row: dict, max_frames: int) -> CaptionRequest:
    """The clip as one request (structured fields, checks): its windows' frames thinned to max_frames."""
    frames = list(row["frames"])
    keep = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    duration = float(row["window_spans"][-1][1])
    return CaptionRequest(row["clip_id"], [frames[k] for k in keep], len(keep) / duration)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", (text or "").strip()) if s]


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s.lower()).strip()


def merge_texts(texts: list[str]) -> str:
    """Window captions in order as one caption, without the sentences a window repeats from the one before."""
    out: list[str] = []
    prev: set[str] = set()
    for t in texts:
        sents = _sentences(t)
        out += [s for s in sents if _norm(s) not in prev]
        prev = {_norm(s) for s in sents}
    return " ".join(out)


def merge_results(spans: list[list[float]], results: list[tuple], retries: list[int],
                  cfg: CaptionConfig) -> tuple[tuple, int, dict]:
    """One clip's (generation, text, flags), retries and window columns from its windows' results."""
    gens = [g for g, _, _ in results]
    err = next((f"window {s[0]:.1f}-{s[1]:.1f} s: {g.error}" for g, s in zip(gens, spans) if g.error), None)
    g = Generation(text="\n".join(x.text for x in gens),
                   finish_reason="length" if any(x.finish_reason == "length" for x in gens) else "stop",
                   tokens_in=sum(x.tokens_in or 0 for x in gens), tokens_out=sum(x.tokens_out or 0 for x in gens),
                   latency_s=max(x.latency_s for x in gens), error=err)
    flags = list(dict.fromkeys(f for _, _, fl in results for f in fl))
    cols = {"window_captions": [{"start_s": s[0], "end_s": s[1], "text": t} for s, (_, t, _) in zip(spans, results)],
            "window_s": cfg.windows.window_s, "window_overlap_s": cfg.windows.overlap_s}
    return (g, merge_texts([t for _, t, _ in results]), flags), sum(retries), cols


def clip_requests(rows: list[dict], max_frames: int) -> list[CaptionRequest]:
    """One request per clip row (a windowed clip's frames thinned to max_frames: fields and checks use it)."""
    return [whole_clip_request(r, max_frames) if is_windowed(r) else
            CaptionRequest(r["clip_id"], list(r["frames"]), float(r["fps"]), r.get("video")) for r in rows]


def caption_windowed(generate: Callable[[list[CaptionRequest], SamplingParams], list[Generation]], rows: list[dict],
                     reqs: list[CaptionRequest], params: SamplingParams,
                     cfg: CaptionConfig) -> tuple[list[tuple], list[int], list[dict]]:
    """Caption every clip (each window of a windowed one) in one judged engine batch: per clip its
    (generation, text, flags), retries and window columns. `generate(requests, params)` is the engine call."""
    calls: list[CaptionRequest] = []
    groups: list[range] = []
    for r, req in zip(rows, reqs):
        parts = split_requests(r) if is_windowed(r) else [req]
        groups.append(range(len(calls), len(calls) + len(parts)))
        calls += parts
    res, ret = postprocess.generate_judged(lambda idx, p: generate([calls[i] for i in idx], p), len(calls), params,
                                           cfg.retry_bad)
    results, retries, cols = [], [], []
    for r, g in zip(rows, groups):
        if is_windowed(r):
            one, n, c = merge_results(r["window_spans"], [res[i] for i in g], [ret[i] for i in g], cfg)
        else:
            one, n, c = res[g[0]], ret[g[0]], {}
        results.append(one)
        retries.append(n)
        cols.append(c)
    return results, retries, cols
