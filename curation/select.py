"""Select stage: a training set chosen by budget and quotas from the tables (no decoding).

    python -m vidcurate run pipelines.yaml --stage select --set select.max_hours=100

kept clips (curation/kept.py, before selection) x scores x dedup clusters
    ─► score = `select.score` (an expression over score columns, curation/expr.py), floors
    ─► greedy in score order (ties broken by a seeded permutation): a clip is taken when it fits the
       budget (`max_clips`, or `max_hours` of clip duration) and every quota: at most `share` of the
       budget per embedding cluster, per source video, per aspect/duration bucket, per value of a
       scores column (e.g. camera_type)
    ─► <root>/select/part-*.parquet: one row per kept clip (selected, rank, reason when not selected,
       and the columns the quotas saw, so inspect shows distributions before/after without a join)

Greedy in score order is the optimum of "maximise the sum of scores" for a clips budget with one
quota, and a deterministic, explainable rule with several (a clip is left out for the first limit it
breaks). Caps are floor(share x budget): a group that turned a clip away holds its cap exactly
(clips budget), so the shares are met exactly, never exceeded. Without a budget every eligible clip
is the budget and the quotas still cap each group; with no budget, quota or floor at all the stage
writes no table (every kept clip stays in). A re-run recomputes the table whole and reports
what the change added and removed.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curation import expr, tables
from curation.dedup import DedupConfig, partition
from curation.kept import SELECT_TABLE, kept_clips, selected_ids
from curation.storage import Storage

SELECT = pa.schema([
    ("clip_id", pa.string()),        # every kept clip (ok, passed, not a duplicate)
    ("selected", pa.bool_()),        # in the training set
    ("rank", pa.int64()),            # position in score order among eligible clips (0 = best); null if not eligible
    ("reason", pa.string()),         # why not selected: "floor ...", "no score", "quota <key>", "budget"; null if selected
    ("score", pa.float64()),         # the select.score expression
    ("duration_s", pa.float64()),    # frames / fps
    ("video_id", pa.string()),       # source video (quota key "video")
    ("cluster", pa.int32()),         # embedding cluster (quota key "cluster"); null without clusters
    ("camera_type", pa.string()),    # from the motion scorer, null without it
    ("bucket", pa.string()),         # aspect/duration bucket (quota key "bucket"), e.g. "1.78|4-8s"
])
BUILTIN_KEYS = ("cluster", "video", "bucket")  # quota keys besides string columns of the scores table


class SelectConfig(BaseModel):
    """The `select:` section: which kept clips form the training set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    score: str = "aesthetic_mean"  # expression over scores columns to maximise (e.g. "aesthetic_mean + 2 * motion_mean")
    floors: dict[str, float] = {}  # column -> minimum: clips below (or without the column's value) are not eligible
    max_clips: int | None = Field(None, ge=1)  # budget in clips (null: no clip budget)
    max_hours: float | None = Field(None, gt=0)  # budget in hours of clip duration (null: none); not with max_clips
    # key -> largest share of the budget one group may take: cluster (embedding k-means), video (source),
    # bucket (aspect/duration), or a string scores column (camera_type)
    quotas: dict[str, float] = {}
    clusters: int | None = Field(None, ge=1)  # null: the dedup table's clusters; a number: own k-means on clip_embedding
    aspect_buckets: list[float] = [0.5625, 0.75, 1.0, 1.3333, 1.7778]  # width/height classes; a clip takes the nearest
    duration_edges_s: list[float] = [4.0, 8.0, 16.0]  # duration classes' edges (seconds)
    seed: int = 0  # ties in score and own k-means: same tables + seed -> same selection

    @field_validator("score")
    @classmethod
    def _expression(cls, v: str) -> str:
        expr.parse(v)
        return v

    @field_validator("quotas")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, s in v.items() if not 0 < s <= 1]
        if bad:
            raise ValueError(f"quotas.{bad[0]}: a share must be in (0, 1], got {v[bad[0]]}")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectConfig":
        if self.max_clips is not None and self.max_hours is not None:
            raise ValueError("set max_clips or max_hours, not both")
        return self


# ----------------------------------------------------------------------------------------- choose ---

