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
from datetime import datetime, timezone

from captioning.config import CaptionConfig
from captioning.engines import Generation, SamplingParams
from captioning.frames import probe_duration, sample_frames, sample_frames_from_bytes
from captioning.prompts import get_prompt
from captioning.structured import structured_columns
from captioning.windows import caption_windowed, clip_requests, sample_windows
from captioning.table import CAPTIONS, done_ids, normalize, schema_for, table_name, write_run_info
from curation.stage import Stage, StageResources, run_local
from curation.storage import Storage
from curation.tables import read_table, write_part

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SampleFrames(Stage):
    """CPU step: decode a clip at `sample_fps` and JPEG-encode its frames (stateless Ray tasks)."""

    name = "caption-frames"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(StageResources.from_config(cfg.frames_resources))
        self.cfg = cfg

    def process_row(self, row: dict) -> list[dict]:
        want_video = self.cfg.engine == "openai" and self.cfg.openai.video_as == "video_url"
        duration = plain_value(row.get("duration_s"))
        if plain_value(row.get("tar")):  # a WebDataset sample: read its mp4 member in place
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
        from captioning.engines import make_engine

        self.engine = make_engine(self.cfg)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        out = [self._row(r["clip_id"], Generation(error=r["error"]), 0, []) for r in rows if plain_value(r.get("error"))]
        todo = [r for r in rows if not plain_value(r.get("error"))]
        if not todo:
            return out
        todo = [{k: plain_value(v) for k, v in r.items()} for r in todo]
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


def caption_row(clip_id: str, g: Generation, flags: list[str], text: str | None, retries: int,
                **fields: object) -> dict:
    """A captions-table row from the final generation of a clip (text and raw text only when it succeeded)."""
    row = {f: None for f in CAPTIONS.names}
    row.update({"clip_id": clip_id, "text": None if g.error else text, "raw_text": None if g.error else g.text,
                "tokens_in": g.tokens_in, "tokens_out": g.tokens_out, "text_tokens": g.tokens_out,
                "latency_s": g.latency_s,
                "finish_reason": g.finish_reason, "flags": flags, "retries": retries, "error": g.error,
                "created_at": _now()})
    row.update(fields)
    return row


def plain_value(v: object) -> object:
    """A plain Python value: rows that crossed Ray Data's pandas batches carry NaN for nulls and numpy
    arrays (and scalars) for lists (and numbers)."""
    if hasattr(v, "tolist") and not isinstance(v, (bytes, str)):
        v = v.tolist()
    return None if v is None or (isinstance(v, float) and v != v) else v


