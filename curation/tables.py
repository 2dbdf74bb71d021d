"""Table schemas and Parquet I/O under the dataset root.

Every stage writes one table as `part-*.parquet` files under `<root>/<table>/`. Parts are written
atomically as work finishes, so a killed run keeps everything already written; resume reads the ids
already present and skips them. Readers deduplicate on the table's key (last part wins), so a row
that was re-done after a crash between part write and bookkeeping is never counted twice.
"""
from __future__ import annotations

import io
import time
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from curation.storage import Storage

VIDEOS = pa.schema([
    ("video_id", pa.string()),        # sha1 of the source URI, first 16 hex chars
    ("source", pa.string()),          # input path or URI as given
    ("bytes", pa.int64()),
    ("duration_s", pa.float64()),
    ("frames", pa.int64()),           # decoded frame count (counted when the container does not say)
    ("fps", pa.float64()),            # average frame rate
    ("vfr", pa.bool_()),              # frame durations vary by more than 1%
    ("width", pa.int32()),            # coded width
    ("height", pa.int32()),
    ("display_width", pa.int32()),    # after sample aspect ratio and rotation
    ("display_height", pa.int32()),
    ("sar", pa.float64()),            # sample (pixel) aspect ratio
    ("rotation", pa.int32()),         # degrees, from the display matrix
    ("codec", pa.string()),
    ("pix_fmt", pa.string()),
    ("has_audio", pa.bool_()),
    ("error", pa.string()),           # null when the file probed cleanly
])

CLIPS = pa.schema([
    ("clip_id", pa.string()),         # <video_id>_<start frame>_<end frame>
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("start_frame", pa.int64()),      # inclusive, in decoded-frame index of the source
    ("end_frame", pa.int64()),        # exclusive
    ("start_s", pa.float64()),        # presentation time of the first frame
    ("end_s", pa.float64()),
    ("width", pa.int32()),            # of the written clip (upright, square pixels)
    ("height", pa.int32()),
    ("fps", pa.float64()),
    ("frames", pa.int64()),
    ("bytes", pa.int64()),
    ("path", pa.string()),            # relative to the root; null for a dropped piece
    ("status", pa.string()),          # "ok", "dropped" (too short etc.) or "error"
    ("reason", pa.string()),          # why dropped / the error
])

# Tables keyed by these columns; a captions run is keyed by clip_id too.
KEYS = {"videos": "video_id", "clips": "clip_id", "scores": "clip_id"}

# Marker table: a video whose split finished (with or without clips) gets a row, so resume skips it.
SPLIT_DONE = pa.schema([("video_id", pa.string()), ("clips", pa.int64()), ("error", pa.string())])


def write_part(storage: Storage, table: str, rows: list[dict] | pa.Table,
               schema: pa.Schema | None = None) -> str | None:
    """Write rows as one new Parquet part of `table` atomically. Returns the part path (None if empty)."""
    t = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    if t.num_rows == 0:
        return None
    if schema is not None and isinstance(rows, pa.Table):
        t = t.select(schema.names).cast(schema)
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    # Names sort in write order (UTC time to the microsecond, then a random suffix against clashes
    # between processes), which is what "last part wins" in read_table relies on.
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now // 10**9)) + f"{(now // 1000) % 10**6:06d}"
    rel = f"{table}/part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_bytes(rel, buf.getvalue())
    return rel


def read_table(storage: Storage, table: str, schema: pa.Schema | None = None,
               key: str | None = None) -> pa.Table:
    """All parts of `table` concatenated (empty table with `schema` when there are none).

    With `key`, duplicate keys keep the last-written row (parts sort by write time).
    """
    parts = storage.list(table, ".parquet")
    if not parts:
        return schema.empty_table() if schema is not None else pa.table({})
    tables = [pq.read_table(storage.fs.open_input_file(storage.path(p))) for p in parts]
    t = pa.concat_tables(tables, promote_options="permissive")
    key = key or KEYS.get(table.split("/")[0])
    if key and key in t.column_names and t.num_rows:
        t = dedupe_last(t, key)
    return t


def dedupe_last(t: pa.Table, key: str) -> pa.Table:
    """Keep the last row of each key (later parts win)."""
    keys = t.column(key).to_pylist()
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return t
    return t.take(sorted(last.values()))


def ids_in(storage: Storage, table: str, column: str, where: Iterable[tuple[str, object]] = ()) -> set[str]:
    """Set of `column` values present in `table` (optionally where every (col, value) matches)."""
    t = read_table(storage, table)
    if t.num_rows == 0 or column not in t.column_names:
        return set()
    rows = t.to_pylist()
    return {r[column] for r in rows if all(r.get(c) == v for c, v in where)}