def choose(score: np.ndarray, units: np.ndarray, budget: float | None, groups: dict[str, np.ndarray],
           shares: dict[str, float], seed: int, ineligible: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """The selection over n rows: (selected bool, rank int (-1: not eligible), reason per row).

    `units` is what a row costs of the budget (1 per clip, or seconds); `groups[key]` an int code per
    row (-1: no group, never capped); `ineligible` a reason string per row or None."""
    n = len(score)
    reasons: list[str | None] = list(ineligible) if ineligible is not None else [None] * n
    free = np.array([r is None for r in reasons], bool)
    ok = free & np.isfinite(score)
    for i in np.nonzero(free & ~ok)[0]:
        reasons[i] = "no score"
    tie = np.random.default_rng(seed).permutation(n)  # equal scores: a seeded, not an id, order
    idx = np.lexsort((tie, -np.where(ok, score, -np.inf)))
    order = idx[ok[idx]]
    rank = np.full(n, -1, np.int64)
    rank[order] = np.arange(len(order))
    budget = float(units[order].sum()) if budget is None else float(budget)
    selected = greedy(order.tolist(), units, budget, groups, shares, reasons)
    return selected, rank, reasons


def greedy(order: list[int], units: np.ndarray, budget: float, groups: dict[str, np.ndarray],
           shares: dict[str, float], reasons: list[str | None]) -> np.ndarray:
    """Take rows in `order` while they fit the budget and every group cap; fills `reasons` of the others."""
    n = len(units)
    keys = list(groups)
    caps = [float(np.floor(shares[k] * budget + 1e-9)) + 1e-9 for k in keys]
    codes = [groups[k].tolist() for k in keys]  # Python ints and lists: the loop below is per row
    used = [[0.0] * (int(groups[k].max(initial=-1)) + 1) for k in keys]
    unit = units.tolist()
    selected = np.zeros(n, bool)
    spent, limit = 0.0, budget + 1e-9
    for pos, i in enumerate(order):
        u = unit[i]
        if spent + u > limit:
            reasons[i] = "budget"
            if spent >= budget - 1e-9:  # full: nothing later fits either
                for j in order[pos + 1:]:
                    reasons[j] = "budget"
                break
            continue
        broke = None
        for q in range(len(keys)):
            g = codes[q][i]
            if g >= 0 and used[q][g] + u > caps[q]:
                broke = q
                break
        if broke is not None:
            reasons[i] = "quota " + keys[broke]
            continue
        for q in range(len(keys)):
            g = codes[q][i]
            if g >= 0:
                used[q][g] += u
        spent += u
        selected[i] = True
    return selected


def encode(values: list) -> np.ndarray:
    """Int codes of values (None -> -1), in order of first sorted appearance (deterministic)."""
    labels = sorted({v for v in values if v is not None}, key=str)
    index = {v: i for i, v in enumerate(labels)}
    return np.array([index.get(v, -1) if v is not None else -1 for v in values], np.int64)


def buckets(width: list, height: list, duration_s: list, cfg: SelectConfig) -> list[str | None]:
    """The aspect/duration bucket label of each clip, e.g. "1.78|4-8s" (None without a resolution)."""
    w = np.array([x or 0 for x in width], np.float64)
    h = np.array([x or 0 for x in height], np.float64)
    classes = np.array(cfg.aspect_buckets)
    with np.errstate(all="ignore"):
        aspect = classes[np.argmin(np.abs(np.log(w / h)[:, None] - np.log(classes)[None, :]), axis=1)] \
            if len(w) else np.zeros(0)
    edges = [0.0, *sorted(cfg.duration_edges_s)]
    names = [f"{lo:g}-{hi:g}s" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]:g}s+"]
    k = np.searchsorted(np.array(edges), np.array(duration_s, np.float64), side="right") - 1
    return [f"{a:.2f}|{names[max(0, j)]}" if ww > 0 and hh > 0 else None
            for a, j, ww, hh in zip(aspect.tolist(), k.tolist(), w.tolist(), h.tolist())]


# -------------------------------------------------------------------------------------------- run ---

