"""mode frames_then_summary: CogVideoX's dense-caption recipe as three pipeline steps.

    clip ─► SampleKeyFrames (CPU: one JPEG per keyframe_every_s, with its time; + the clip's frames when a
            short video caption is asked for)
         ─► CaptionFrames (the VLM engine: one image caption per key frame, optional short video caption)
         ─► Summarize (a text LM: frame captions with times + short caption -> one dense caption) ─► sink

The summary is the caption (`text`); the frame captions stay in the row (`frame_captions`, with times)
and so does the short video caption. A failure in any step is the clip's error row, prefixed with the
step (`frames:`, `frame caption:`, `summary:`). A summary error row keeps the frame captions it was given,
and a re-run hands them straight to the summary: what the VLM already captioned is not captioned again.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from captioning import postprocess
from captioning.config import CaptionConfig
from captioning.engines import CaptionRequest, Generation, SamplingParams, TextRequest, make_engine, make_text_engine
from captioning.frames import encode_jpeg, probe_duration, sample_frames
from captioning.prompts import combined_hash, get_prompt, get_text_prompt, render
from captioning.rows import caption_row, read_range
from captioning.table import frame_lists, read_captions
from curation.stage import Stage, StageResources
from curation.video import VideoError, iter_frames

# Columns every row carries between the steps (Ray Data batches need one set of columns).
CARRIED = ("clip_id", "frames", "fps", "keyframes", "frame_times", "frame_texts", "video_caption", "duration_s",
           "tokens_in", "tokens_out", "latency_s", "error")


def carried(row: dict, **update: object) -> dict:
    out = {k: row.get(k) for k in CARRIED}
    out.update(update)
    return out


def sample_keyframes(source: str, duration_s: float, cfg: CaptionConfig) -> tuple[list[bytes], list[float]]:
    """JPEG key frames of `source`, one per `summary.keyframe_every_s` from t=0 (at most max_keyframes,
    evenly spread), and their times in seconds. Raises ValueError when no frame decodes."""
    s = cfg.summary
    picked = [(t, img) for _, t, img in iter_frames(source, cfg.max_side, cfg.max_side, fps=1.0 / s.keyframe_every_s)]
    if not picked:
        raise ValueError(f"{source}: no decodable frame")
    if len(picked) > s.max_keyframes:
        picked = [picked[i] for i in np.linspace(0, len(picked) - 1, s.max_keyframes).round().astype(int)]
    return [encode_jpeg(img, cfg.jpeg_quality) for _, img in picked], [round(float(t), 3) for t, _ in picked]


@contextmanager
def local_clip(row: dict) -> Iterator[str]:
    """A local path of the row's clip: its file, or a WebDataset member copied to a temporary file."""
    if not row.get("tar"):
        yield row["path"]
        return
    fd, path = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(read_range(row["tar"], int(row["offset"]), int(row["size"])))
        yield path
    finally:
        os.remove(path)


class SampleKeyFrames(Stage):
    """CPU step: key frames with their times (and the video frames for a short caption), stateless tasks."""

    name = "caption-keyframes"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.frames.resources))
        self.cfg = cfg

    def process_row(self, row: dict) -> list[dict]:
        name = f"{row['tar']}:{row['clip_id']}" if row.get("tar") else row.get("path")
        need_frames = not row.get("frame_texts")
        need_video = self.cfg.summary.video_prompt is not None and not row.get("video_caption")
        keyframes, times, frames, fps = [], row.get("frame_times"), [], 0.0
        duration = row.get("duration_s")
        if need_frames or need_video:
            with local_clip(row) as path:
                try:
                    duration = duration or probe_duration(path)
                    if need_frames:
                        keyframes, times = sample_keyframes(path, duration, self.cfg)
                    if need_video:
                        frames, fps = sample_frames(path, duration, self.cfg)
                except (ValueError, VideoError) as e:
                    raise type(e)(str(e).replace(path, name or "clip")) from None
            row["duration_s"] = duration
        return [carried(row, frames=frames, fps=fps, keyframes=keyframes, frame_times=times, tokens_in=0,
                        tokens_out=0, latency_s=0.0, error=None)]

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [carried(row, frames=[], fps=0.0, keyframes=[], frame_times=None, frame_texts=None,
                        video_caption=None, tokens_in=0, tokens_out=0, latency_s=0.0, error=f"frames: {message}")]


