"""Filter stage: decode each kept clip once, score it, keep or drop it, write every score.

clips table (status "ok") -> [decode step: CPU tasks]  -> [model step: CLIP actors] -> scores table
                              sample frames at filter.     embed frames once (shared),
                              sample_fps, every size the   model scorers (aesthetic,
                              scorers need; CPU scorers    zero-shot, probes), then the
                              (motion) run here            keep/drop decision

The two steps are separate Ray Data operators, so decoding of the next clips overlaps model scoring.
One row per clip in <root>/scores/part-*.parquet, kept or dropped alike: every score as a flat column,
`passed`, `reasons` (the rules a clip broke, e.g. "motion_mean<0.01"), the clip's CLIP embedding, and
errors as rows. The Arrow schema is built from the configured scorers; the rules are stored in its
metadata (`filter.rules`) so `inspect` can mark thresholds without the config file.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import tables
from curation.filters.base import ClipFrames, FrameSpec, Rule, ScorerSet, spread
from curation.filters.clip_model import ClipEncoder, image_size
from curation.filters.config import FilterConfig
from curation.filters.make_tiny import make_tiny
from curation.runner import output_to_log
from curation.stage import Stage, StageResources
from curation.storage import Storage
from curation.table_stage import TableStage

# Columns of the scores table before and after the scorers' own columns.
BASE_FIELDS: list[tuple[str, pa.DataType]] = [
    ("clip_id", pa.string()),        # key, as in the clips table
    ("video_id", pa.string()),
    ("source", pa.string()),         # the raw video the clip came from
    ("path", pa.string()),           # clip file relative to the root
    ("start_s", pa.float64()),       # position in the source video
    ("end_s", pa.float64()),
    ("frames_sampled", pa.int32()),  # sampled frames every scorer saw
]
TAIL_FIELDS: list[tuple[str, pa.DataType]] = [
    ("passed", pa.bool_()),               # kept by every rule (false for errors)
    ("reasons", pa.list_(pa.string())),   # rules broken, e.g. "motion_mean<0.01"; ["error"] for errors
    ("clip_embedding", pa.list_(pa.float32())),  # mean of the frames' CLIP embeddings, L2-normalised
    ("error", pa.string()),               # null unless decoding or scoring failed
    ("decode_s", pa.float32()),           # seconds spent decoding (+ CPU scorers)
    ("score_s", pa.float32()),            # seconds spent in the model step (per clip share of its batch)
]
_PAYLOAD = "_frames"  # pickled ClipFrames handed from the decode step to the model step


def scores_schema(scorers: ScorerSet, extra_meta: dict[str, str] | None = None) -> pa.Schema:
    """Explicit schema: base columns, one column per scorer metric, decision and embedding."""
    fields = BASE_FIELDS + list(scorers.columns().items()) + TAIL_FIELDS
    meta = {"filter.rules": json.dumps([r.__dict__ for r in scorers.rules()]), **(extra_meta or {})}
    return pa.schema(fields, metadata=meta)


def rules_of(schema: pa.Schema) -> list[Rule]:
    """The keep-rules a scores part was written with (from its schema metadata)."""
    raw = (schema.metadata or {}).get(b"filter.rules")
    return [Rule(**r) for r in json.loads(raw)] if raw else []


def decide(row: dict, rules: list[Rule]) -> dict:
    """Set `passed` and `reasons` from the rules (errors are never passed)."""
    if row.get("error"):
        row["passed"], row["reasons"] = False, ["error"]
        return row
    reasons = [r for r in (rule.reason(row.get(rule.column)) for rule in rules) if r]
    row["passed"], row["reasons"] = not reasons, reasons
    return row


def _base(row: dict) -> dict:
    return {k: row.get(k) for k, _ in BASE_FIELDS}


class DecodeStage(Stage):
    """CPU step: decode one clip once, run the CPU scorers, hand the model step the frames it needs."""

    name = "filter.decode"
    resources_key = "filter.decode.resources"

    def __init__(self, root: str, cfg: FilterConfig, scorers: ScorerSet, model_specs: list[FrameSpec],
                 clip_spec: FrameSpec | None = None, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.root, self.cfg, self.scorers, self.model_specs = root, cfg, scorers, model_specs
        self.clip_spec = clip_spec
        cpu = scorers.by_step("cpu")
        self.specs = [s for sc in scorers.scorers for s in sc.frame_specs()] + model_specs
        self.mv_cells = next((sc.mv_cells() for sc in cpu if sc.mv_cells()), None)
        self.ship = ship_frames(scorers.by_step("model"), clip_spec, cfg.clip.max_frames)

    def setup(self) -> None:
        self.storage = Storage(self.root)
        for sc in self.scorers.by_step("cpu"):
            sc.setup()

    def process_row(self, row: dict) -> list[dict]:
        from curation.filters.decode import decode_clip

        from curation.video import VideoError

        t0 = time.perf_counter()
        try:
            clip = decode_clip(self.storage.uri(row["path"]), self.specs, self.cfg.sample_fps, self.cfg.max_frames,
                               self.mv_cells)
        except VideoError as e:  # a clip file rotten after split wrote it: split cuts it again next run
            tables.quarantine(self.storage, row["path"], str(e))
            raise VideoError(f"{e} (quarantined; the next split run cuts it again)") from None
        out = {**_base(row), "frames_sampled": len(clip.times), "error": None}
        # Border finders first: the other scorers then see the picture inside the bars (clip.content).
        for sc in sorted(self.scorers.by_step("cpu"), key=lambda sc: not sc.crops):
            vals = sc.score(clip)
            if sc.crops:
                clip.content = sc.content_box(vals)
            for m, v in vals.items():
                out[f"{sc.name}_{m}"] = v
        frames = {k: spread(v, self.ship[k]) for k, v in clip.frames.items() if k in self.ship}
        slim = ClipFrames(clip.times, frames, clip.width, clip.height, clip.fps, content=clip.content)
        out[_PAYLOAD] = pickle.dumps(slim, protocol=5)
        out["decode_s"] = time.perf_counter() - t0
        return [out]

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [{**_base(row), "error": message, _PAYLOAD: None}]


class ScoreStage(Stage):
    """Model step (a Ray actor when models are configured): CLIP once per batch, model scorers, decision."""

    name = "filter.score"
    resources_key = "filter.model.resources"

    def __init__(self, cfg: FilterConfig, scorers: ScorerSet, clip_spec: FrameSpec | None,
                 resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.cfg, self.scorers, self.clip_spec = cfg, scorers, clip_spec
        self.model_scorers = scorers.by_step("model")
        self.rules = scorers.rules()
        self.stateful = bool(self.model_scorers or clip_spec)  # actors only when there is a model to hold

    def setup(self) -> None:
        self.encoder = None
        if self.clip_spec is not None:
            import torch

            torch.set_num_threads(max(1, int(self.resources.num_cpus)))

            self.encoder = ClipEncoder(self.cfg.clip, use_gpu=self.resources.num_gpus > 0,
                                       frame_batch=self.cfg.clip.frame_batch)
        for sc in self.model_scorers:
            sc.setup(self.encoder)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        good = [r for r in rows if not r.get("error") and r.get(_PAYLOAD) is not None]
        if good:
            try:
                self._score(good)
            except Exception as e:  # a failing batch becomes error rows, the run goes on
                for r in good:
                    r["error"] = f"scoring failed: {type(e).__name__}: {e}"
        out = []
        for r in rows:
            r.pop(_PAYLOAD, None)
            out.append(decide(r, self.rules))
        return out

    def _score(self, rows: list[dict]) -> None:
        t0 = time.perf_counter()
        clips: list[ClipFrames] = [pickle.loads(r[_PAYLOAD]) for r in rows]
        embs: list[np.ndarray | None] = [None] * len(clips)
        if self.encoder is not None:
            frames = [spread(c.frames[self.clip_spec.key], self.cfg.clip.max_frames) for c in clips]
            flat = self.encoder.embed_frames(np.concatenate(frames))
            embs = np.split(flat, np.cumsum([len(f) for f in frames])[:-1])
        for sc in self.model_scorers:
            for r, vals in zip(rows, sc.score_batch(clips, embs)):
                for m, v in vals.items():
                    r[f"{sc.name}_{m}"] = v
        dt = (time.perf_counter() - t0) / len(rows)
        for r, e in zip(rows, embs):
            r["score_s"] = dt
            if e is not None and self.cfg.store_embedding:
                m = e.mean(axis=0)
                r["clip_embedding"] = (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32).tolist()


def ship_frames(model_scorers: list, clip_spec: FrameSpec | None, clip_frames: int | None) -> dict[str, int | None]:
    """Frame size key -> how many sampled frames travel to the model step (the most any user there reads)."""
    want: dict[str, list[int | None]] = {}
    if clip_spec is not None:
        want[clip_spec.key] = [clip_frames]
    for sc in model_scorers:
        for s in sc.frame_specs():
            want.setdefault(s.key, []).append(sc.max_frames())
    return {k: None if None in v else max(v) for k, v in want.items()}


def build_stages(root: str, cfg: FilterConfig) -> tuple[DecodeStage, ScoreStage, ScorerSet]:
    """The two steps of the filter stage for a config (also used by the benchmark and tests)."""
    scorers = ScorerSet.from_config(cfg.enabled_scorers())
    clip_spec = None
    if scorers.needs_embedding():
        clip_spec = FrameSpec("rgb24", image_size(cfg.clip), square_crop=True)
    model_specs = ([clip_spec] if clip_spec else []) + [s for sc in scorers.by_step("model") for s in sc.frame_specs()]
    dec = DecodeStage(root, cfg, scorers, model_specs, clip_spec, StageResources.from_config(cfg.decode.resources))
    sco = ScoreStage(cfg, scorers, clip_spec, StageResources.from_config(cfg.model.resources))
    return dec, sco, scorers


def ensure_demo_models(cfg: FilterConfig, demo_models: str | None) -> None:
    """Build tiny random models in `demo_models` (demo.models) when a configured model under it is missing."""
    if not demo_models:
        return
    base = os.path.abspath(demo_models)
    wanted = [cfg.clip.model] + [getattr(s, "weights") for s in cfg.enabled_scorers().values() if hasattr(s, "weights")]
    missing = [p for p in wanted if os.path.abspath(p).startswith(base + os.sep) and not os.path.exists(p)]
    if missing:
        print(f"[filter] WARNING: {', '.join(missing)} missing: building tiny RANDOM demo models in {base} "
              "(scores are meaningless; set demo.models: null and real weights for real runs)",
              file=sys.stderr, flush=True)

        with output_to_log():  # library progress bars of the model saves: the run log, not the console
            make_tiny(base)


class FilterTable(TableStage):
    """The filter stage: every ok clip not yet scored -> one scores-table row (errors are retried)."""

    name = "filter"
    item_count, done_count = "clips", "scored"
    statuses = ("kept", "dropped", "errors")

    def __init__(self, storage: "object", fcfg: FilterConfig | None, rescore: bool = False) -> None:
        # `fcfg` None: only the work items (todo_clips); the steps and schema need the scorers.
        self.fcfg = fcfg
        self.built = build_stages(storage.root, fcfg) if fcfg is not None else None
        schema = scores_schema(self.built[2], {"filter.config": fcfg.model_dump_json()}) if self.built else None
        super().__init__(storage, "scores", schema, key="clip_id", resume=not rescore)

    @classmethod
    def from_run(cls, cfg: "object", ctx: "object") -> "FilterTable":
        ensure_demo_models(cfg.filter, cfg.demo.models)
        return cls(ctx.storage, cfg.filter, cfg.filter.rescore)

    def items(self) -> list[dict]:
        clips = tables.read_table(self.storage, "clips", tables.CLIPS).to_pylist()
        return [{k: r[k] for k, _ in BASE_FIELDS if k in r} for r in clips if r["status"] == "ok"]

    def steps(self) -> list[Stage]:
        return list(self.built[:2])

    def status(self, row: dict) -> str | None:
        return "errors" if row.get("error") else ("kept" if row["passed"] else "dropped")

    def error_text(self, row: dict) -> str:
        return f"{row['clip_id']} ({row.get('path')}): {row['error']}"


def todo_clips(storage: "object", rescore: bool) -> tuple[list[dict], int]:
    """Clips with status ok not yet scored (errors are retried); returns (todo, skipped)."""
    stage = FilterTable(storage, None, rescore)
    items = stage.items()
    todo, _ = stage.todo(items)
    return todo, len(items) - len(todo)


run = FilterTable.run  # Section entry (curation.config)


# ------------------------------------------------------------------------------------------ rules only
def decide_table(t: pa.Table, rules: list[Rule]) -> tuple[pa.Array, pa.Array]:
    """`passed` and `reasons` of every row of a scores table under `rules`: `decide`, vectorised.

    Same semantics row for row: an error drops with ["error"]; a missing or NaN score breaks no rule;
    per rule the min check comes first; values are compared in float64 (as Python compares the
    float32 scores that `decide` sees), never in the column's own float32.
    """
    n = t.num_rows
    err = t.column("error").cast(pa.string()) if "error" in t.column_names else pa.nulls(n, pa.string())
    is_err = pc.fill_null(pc.greater(pc.utf8_length(err), 0), False).to_numpy(zero_copy_only=False)
    labels, masks = [], []
    for rule in rules:
        v = t.column(rule.column).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        low = v < rule.min if rule.min is not None else np.zeros(n, bool)
        if rule.min is not None:
            labels.append(rule.reason(-np.inf))  # the rule's own reason text for "below min"
            masks.append(low & ~is_err)
        if rule.max is not None:
            labels.append(rule.reason(np.inf))
            masks.append(~low & (v > rule.max) & ~is_err)
    m = np.stack(masks + [is_err], axis=1)  # the last column: "error"
    rows, cols = np.nonzero(m)  # row-major: each row's reasons in rule order
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    values = pa.array(np.asarray(labels + ["error"], dtype=object)[cols].tolist(), pa.string())
    reasons = pa.ListArray.from_arrays(pa.array(offsets), values)
    return pa.array(offsets[1:] == offsets[:-1]), reasons


def _outcome(storage: "object") -> dict[str, tuple[bool, bool]]:
    """clip_id -> (passed, error) of the scores table as readers see it (last part wins)."""
    parts = [tables.read_part(storage, p, ["clip_id", "passed", "error"]) for p in storage.list("scores", ".parquet")]
    t = tables.dedupe_last(pa.concat_tables([t for t in parts if t is not None], promote_options="permissive"),
                           "clip_id")
    return {c: (bool(p), bool(e)) for c, p, e in zip(t.column("clip_id").to_pylist(), t.column("passed").to_pylist(),
                                                     t.column("error").to_pylist())}


def rules_only(fcfg: FilterConfig, storage: "object") -> dict:
    """Re-apply the configured thresholds to the stored scores: nothing is decoded or scored.

    Every scores part is rewritten in place (same name, so "last part wins" keeps its order) with
    `passed`, `reasons` and the `filter.rules` metadata recomputed; every other column is kept as
    it is. All parts are checked before the first is rewritten, so a bad rule changes nothing.
    """
    import io

    import pyarrow.parquet as pq

    scorers = ScorerSet.from_config(fcfg.enabled_scorers())
    rules = scorers.rules()
    parts = storage.list("scores", ".parquet")
    if not parts:
        raise ValueError(f"{storage.uri('scores')}: no scores table to re-apply thresholds to (run the filter "
                         "stage without --rules-only first)")
    owner = {r.column: sc.name for sc in scorers.scorers for r in sc.rules()}
    parts = [p for p in parts if tables.read_part(storage, p, ["clip_id"]) is not None]  # rotten: quarantined
    for part in parts:
        names = pq.read_schema(storage.fs.open_input_file(storage.path(part))).names
        for r in rules:
            if r.column not in names:
                raise ValueError(f"filter.scorers.{owner[r.column]}: column {r.column} is not in {part} (a scorer "
                                 "added after scoring: run the filter stage with filter.rescore: true, without "
                                 "--rules-only)")
    before = _outcome(storage)
    rules_json = json.dumps([r.__dict__ for r in rules]).encode()
    for part in parts:
        t = tables.read_part(storage, part)
        if t is None:
            continue
        passed, reasons = decide_table(t, rules)
        for name, col in (("passed", passed), ("reasons", reasons)):
            i = t.schema.get_field_index(name)
            t = t.set_column(i, t.schema.field(i), col)
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), b"filter.rules": rules_json})
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd", write_page_checksum=True)
        storage.write_bytes(part, buf.getvalue())  # atomic: temporary name, then rename over the old part
    after = _outcome(storage)
    kept = sum(p for p, _ in after.values())
    errors = sum(e for _, e in after.values())
    return {"parts": len(parts), "clips": len(after), "kept": kept, "dropped": len(after) - kept - errors,
            "errors": errors, "changed": sum(before.get(c, (None,))[0] != p for c, (p, _) in after.items())}


def run_rules_only(cfg: "object", ctx: "object") -> dict:
    """`run --stage filter --rules-only`: rules_only() in this process (no Ray: nothing to decode),
    recorded in the run manifest like any stage."""
    t0 = time.time()
    entry = ctx.stages.setdefault("filter", {"counts": {}, "errors": []})
    entry["rules_only"] = True
    print("[filter] --rules-only: re-applying thresholds to the stored scores", file=sys.stderr, flush=True)
    try:
        entry["counts"] = rules_only(cfg.filter, ctx.storage)
    except Exception as e:
        entry["errors"].append(f"{type(e).__name__}: {e}")
        raise
    finally:
        entry["seconds"] = round(time.time() - t0, 3)
        path = ctx.write_manifest()
    print(f"[filter] done in {entry['seconds']:.1f}s: {entry['counts']} (manifest {path})", file=sys.stderr, flush=True)
    return entry["counts"]
