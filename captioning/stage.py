"""The caption stage: clips -> sampled JPEG frames (CPU workers) -> engine (actor pool) -> captions table.

    clips (+ scores.passed) -> SampleFrames (Ray tasks, CPU) -> Caption (Ray actors, engine) -> sink
                                                                     -> captions/<run>/part-*.parquet

Every clip that goes in comes out as exactly one row: a caption (possibly flagged), or an error
(unreadable clip, server down, ...). Rows are written as they arrive; a re-run of the same run skips
clips that have a caption and retries the error rows.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

from captioning.config import CaptionConfig
from captioning.engines import Generation, SamplingParams, make_engine
from captioning.enhance import enhance_run
from captioning.frames import probe_duration, sample_frames, sample_frames_from_bytes
from captioning.models import prepare_model, prepare_text_model  # noqa: F401 (prepare_text_model: re-exported)
from captioning.prompts import get_prompt
from captioning.rows import _now, caption_row, read_range  # noqa: F401 (re-exported)
from captioning.structured import structured_columns
from captioning.summary import CaptionFrames, SampleKeyFrames, Summarize, reusable_frames
from captioning.table import CAPTIONS, normalize, schema_for, table_name, write_run_info
from captioning.windows import caption_windowed, clip_requests, sample_windows
from curation.kept import kept_view
from curation.stage import Stage, StageResources
from curation.table_stage import TableStage, execute
from curation.storage import Storage
from curation.tables import write_part

log = logging.getLogger(__name__)


class SampleFrames(Stage):
    """CPU step: decode a clip at `sample_fps` and JPEG-encode its frames (stateless Ray tasks)."""

    name = "caption-frames"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.frames.resources))
        self.cfg = cfg

    def process_row(self, row: dict) -> list[dict]:
        want_video = self.cfg.engine == "openai" and self.cfg.openai.video_as == "video_url"
        duration = row.get("duration_s")
        if row.get("tar"):  # a WebDataset sample: read its mp4 member in place
            data = read_range(row["tar"], int(row["offset"]), int(row["size"]))
            frames, fps = sample_frames_from_bytes(data, duration, self.cfg, f"{row['tar']}:{row['clip_id']}")
        else:
            if duration is None:
                duration = probe_duration(row["path"])
            if self.cfg.windows.window_s is not None and duration > self.cfg.windows.window_s:
                frames, spans = sample_windows(row["path"], duration, self.cfg)
                return [{"clip_id": row["clip_id"], "frames": frames, "fps": spans[0][3], "video": None,
                         "window_spans": spans, "error": None}]
            frames, fps = sample_frames(row["path"], duration, self.cfg)
            data = read_range(row["path"], 0, None) if want_video else None
        return [{"clip_id": row["clip_id"], "frames": frames, "fps": fps,
                 "video": data if want_video else None, "window_spans": [], "error": None}]

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [{"clip_id": row["clip_id"], "frames": [], "fps": 0.0, "video": None, "window_spans": [],
                 "error": f"frames: {message}"}]


class Caption(Stage):
    """Engine step: one engine per worker (loaded in setup), a batch of clips per call."""

    name = "caption"
    stateful = True

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.resources))
        self.cfg = cfg
        self.prompt = get_prompt(cfg.prompt, cfg.prompt_text)
        self.engine = None

    def setup(self) -> None:
        self.engine = make_engine(self.cfg)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        out = [self._row(r["clip_id"], Generation(error=r["error"]), 0, []) for r in rows if r.get("error")]
        todo = [r for r in rows if not r.get("error")]
        if not todo:
            return out
        reqs = clip_requests(todo, self.cfg.max_frames)
        params = SamplingParams(self.cfg.max_tokens, self.cfg.temperature, self.cfg.top_p)
        results, retries, wcols = caption_windowed(lambda rs, p: self.engine.generate(rs, self.prompt, p), todo,
                                                   reqs, params, self.cfg)
        extra = structured_columns(self.engine, reqs, self.prompt, results, self.cfg)
        for r, (g, text, flags), n, w, (cols, more) in zip(todo, results, retries, wcols, extra):
            out.append({**self._row(r["clip_id"], g, len(r["frames"]), flags + more, text, n), **w, **cols})
        return out

    def _row(self, clip_id: str, g: Generation, frames: int, flags: list[str], text: str | None = None,
             retries: int = 0) -> dict:
        return caption_row(clip_id, g, flags, text, retries, model=self.cfg.model, engine=self.cfg.engine,
                           prompt=self.prompt.name, prompt_hash=self.prompt.hash, frames=frames, mode="video")


def clip_items(storage: Storage, cfg: CaptionConfig) -> list[dict]:
    """Work items from the clips table: the kept clips (curation.kept: ok, passed, not a duplicate), or with
    `only_kept: false` every ok clip. A duplicate is never captioned: the shards leave it out anyway."""
    view = kept_view(storage, score_columns=[])
    if not view.clips:
        raise ValueError(f"{storage.root}: no clips table (run the split stage first)")
    if cfg.only_kept:
        if not view.scores:
            print("[caption] no scores table: captioning every ok clip (run the filter stage to caption only "
                  "kept clips)", file=sys.stderr)
        rows = view.kept()
    else:
        rows = [r for r in view.clips if r.get("status", "ok") == "ok" and r.get("path")]
    return [{"clip_id": r["clip_id"], "path": storage.uri(r["path"]),
             "duration_s": (r["frames"] / r["fps"]) if r.get("fps") and r.get("frames") else None} for r in rows]


class CaptionTable(TableStage):
    """The caption stage: work items (clips) -> one row each in `captions/<cfg.run>`; a clip with a
    caption in that run is skipped, error rows are retried."""

    name = "caption"
    item_count = "clips"
    statuses = ("captioned", "flagged", "errors", "unreadable")

    def __init__(self, storage: Storage, cfg: CaptionConfig, items: list[dict]) -> None:
        # A run keeps every row (a caption beats an error in read_captions): no row key to dedupe on.
        super().__init__(storage, table_name(cfg.run), CAPTIONS, key=None, resume_key="clip_id")
        self.cfg, self._items = cfg, items
        self._steps = caption_steps(cfg)  # checks the prompts before any work
        self.prompt = self._steps[-1].prompt if cfg.mode == "frames_then_summary" else get_prompt(cfg.prompt, cfg.prompt_text)

    def items(self) -> list[dict]:
        if self.cfg.mode != "frames_then_summary":
            return self._items

        reuse = reusable_frames(self.storage, self.cfg)
        # Every item carries the same keys (Ray Data blocks need one schema); a clip whose summary failed
        # before brings its frame captions along.
        empty = {"frame_times": None, "frame_texts": None, "video_caption": None}
        return [{**i, **empty, **reuse.get(i["clip_id"], {})} for i in self._items]

    def steps(self) -> list[Stage]:
        return self._steps

    def status(self, row: dict) -> str | None:
        if row["error"]:
            return "unreadable" if row["error"].startswith("frames:") else "errors"
        return "flagged" if row["flags"] else "captioned"

    def sink_every(self, todo: int) -> int:
        return self.cfg.sink_every

    def prepare(self, rows: list[dict]) -> list[dict]:
        return [normalize(r) for r in rows]

    def write(self, rows: list[dict]) -> None:
        # the field_/check_ columns of caption.fields and caption.checks follow the fixed ones
        write_part(self.storage, self.table, rows, schema_for(rows))

    def begin(self, todo: list[dict]) -> None:
        cfg, prompt = self.cfg, self.prompt
        write_run_info(self.storage, cfg.run, {"mode": cfg.mode, "engine": cfg.engine, "model": cfg.model,
                                               "prompt": prompt.name, "prompt_hash": prompt.hash,
                                               "prompt_system": prompt.system, "prompt_user": prompt.user,
                                               "started_at": _now(), "config": cfg.model_dump(mode="json")})


def caption_items(storage: Storage, cfg: CaptionConfig, items: list[dict], local: bool = False,
                  progress: bool = True, on_part: Callable[[dict], None] | None = None, ctx: "object" = None) -> dict:
    """Caption work items into `captions/<cfg.run>`, skipping clips already captioned in that run.

    `local` runs the steps in this process (tests, small jobs); otherwise on the current Ray.
    `on_part(counts)` is called after each written part (progress reports; tests use it to kill a
    server mid-run). Returns counts: clips asked, skipped (already done), captioned, flagged, errors
    (engine failures: worth a re-run), unreadable (clips whose frames could not be decoded).
    """
    t0 = time.time()
    counts = execute(CaptionTable(storage, cfg, items), local=local, progress=progress, on_part=on_part,
                     ctx=ctx).counts
    counts["seconds"] = round(time.time() - t0, 3)
    return counts


def caption_steps(cfg: CaptionConfig) -> list[Stage]:
    """The pipeline steps of `cfg.mode` (prompts are checked here, before any work)."""
    if cfg.mode == "frames_then_summary":
        return [SampleKeyFrames(cfg), CaptionFrames(cfg), Summarize(cfg)]
    return [SampleFrames(cfg), Caption(cfg)]


def run(cfg: "object", ctx: "object") -> dict:
    """Pipeline entry (`python -m vidcurate run pipelines.yaml --stage caption`)."""
    ccfg = prepare_model(cfg.caption, cfg.demo.models)
    counts = caption_items(ctx.storage, ccfg, clip_items(ctx.storage, ccfg), progress=cfg.ray.progress, ctx=ctx)
    if ccfg.enhance.enabled:
        counts["enhance"] = enhance_run(ctx.storage, ccfg, progress=cfg.ray.progress, ctx=ctx)
    return counts