class CaptionFrames(Stage):
    """VLM step: one image caption per key frame (all key frames of a batch in one engine call), and the
    optional short video caption. A clip whose frame or video caption fails gets an error."""

    name = "caption-frames-vlm"
    stateful = True

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.resources))
        self.cfg = cfg
        self.frame_prompt = get_prompt(cfg.summary.frame_prompt)
        self.video_prompt = get_prompt(cfg.summary.video_prompt) if cfg.summary.video_prompt else None
        self.engine = None

    def setup(self) -> None:
        self.engine = make_engine(self.cfg)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        params = SamplingParams(self.cfg.max_tokens, self.cfg.temperature, self.cfg.top_p)
        todo = [r for r in rows if not r.get("error") and not r.get("frame_texts")]
        reqs = [(r, i, CaptionRequest(f"{r['clip_id']}@{t:.2f}s", [jpg], 1.0, as_images=True))
                for r in todo for i, (jpg, t) in enumerate(zip(r["keyframes"] or [], r["frame_times"] or []))]
        gens = self._generate([q for _, _, q in reqs], self.frame_prompt, params)
        texts: dict[str, list] = {r["clip_id"]: [None] * len(r["keyframes"] or []) for r in todo}
        for (r, i, _), g in zip(reqs, gens):
            self._add(r, g)
            if g.error:
                r["error"] = r.get("error") or f"frame caption at {r['frame_times'][i]:.2f} s: {g.error}"
            texts[r["clip_id"]][i] = postprocess.clean(g.text or "")
        for r in todo:
            r["frame_texts"] = texts[r["clip_id"]]
        if self.video_prompt is not None:
            vrows = [r for r in rows if not r.get("error") and not r.get("video_caption")]
            vgens = self._generate([CaptionRequest(r["clip_id"], list(r["frames"]), float(r["fps"])) for r in vrows],
                                   self.video_prompt, params)
            for r, g in zip(vrows, vgens):
                self._add(r, g)
                r["video_caption"] = postprocess.clean(g.text or "")
                if g.error:
                    r["error"] = f"video caption: {g.error}"
        return [carried(r, frames=[], keyframes=[]) for r in rows]

    def _generate(self, reqs: list[CaptionRequest], prompt: "object", params: SamplingParams) -> list[Generation]:
        if not reqs:
            return []
        try:
            return self.engine.generate(reqs, prompt, params)
        except Exception as e:  # the engine broke: every request of the batch fails with it
            return [Generation(error=f"engine: {type(e).__name__}: {e}") for _ in reqs]

    @staticmethod
    def _add(r: dict, g: Generation) -> None:
        r["tokens_in"] = (r.get("tokens_in") or 0) + (g.tokens_in or 0)
        r["tokens_out"] = (r.get("tokens_out") or 0) + (g.tokens_out or 0)
        r["latency_s"] = (r.get("latency_s") or 0.0) + (g.latency_s or 0.0)


def summary_request(row: dict, prompt: "object") -> TextRequest:
    """The text LM's request of one clip: its frame captions with times, and the short video caption.

    Raises ValueError naming the clip when there is no frame caption to summarise."""
    pairs = [(t, x) for t, x in zip(row.get("frame_times") or [], row.get("frame_texts") or []) if x and x.strip()]
    if not pairs:
        raise ValueError(f"clip {row['clip_id']}: no frame captions to summarise "
                         f"({len(row.get('frame_texts') or [])} key frame caption(s), all empty)")
    vc = row.get("video_caption")
    p = render(prompt, frames="\n".join(f"[{t:.1f} s] {x}" for t, x in pairs),
               video_caption=f"\nA short caption of the whole clip: {vc}\n" if vc else "",
               duration=f"{float(row.get('duration_s') or pairs[-1][0]):.1f}")
    return TextRequest(row["clip_id"], p.system, p.user)


class Summarize(Stage):
    """Text-LM step: one dense caption per clip from its frame captions; the captions-table row."""

    name = "caption-summary"
    stateful = True

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.summary.resources))
        self.cfg = cfg
        self.prompt = get_text_prompt(cfg.summary.prompt, cfg.summary.prompt_text, "caption.summary")
        frame = get_prompt(cfg.summary.frame_prompt)
        video = get_prompt(cfg.summary.video_prompt) if cfg.summary.video_prompt else None
        self.prompt_name = "+".join(p.name for p in (frame, video, self.prompt) if p is not None)
        self.prompt_hash = combined_hash(frame, video, self.prompt)
        self.engine = None

    def setup(self) -> None:
        self.engine = make_text_engine(self.cfg.summary)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        reqs: list[tuple[dict, TextRequest]] = []
        out = []
        for r in rows:
            if not r.get("error"):
                try:
                    reqs.append((r, summary_request(r, self.prompt)))
                    continue
                except ValueError as e:
                    r["error"] = f"summary: {e}"
            out.append(self._row(r, Generation(error=r["error"]), [], None, 0))
        s = self.cfg.summary
        params = SamplingParams(s.max_tokens, s.temperature, s.top_p)
        results, retries = postprocess.generate_judged(
            lambda idx, p: self.engine.generate_text([reqs[i][1] for i in idx], p), len(reqs), params,
            self.cfg.retry_bad)
        for (r, _), (g, text, flags), n in zip(reqs, results, retries):
            if g.error:
                g = Generation(error=f"summary: {g.error}", latency_s=g.latency_s)
            out.append(self._row(r, g, flags, text, n))
        return out

    def _row(self, r: dict, g: Generation, flags: list[str], text: str | None, retries: int) -> dict:
        row = caption_row(r["clip_id"], g, flags, text, retries, model=self.cfg.model, engine=self.cfg.engine,
                          prompt=self.prompt_name, prompt_hash=self.prompt_hash, mode="frames_then_summary",
                          frames=len(r.get("frame_texts") or []), video_caption=r.get("video_caption"),
                          summary_model=self.cfg.summary.model, summary_engine=self.cfg.summary.engine)
        row["tokens_in"] = (r.get("tokens_in") or 0) + (g.tokens_in or 0)
        row["tokens_out"] = (r.get("tokens_out") or 0) + (g.tokens_out or 0)
        row["latency_s"] = (r.get("latency_s") or 0.0) + (g.latency_s or 0.0)
        row["frame_times"], row["frame_texts"] = r.get("frame_times"), r.get("frame_texts")
        return row

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def reusable_frames(storage: "object", cfg: CaptionConfig) -> dict[str, dict]:
    """Frame captions (and short video captions) of the run's error rows that failed after the VLM step,
    by clip id: a re-run summarises them again instead of captioning the frames again."""
    out = {}
    for r in read_captions(storage, cfg.run).to_pylist():
        if r["error"] and r["error"].startswith("summary:") and r["frame_captions"] and r["model"] == cfg.model:
            times, texts = frame_lists(r["frame_captions"])
            out[r["clip_id"]] = {"frame_times": times, "frame_texts": texts, "video_caption": r["video_caption"]}
    return out