@dataclass
class Candidates:
    """The kept clips the stage chooses from, as columns (one entry per clip, sorted by clip_id)."""

    ids: list[str]
    video: list[str | None]
    duration_s: np.ndarray  # frames / fps
    bucket: list[str | None]  # aspect/duration label
    cluster: list[int | None]  # dedup's (or own k-means) cluster
    numbers: dict[str, np.ndarray]  # numeric scores columns (NaN: missing)
    strings: dict[str, list]  # string scores columns (camera_type, ...)
    emb: np.ndarray | None = None  # CLIP embeddings, only for own clusters


def candidates(storage: Storage, cfg: SelectConfig) -> Candidates:
    """Kept clips (before selection) with their scores, quota columns and (for own clusters) embeddings."""
    clips = sorted(kept_clips(storage, selected=False), key=lambda c: c["clip_id"])
    if not clips:
        raise ValueError(f"{storage.uri('clips')}: no kept clips to select from (run split, filter and dedup first)")
    ids = [c["clip_id"] for c in clips]
    scores = tables.read_table(storage, "scores")
    by_id = {c: i for i, c in enumerate(scores.column("clip_id").to_pylist())} if scores.num_rows else {}
    take = np.array([by_id.get(c, -1) for c in ids], np.int64)
    numbers: dict[str, np.ndarray] = {}
    strings: dict[str, list] = {}
    for f in scores.schema:
        if f.name == "clip_id" or not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
                                       or pa.types.is_string(f.type)):
            continue
        col = scores.column(f.name).take(pa.array(np.maximum(take, 0))) if scores.num_rows else None
        if pa.types.is_string(f.type):
            vals = col.to_pylist() if col is not None else [None] * len(ids)
            strings[f.name] = [v if j >= 0 else None for v, j in zip(vals, take.tolist())]
        else:
            x = col.to_numpy(zero_copy_only=False).astype(np.float64) if col is not None else np.full(len(ids), np.nan)
            numbers[f.name] = np.where(take >= 0, x, np.nan)
    dur = np.array([(c["frames"] or 0) / (c["fps"] or 1.0) for c in clips])
    dedup = tables.read_table(storage, "dedup", key="clip_id") if storage.list("dedup", ".parquet") else None
    cl = dict(zip(dedup.column("clip_id").to_pylist(), dedup.column("cluster").to_pylist())) if dedup else {}
    cand = Candidates(ids, [c["video_id"] for c in clips], dur,
                      buckets([c["width"] for c in clips], [c["height"] for c in clips], dur.tolist(), cfg),
                      [cl.get(c) for c in ids], numbers, strings)
    if cfg.clusters is not None:
        if "clip_embedding" not in scores.column_names:
            raise ValueError("select.clusters: the scores table has no clip_embedding column (set "
                             "filter.store_embedding: true and re-score, or select.clusters: null for dedup's)")
        e = scores.column("clip_embedding").to_pylist()
        cand.emb = np.asarray([e[j] for j in take], np.float32).reshape(len(ids), -1)
    return cand


def group_codes(c: Candidates, cfg: SelectConfig) -> dict[str, np.ndarray]:
    """An int code per clip for every quota key (config errors name the key)."""
    if c.emb is not None:
        x = c.emb / np.maximum(np.linalg.norm(c.emb, axis=1, keepdims=True), 1e-12)
        label = partition(x, min(cfg.clusters, len(x)), DedupConfig(seed=cfg.seed, kmeans_sample=max(100, len(x))))
        c.cluster = [int(k) for k in label]
    out = {}
    for key in cfg.quotas:
        if key == "cluster":
            if all(k is None for k in c.cluster):
                raise ValueError("select.quotas.cluster: no clusters (run the dedup stage, or set select.clusters)")
            out[key] = encode(c.cluster)
        elif key in ("video", "bucket"):
            out[key] = encode(c.video if key == "video" else c.bucket)
        elif key in c.strings:
            out[key] = encode(c.strings[key])
        else:
            raise ValueError(f"select.quotas.{key}: not a quota key ({', '.join(BUILTIN_KEYS)} or a string scores "
                             f"column: {', '.join(c.strings) or 'none'})")
    return out