def read_range(uri: str, offset: int, size: int | None) -> bytes:
    """Bytes of a local file or object-store URI (a tar member's data, or a whole clip)."""
    if "://" in uri and not uri.startswith("file://"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as f:
            f.seek(offset)
            return f.read(size) if size is not None else f.read()
    with open(uri.removeprefix("file://"), "rb") as f:
        f.seek(offset)
        return f.read(size) if size is not None else f.read()


def clip_items(storage: Storage, cfg: CaptionConfig) -> list[dict]:
    """Work items from the clips table: ok clips, and with `only_kept` those whose scores row passed."""
    clips = read_table(storage, "clips")
    if clips.num_rows == 0:
        raise ValueError(f"{storage.root}: no clips table (run the split stage first)")
    rows = [r for r in clips.to_pylist() if r.get("status", "ok") == "ok" and r.get("path")]
    if cfg.only_kept:
        scores = read_table(storage, "scores")
        if scores.num_rows:
            kept = {r["clip_id"] for r in scores.select(["clip_id", "passed"]).to_pylist() if r["passed"]}
            rows = [r for r in rows if r["clip_id"] in kept]
        else:
            print("[caption] no scores table: captioning every ok clip (run the filter stage to caption only "
                  "kept clips)", file=sys.stderr)
    return [{"clip_id": r["clip_id"], "path": storage.uri(r["path"]),
             "duration_s": (r["frames"] / r["fps"]) if r.get("fps") and r.get("frames") else None} for r in rows]


def caption_items(storage: Storage, cfg: CaptionConfig, items: list[dict], local: bool = False,
                  progress: bool = True, on_part: Callable[[dict], None] | None = None) -> dict:
    """Caption work items into `captions/<cfg.run>`, skipping clips already captioned in that run.

    `local` runs the two steps in this process (tests, small jobs); otherwise on the current Ray.
    `on_part(counts)` is called after each written part (progress reports; tests use it to kill a
    server mid-run). Returns counts: clips asked, skipped (already done), captioned, flagged, errors
    (engine failures: worth a re-run), unreadable (clips whose frames could not be decoded).
    """
    from curation.runner import run_pipeline

    done = done_ids(storage, cfg.run)
    todo = [i for i in items if i["clip_id"] not in done]
    stages = caption_steps(cfg)
    prompt = get_prompt(cfg.prompt, cfg.prompt_text)
    if cfg.mode == "frames_then_summary":
        from captioning.summary import reusable_frames

        reuse = reusable_frames(storage, cfg)
        # Every item carries the same keys (Ray Data blocks need one schema); a clip whose summary failed
        # before brings its frame captions along.
        empty = {"frame_times": None, "frame_texts": None, "video_caption": None}
        todo = [{**i, **empty, **reuse.get(i["clip_id"], {})} for i in todo]
        prompt = stages[-1].prompt
    write_run_info(storage, cfg.run, {"mode": cfg.mode, "engine": cfg.engine, "model": cfg.model,
                                      "prompt": prompt.name, "prompt_hash": prompt.hash,
                                      "prompt_system": prompt.system, "prompt_user": prompt.user,
                                      "started_at": _now(), "config": cfg.model_dump(mode="json")})
    counts = {"clips": len(items), "skipped": len(items) - len(todo), "captioned": 0, "flagged": 0, "errors": 0,
              "unreadable": 0}
    table = table_name(cfg.run)

    def sink(rows: list[dict]) -> None:
        rows = [normalize(r) for r in rows]
        write_part(storage, table, rows, schema=schema_for(rows))
        for r in rows:
            if r["error"]:
                key = "unreadable" if r["error"].startswith("frames:") else "errors"
            else:
                key = "flagged" if r["flags"] else "captioned"
            counts[key] += 1
        if on_part is not None:
            on_part(counts)

    t0 = time.time()
    if local:
        step = cfg.sink_every
        try:
            for i in range(0, len(todo), step):
                sink(run_local(stages, todo[i:i + step]))
        finally:
            for st in stages:
                if getattr(st, "engine", None) is not None:
                    st.engine.close()
    else:
        run_pipeline(todo, stages, sink, sink_every=cfg.sink_every, progress=progress)
    counts["seconds"] = round(time.time() - t0, 3)
    return counts


def caption_steps(cfg: CaptionConfig) -> list[Stage]:
    """The pipeline steps of `cfg.mode` (prompts are checked here, before any work)."""
    if cfg.mode == "frames_then_summary":
        from captioning.summary import CaptionFrames, SampleKeyFrames, Summarize

        return [SampleKeyFrames(cfg), CaptionFrames(cfg), Summarize(cfg)]
    return [SampleFrames(cfg), Caption(cfg)]


def prepare_text_model(t: "object") -> "object":
    """prepare_model for a TextLMConfig (summary, enhance): absolute folder; a `packaged:` model's converted
    folder; the tiny text LM with demo_model."""
    if t.engine == "openai":
        return t
    if t.model.startswith("packaged:"):  # a model an installed package ships (SmolLM2): its converted folder
        from captioning.smollm2 import resolve_packaged

        return t.model_copy(update={"model": resolve_packaged(t.model)})
    if t.demo_model and not os.path.exists(os.path.join(t.model, "config.json")):
        from captioning.tiny_lm import build_tiny_text_lm

        print(f"[caption] building the tiny random demo text LM at {t.model}", file=sys.stderr)
        build_tiny_text_lm(t.model)
    if os.path.isdir(t.model):
        return t.model_copy(update={"model": os.path.abspath(t.model)})
    return t


def prepare_model(cfg: CaptionConfig) -> CaptionConfig:
    """A local model folder as an absolute path (Ray workers do not share the driver's working dir);
    with `demo_model`, the tiny random Qwen2.5-VL is built there first when the folder is missing."""
    if cfg.mode == "frames_then_summary":
        cfg = cfg.model_copy(update={"summary": prepare_text_model(cfg.summary)})
    if cfg.enhance.enabled:
        cfg = cfg.model_copy(update={"enhance": prepare_text_model(cfg.enhance)})
    if cfg.engine == "openai":
        return cfg
    if cfg.demo_model and not os.path.exists(os.path.join(cfg.model, "config.json")):
        from captioning.tiny_vlm import build_tiny_qwen25_vl

        print(f"[caption] building the tiny random demo model at {cfg.model}", file=sys.stderr)
        build_tiny_qwen25_vl(cfg.model)
    if os.path.isdir(cfg.model):
        return cfg.model_copy(update={"model": os.path.abspath(cfg.model)})
    return cfg


def run(cfg: "object", ctx: "object") -> dict:
    """Pipeline entry (`python -m curation run pipelines.yaml --stage caption`)."""
    ccfg = prepare_model(cfg.caption)
    counts = caption_items(ctx.storage, ccfg, clip_items(ctx.storage, ccfg), progress=cfg.ray.progress)
    if ccfg.enhance.enabled:
        from captioning.enhance import enhance_run

        counts["enhance"] = enhance_run(ctx.storage, ccfg, progress=cfg.ray.progress)
    return counts
