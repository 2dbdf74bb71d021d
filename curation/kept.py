"""Which clips are kept: the one definition every reader uses (caption, shard writer, training side).

A clip is kept when, in this order (the first check it fails is its drop reason):

    its clips row is ok and has a file     else "clip <status>"
    it has a scores row (when a scores     else "no scores row"
      table exists)
    that row passed the filter             else "filtered out"
    it is not a duplicate (dedup table)    else "duplicate"
    selected by the select stage (when     else "not selected"
      its table exists: curation/select.py)

Without a scores table (the filter has not run) every ok clip counts as passed; readers that need
scores (shard.writer.require_scores) refuse that case themselves. A clip the dedup table marks as a
duplicate counts as one only while the clip it duplicates is still kept by the filter (re-applied
thresholds may drop that one; the duplicate is then kept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from curation import tables
from curation.storage import Storage


@dataclass
class KeptView:
    """The clips, scores and duplicates of a root, and the verdict on every clip."""

    clips: list[dict]  # every row of the clips table (last row per clip_id)
    scores: dict[str, dict] = field(default_factory=dict)  # clip_id -> scores row ({} without a scores table)
    duplicates: set[str] = field(default_factory=set)  # clip_ids dedup dropped (their original still passes)
    selected: set[str] | None = None  # clip_ids the select stage chose; None: it has not run (or is ignored)

    def reason(self, clip: dict) -> str | None:
        """Why `clip` (a clips row) is not kept: the first check of CHECKS it fails; None when kept."""
        for why, ok in CHECKS:
            if not ok(self, clip):
                return why if why != "clip" else f"clip {clip['status']}"
        return None

    def kept(self) -> list[dict]:
        """The clips rows of the kept clips, in clips-table order."""
        return [c for c in self.clips if self.reason(c) is None]

    def passed(self) -> set[str]:
        """Clips whose scores row passed the filter."""
        return {c for c, r in self.scores.items() if r.get("passed")}


def _clip_ok(v: KeptView, c: dict) -> bool:
    return c.get("status", "ok") == "ok" and bool(c.get("path"))


def _has_scores(v: KeptView, c: dict) -> bool:
    return not v.scores or c["clip_id"] in v.scores


def _passed(v: KeptView, c: dict) -> bool:
    s = v.scores.get(c["clip_id"])
    return s is None or bool(s.get("passed"))


def _not_duplicate(v: KeptView, c: dict) -> bool:
    return c["clip_id"] not in v.duplicates


def _selected(v: KeptView, c: dict) -> bool:
    return v.selected is None or c["clip_id"] in v.selected


# (drop reason, check) in order.
CHECKS: list[tuple[str, Callable[[KeptView, dict], bool]]] = [
    ("clip", _clip_ok), ("no scores row", _has_scores), ("filtered out", _passed), ("duplicate", _not_duplicate),
    ("not selected", _selected),
]

SELECT_TABLE = "select"  # <root>/select/part-*.parquet (curation/select.py writes it)


def selected_ids(storage: Storage) -> set[str] | None:
    """Clips the select stage chose; None when it has not run (then every kept clip counts)."""
    if not storage.list(SELECT_TABLE, ".parquet"):
        return None
    t = tables.read_table(storage, SELECT_TABLE, key="clip_id")
    return {c for c, s in zip(t.column("clip_id").to_pylist(), t.column("selected").to_pylist()) if s}


def kept_view(storage: Storage, score_columns: list[str] | None = None, selected: bool = True) -> KeptView:
    """The clips, scores (all columns, or `score_columns` besides clip_id and passed), duplicates and
    (unless `selected` is False: the select stage's own input) the selection of `storage`'s root."""
    clips = tables.read_table(storage, "clips", tables.CLIPS).to_pylist()
    if score_columns is None:
        st = tables.read_table(storage, "scores")
    else:
        st = tables.read_columns(storage, "scores", list(dict.fromkeys(["clip_id", "passed", *score_columns])),
                                 key="clip_id")
    scores = {r["clip_id"]: r for r in st.to_pylist()}
    view = KeptView(clips, scores)
    view.duplicates = duplicates(storage, view.passed())
    view.selected = selected_ids(storage) if selected else None
    return view


def duplicates(storage: Storage, passed: set[str]) -> set[str]:
    """Clips the dedup table marks as duplicates (kept: false) of a clip that still passes the filter."""
    t = tables.read_table(storage, "dedup", DEDUP_COLUMNS, key="clip_id")
    if t.num_rows == 0:
        return set()
    return {c for c, k, d in zip(*(t.column(n).to_pylist() for n in ("clip_id", "kept", "duplicate_of")))
            if k is False and d in passed}


# The dedup table's columns this module reads (curation/dedup.py writes the table).
DEDUP_COLUMNS = pa.schema([("clip_id", pa.string()), ("duplicate_of", pa.string()), ("kept", pa.bool_())])


def kept_clips(storage: Storage, selected: bool = True) -> list[dict]:
    """The clips rows of the kept clips (see the module doc); `selected=False` ignores the select table."""
    return kept_view(storage, score_columns=[], selected=selected).kept()
