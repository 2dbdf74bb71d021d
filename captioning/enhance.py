"""Caption enhancement: a text LM rewrites every caption of one run into a new run (the source stays).

    captions/<source_run> (+ scores.motion_camera_type) ─► Enhance (text-LM actors) ─► captions/<run>

The rewrite aims at `enhance.target_words` words in `enhance.style`; with `require_camera_motion` and a
detected camera motion type for the clip, the prompt names it and the rewrite must too (checked with
captioning.camera.mentions_camera, the same rule `inspect` reports): one that does not is
generated again, then kept with the flag `no_camera_motion`. Exactly one row per clip of the source
run: a clip without a caption there is an error row (retried on re-run, like an engine error). Resume
per clip as in the caption stage.

`expand_prompts` is the same LM at sampling time (`python -m training sample --enhance-prompt`):
CogVideoX's prompt optimisation, a short prompt expanded into the long style of the training captions.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from captioning import postprocess
from captioning.camera import CAMERA_COLUMN, camera_phrase, camera_types, mentions_camera
from captioning.config import CaptionConfig, EnhanceConfig, demo_models_of, load_caption_config
from captioning.engines import Generation, SamplingParams, TextRequest, make_text_engine
from captioning.models import prepare_text_model
from captioning.prompts import get_text_prompt, render
from captioning.rows import caption_row
from captioning.table import CAPTIONS, frame_lists, normalize, read_captions, table_name, write_run_info
from curation.stage import Stage, StageResources
from curation.table_stage import TableStage, execute
from curation.storage import Storage

CARRIED = ("clip_id", "source_text", "source_error", "camera", "frames", "frame_times", "frame_texts")


def runs_of(cfg: CaptionConfig) -> tuple[str, str]:
    """(source run, output run) of `cfg.enhance`; they must differ (the source is never overwritten)."""
    src = cfg.enhance.source_run or cfg.run
    out = cfg.enhance.run or f"{src}-enhanced"
    if out == src:
        raise ValueError(f"caption.enhance.run: the output run must differ from the source run {src!r}")
    return src, out


def camera_sentence(camera: str | None, require: bool) -> str:
    phrase = camera_phrase(camera) if require else None
    return f" The camera motion detected in the clip is: {phrase}. State it." if phrase else ""


class Enhance(Stage):
    """Text-LM step: one rewritten caption per clip, as a captions-table row."""

    name = "caption-enhance"
    stateful = True

    def __init__(self, cfg: CaptionConfig, source_run: str) -> None:
        super().__init__(StageResources.from_config(cfg.enhance.resources))
        self.e: EnhanceConfig = cfg.enhance
        self.retry_bad = cfg.retry_bad
        self.source_run = source_run
        self.prompt = get_text_prompt(self.e.prompt, self.e.prompt_text, "caption.enhance")
        self.engine = None

    def setup(self) -> None:
        self.engine = make_text_engine(self.e)

    def request(self, r: dict) -> TextRequest:
        p = render(self.prompt, caption=r["source_text"], target_words=self.e.target_words, style=self.e.style,
                   camera=camera_sentence(r.get("camera"), self.e.require_camera_motion))
        return TextRequest(r["clip_id"], p.system, p.user)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        out = [self._row(r, Generation(error=f"enhance: source run {self.source_run!r} has no caption for this "
                                             f"clip ({r['source_error']})"), [], None, 0)
               for r in rows if r.get("source_error")]
        todo = [r for r in rows if not r.get("source_error")]
        reqs = [self.request(r) for r in todo]
        params = SamplingParams(self.e.max_tokens, self.e.temperature, self.e.top_p)
        results, retries = postprocess.generate_judged(
            lambda idx, p: self.engine.generate_text([reqs[i] for i in idx], p), len(reqs), params, self.retry_bad,
            extra=lambda i, text: self._missing_camera(todo[i], text))
        for r, (g, text, flags), n in zip(todo, results, retries):
            if g.error:
                g = Generation(error=f"enhance: {g.error}", latency_s=g.latency_s)
            out.append(self._row(r, g, flags, text, n))
        return out

    def _missing_camera(self, r: dict, text: str) -> list[str]:
        """["no_camera_motion"] when the clip has a detected camera type the rewrite does not name."""
        if not self.e.require_camera_motion or mentions_camera(text, r.get("camera")) is not False:
            return []
        return ["no_camera_motion"]

    def _row(self, r: dict, g: Generation, flags: list[str], text: str | None, retries: int) -> dict:
        row = caption_row(r["clip_id"], g, flags, text, retries, model=self.e.model, engine=self.e.engine,
                          prompt=self.prompt.name, prompt_hash=self.prompt.hash, mode="enhance",
                          frames=r.get("frames"), summary_model=self.e.model, summary_engine=self.e.engine,
                          source_run=self.source_run)
        row["frame_times"], row["frame_texts"] = r.get("frame_times"), r.get("frame_texts")
        return row


def enhance_items(storage: Storage, source_run: str) -> list[dict]:
    """One work item per clip of the source run, with its caption (or why it has none) and camera type."""
    src = read_captions(storage, source_run)
    if src.num_rows == 0:
        raise ValueError(f"caption.enhance.source_run: no captions run {source_run!r} under {storage.root}")
    cams = camera_types(storage)
    items = []
    for r in src.to_pylist():
        times, texts = frame_lists(r["frame_captions"])
        items.append({"clip_id": r["clip_id"], "source_text": r["text"], "source_error": r["error"],
                      "camera": cams.get(r["clip_id"]), "frames": r["frames"], "frame_times": times,
                      "frame_texts": texts})
    return items


class EnhanceTable(TableStage):
    """The enhance step: every clip of `enhance.source_run` -> one row in `captions/<enhance.run>`
    (a clip with a caption in the output run is skipped, error rows are retried)."""

    name = "caption-enhance"
    item_count = "clips"
    statuses = ("captioned", "flagged", "errors")

    def __init__(self, storage: Storage, cfg: CaptionConfig) -> None:
        self.src, self.out_run = runs_of(cfg)
        super().__init__(storage, table_name(self.out_run), CAPTIONS, key=None, resume_key="clip_id")
        self.cfg = cfg
        self.step = Enhance(cfg, self.src)  # checks the template before any work

    def items(self) -> list[dict]:
        return enhance_items(self.storage, self.src)

    def steps(self) -> list[Stage]:
        return [self.step]

    def status(self, row: dict) -> str | None:
        return "errors" if row["error"] else ("flagged" if row["flags"] else "captioned")

    def sink_every(self, todo: int) -> int:
        return self.cfg.sink_every

    def prepare(self, rows: list[dict]) -> list[dict]:
        return [normalize(r) for r in rows]

    def begin(self, todo: list[dict]) -> None:
        e, p = self.cfg.enhance, self.step.prompt
        write_run_info(self.storage, self.out_run, {"mode": "enhance", "source_run": self.src, "engine": e.engine,
                                                    "model": e.model, "prompt": p.name, "prompt_hash": p.hash,
                                                    "prompt_system": p.system, "prompt_user": p.user,
                                                    "camera_column": CAMERA_COLUMN,
                                                    "config": e.model_dump(mode="json")})

    def finish(self, counts: dict, local: bool) -> dict:
        return {"run": self.out_run, "source_run": self.src, **counts}


def enhance_run(storage: Storage, cfg: CaptionConfig, local: bool = False, progress: bool = True,
                on_part: Callable[[dict], None] | None = None, ctx: "object" = None) -> dict:
    """Rewrite the captions of `enhance.source_run` (default caption.run) into `enhance.run`; resumable.

    Returns counts as caption_items does: clips, skipped, captioned, flagged, errors."""
    t0 = time.time()
    counts = execute(EnhanceTable(storage, cfg), local=local, progress=progress, on_part=on_part, ctx=ctx).counts
    counts["seconds"] = round(time.time() - t0, 3)
    return counts


def expand_prompts(prompts: list[str], config: str | None = None, overrides: list[str] | None = None) -> list[str]:
    """Each short prompt expanded by the `caption.enhance` LM of `config` (pipelines.yaml) with its
    `expand_prompt` template. Raises ValueError naming the prompt that got no expansion."""
    e = prepare_text_model(load_caption_config(config, overrides or [], None).enhance, demo_models_of(config))
    tmpl = get_text_prompt(e.expand_prompt, None, "caption.enhance.expand_prompt")
    reqs = []
    for i, p in enumerate(prompts):
        filled = render(tmpl, prompt=p, target_words=e.target_words, style=e.style)
        reqs.append(TextRequest(f"prompt {i}", filled.system, filled.user))
    engine = make_text_engine(e)
    try:
        gens = engine.generate_text(reqs, SamplingParams(e.max_tokens, e.temperature, e.top_p))
    finally:
        engine.close()
    out = []
    for p, g in zip(prompts, gens):
        text = postprocess.clean(g.text or "")
        if g.error or not text:
            raise ValueError(f"prompt {p!r}: no expansion from {e.engine} model {e.model!r}: {g.error or 'empty text'}")
        out.append(text)
    print(f"[enhance] expanded {len(out)} prompt(s) with {e.model}", file=sys.stderr)
    return out
