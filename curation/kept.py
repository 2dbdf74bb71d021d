"""Which clips are kept: the one definition caption, shard, select and export share.

A clip is kept when its clips row is "ok" with a file, its scores row passed (when a scores table
exists), it is not a duplicate of a clip that still passes (when the dedup stage ran), and, once the
select stage has run, it was selected for the training set.
"""
from __future__ import annotations

import pyarrow as pa

from curation import tables
from curation.storage import Storage

SELECT_TABLE = "select"  # <root>/select/part-*.parquet (curation/select.py)


def drop_reason(clip: dict, score: dict | None, has_scores: bool, duplicates: set[str],
                selected: set[str] | None) -> str | None:
    """Why a clip is not kept (None: kept). The reasons are the shard stage's drop counters."""
    if clip.get("status") != "ok" or not clip.get("path"):
        return f"clip {clip.get('status')}"
    if has_scores and score is None:
        return "no scores row"
    if score is not None and (not score.get("passed") or score.get("error")):
        return "filtered out"
    if clip["clip_id"] in duplicates:
        return "duplicate"
    if selected is not None and clip["clip_id"] not in selected:
        return "not selected"
    return None


def duplicates(storage: Storage, passed: set[str]) -> set[str]:
    """Clips the dedup table marks as duplicates (kept: false) of a clip that still passes the filter."""
    from curation.dedup import read_dedup

    t = read_dedup(storage)
    return {c for c, k, d in zip(*(t.column(n).to_pylist() for n in ("clip_id", "kept", "duplicate_of")))
            if k is False and d in passed}


def selected_ids(storage: Storage) -> set[str] | None:
    """Clips the select stage chose; None when it has not run (then every kept clip counts)."""
    if not storage.list(SELECT_TABLE, ".parquet"):
        return None
    t = tables.read_table(storage, SELECT_TABLE, key="clip_id")
    return {c for c, s in zip(t.column("clip_id").to_pylist(), t.column("selected").to_pylist()) if s}


def kept_clips(storage: Storage, selected: bool = True) -> list[dict]:
    """Clips rows (sorted by clip_id) that are kept; `selected=False` ignores the select table (its input)."""
    clips = tables.read_table(storage, "clips", tables.CLIPS).to_pylist()
    scores_t = tables.read_table(storage, "scores")
    cols = [c for c in ("clip_id", "passed", "error") if c in scores_t.column_names]
    scores = {r["clip_id"]: r for r in scores_t.select(cols).to_pylist()} if scores_t.num_rows else {}
    dups = duplicates(storage, {c for c, r in scores.items() if r.get("passed")})
    chosen = selected_ids(storage) if selected else None
    rows = [c for c in clips if drop_reason(c, scores.get(c["clip_id"]), bool(scores), dups, chosen) is None]
    return sorted(rows, key=lambda r: r["clip_id"])


def kept_table(storage: Storage, selected: bool = True) -> pa.Table:
    """kept_clips as a table in the clips schema."""
    return pa.Table.from_pylist(kept_clips(storage, selected), schema=tables.CLIPS)