def floor_reasons(cols: dict[str, np.ndarray], cfg: SelectConfig, n: int) -> list[str | None]:
    """The first floor each clip breaks (a missing value breaks it), or None."""
    out: list[str | None] = [None] * n
    for key, lo in cfg.floors.items():
        if key not in cols:
            raise ValueError(f"select.floors.{key}: the scores table has no numeric column {key!r} "
                             f"(columns: {', '.join(sorted(cols))})")
        bad = ~(cols[key] >= lo)  # NaN fails
        for i in np.nonzero(bad)[0]:
            out[i] = out[i] or f"floor {key}<{lo:g}"
    return out


def select(storage: Storage, cfg: SelectConfig) -> dict:
    """Choose the training set and replace the select table; returns counts (and what changed)."""
    t0 = time.time()
    if not constrained(cfg):  # nothing to choose: no table, so every kept clip stays kept (curation/kept.py)
        for p in storage.list(SELECT_TABLE, ".parquet"):
            storage.delete(p)
        n = len(kept_clips(storage, selected=False))
        return {"clips": n, "selected": n, "seconds": round(time.time() - t0, 3)}
    c = candidates(storage, cfg)
    try:
        score = expr.evaluate(cfg.score, c.numbers)
    except ValueError as e:
        raise ValueError(f"select.score: {e}") from None
    groups = group_codes(c, cfg)
    n = len(c.ids)
    units, budget = (c.duration_s, cfg.max_hours * 3600) if cfg.max_hours is not None else (np.ones(n), cfg.max_clips)
    chosen, rank, reasons = choose(score, units, budget, groups, cfg.quotas, cfg.seed,
                                   floor_reasons(c.numbers, cfg, n))
    before = selected_ids(storage)
    replace_table(storage, pa.table({
        "clip_id": c.ids, "selected": chosen, "rank": pa.array(np.where(rank >= 0, rank, 0), mask=rank < 0),
        "reason": pa.array(reasons, pa.string()), "score": pa.array(score, mask=~np.isfinite(score)),
        "duration_s": c.duration_s, "video_id": pa.array(c.video, pa.string()),
        "cluster": pa.array(c.cluster, pa.int32()), "camera_type": pa.array(c.strings.get("camera_type", [None] * n),
                                                                             pa.string()),
        "bucket": pa.array(c.bucket, pa.string())}))
    now = {i for i, s in zip(c.ids, chosen.tolist()) if s}
    counts = {"clips": n, "selected": len(now), "hours": round(float(c.duration_s[chosen].sum()) / 3600, 4),
              "seconds": round(time.time() - t0, 3)}
    if before is not None:
        counts.update(added=len(now - before), removed=len(before - now))
    return counts


def constrained(cfg: SelectConfig) -> bool:
    """Whether the config leaves any kept clip out (a budget, a quota or a floor)."""
    return cfg.max_clips is not None or cfg.max_hours is not None or bool(cfg.quotas) or bool(cfg.floors)


def replace_table(storage: Storage, t: pa.Table) -> None:
    """Write the new table (one part per 1M rows), then remove the parts of earlier runs."""
    old = storage.list(SELECT_TABLE, ".parquet")
    for s in range(0, t.num_rows, 1_000_000):
        tables.write_part(storage, SELECT_TABLE, t.slice(s, 1_000_000), SELECT)
    for p in old:
        storage.delete(p)


def read_select(storage: Storage) -> pa.Table:
    """The select table (empty when the stage has not run)."""
    return tables.read_table(storage, SELECT_TABLE, SELECT, key="clip_id")


def run(cfg: "object", ctx: "object") -> dict:  # BaseConfig, RunContext: curation.config imports this module
    """Stage entry point (curation.pipeline)."""
    counts = select(ctx.storage, cfg.select)
    if not constrained(cfg.select):
        print(f"[select] no budget, quotas or floors: all {counts['clips']} kept clips stay in", file=sys.stderr)
        return counts
    change = f"; vs the previous selection +{counts['added']} -{counts['removed']}" if "added" in counts else ""
    print(f"[select] {counts['selected']} of {counts['clips']} kept clips selected ({counts['hours']} h){change}",
          file=sys.stderr)
    return counts
