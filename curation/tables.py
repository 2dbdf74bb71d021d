"""Table schemas and Parquet I/O under the dataset root.

Every stage writes one table as `part-*.parquet` files under `<root>/<table>/`. Parts are written
atomically as work finishes, so a killed run keeps everything already written; resume reads the ids
already present and skips them. Readers deduplicate on the table's key (last part wins), so a row
that was re-done after a crash between part write and bookkeeping is never counted twice.
"""
from __future__ import annotations

import io
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from curation.storage import Storage
from curation.uris import scrub

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
    ("truncated", pa.bool_()),        # decoding failed mid-stream (error says where): the frames before are used
    ("bpp", pa.float64()),            # video bits per pixel per frame: bitrate / (width x height x fps)
    ("reasons", pa.list_(pa.string())),  # probe.prefilter rules broken (e.g. "short_side<128"): not split; [] = passes
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

def usable_video(row: dict) -> bool:
    """A videos-table row whose frames later stages use: probed cleanly, or truncated (salvaged up to the damage)."""
    return not row.get("error") or bool(row.get("truncated"))


# Tables keyed by these columns; a captions run is keyed by clip_id too.
KEYS = {"videos": "video_id", "clips": "clip_id", "scores": "clip_id"}

def write_part(storage: Storage, table: str, rows: list[dict] | pa.Table,
               schema: pa.Schema | None = None) -> str | None:
    """Write rows as one new Parquet part of `table` atomically. Returns the part path (None if empty)."""
    t = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist([_scrub_row(r) for r in rows], schema=schema)
    if t.num_rows == 0:
        return None
    if schema is not None and isinstance(rows, pa.Table):
        t = t.select(schema.names).cast(schema)
    if isinstance(rows, pa.Table):
        t = _scrub_table(t)
    if t.schema.metadata:
        t = t.replace_schema_metadata({k: scrub(v.decode("utf-8", "replace")).encode()
                                       for k, v in t.schema.metadata.items()})
    buf = io.BytesIO()
    # Page checksums: a bit flipped after writing is an error on read, not silently wrong values
    # (bench/parquet_rot.py: 0.8% of single-bit flips go unnoticed with them, 44% without; docs/faults.md).
    pq.write_table(t, buf, compression="zstd", write_page_checksum=True)
    rel = f"{table}/part-{next_sequence(storage, table):020d}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_bytes(rel, buf.getvalue())
    return rel


# Part names sort in write order by a sequence, not by wall-clock time (clocks of different machines
# disagree): a writer starts after the highest number already in the table and counts up (the count is
# held by the Storage object, `storage.part_sequences`). Old time-stamped names (20 digits) compare as
# numbers below the new ones that follow them.
def next_sequence(storage: Storage, table: str) -> int:
    """The number of the next part of `table` ("last part wins" in read_table relies on it)."""
    seqs = storage.part_sequences
    if table not in seqs:
        seqs[table] = max((_sequence_of(p) for p in storage.list(table, ".parquet")), default=0)
    seqs[table] += 1
    return seqs[table]


def new_run(storage: Storage) -> None:
    """Forget `storage`'s counted sequences: its next write lists the table again (a run may follow another
    process's), and this process's quarantine notes."""
    storage.part_sequences.clear()
    QUARANTINED.clear()


def _sequence_of(rel: str) -> int:
    field = rel.rsplit("/", 1)[-1].removeprefix("part-").split("-", 1)[0]
    return int(field) if field.isdigit() else 0


def _scrub_row(row: dict) -> dict:
    """No credentials in a table: every URI in a string (or list of strings) value is redacted."""
    return {k: scrub(v) if isinstance(v, str) else [scrub(x) if isinstance(x, str) else x for x in v]
            if isinstance(v, list) and v and isinstance(v[0], str) else v for k, v in row.items()}


def _scrub_table(t: pa.Table) -> pa.Table:
    for i, f in enumerate(t.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = t.column(i).to_pylist()
            clean = [scrub(v) if v is not None else None for v in col]
            if clean != col:
                t = t.set_column(i, f, pa.array(clean, f.type))
    return t


def read_table(storage: Storage, table: str, schema: pa.Schema | None = None,
               key: str | None = None) -> pa.Table:
    """All parts of `table` concatenated (empty table with `schema` when there are none).

    With `key`, duplicate keys keep the last-written row (parts sort by write time).
    """
    parts = storage.list(table, ".parquet")
    if not parts:
        return schema.empty_table() if schema is not None else pa.table({})
    tables = [t for t in (read_part(storage, p) for p in parts) if t is not None]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    t = pa.concat_tables(tables, promote_options="permissive")
    key = key or KEYS.get(table.split("/")[0])
    if key and key in t.column_names and t.num_rows:
        t = dedupe_last(t, key)
    return t


def read_columns(storage: Storage, table: str, columns: list[str], key: str | None = None) -> pa.Table:
    """Only `columns` of every part of `table` (a part lacking one has nulls), last row per `key`.

    Resume reads a few small columns: never the embeddings or frame lists of a wide table."""
    parts = storage.list(table, ".parquet")
    ts = []
    for p in parts:
        t = read_part(storage, p, columns)  # a rotten part: quarantined, its rows redone
        if t is None:
            continue
        for c in columns:
            if c not in t.column_names:  # null-typed: promotes to the column's type in the other parts
                t = t.append_column(c, pa.nulls(t.num_rows, pa.null()))
        ts.append(t.select(columns))
    if not ts:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    t = pa.concat_tables(ts, promote_options="permissive")
    return dedupe_last(t, key) if key and t.num_rows else t


def column_by_clip(storage: Storage, table: str, column: str) -> dict:
    """clip id -> one column of `table` (parts in write order: later rows win; nulls skipped); empty when the
    table has no such column."""
    out: dict = {}
    for p in storage.list(table, ".parquet"):
        t = read_part(storage, p, ["clip_id", column])
        if t is None or column not in t.column_names:
            continue
        out.update((c, v) for c, v in zip(t.column("clip_id").to_pylist(), t.column(column).to_pylist())
                   if v is not None)
    return out


def read_part(storage: Storage, rel: str, columns: list[str] | None = None) -> pa.Table | None:
    """One part, its page checksums verified; a rotten part (bad footer, checksum, cut short) is moved to
    quarantine/ with a message and read as absent, so its rows are redone by the next run of its stage."""
    try:  # an object store's transient errors are retried (and raised when they last), never quarantined
        src = storage.fs.open_input_file(storage.path(rel)) if storage.is_local else pa.BufferReader(storage.read_bytes(rel))
    except FileNotFoundError:
        return None  # quarantined meanwhile by another reader
    try:
        f = pq.ParquetFile(src, page_checksum_verification=True)
        return f.read(columns=[c for c in columns if c in f.schema_arrow.names] if columns else None)
    except (OSError, pa.ArrowException) as e:  # ArrowInvalid (footer, checksum), IOError (short read)
        quarantine(storage, rel, f"unreadable Parquet part ({type(e).__name__}: {e})")
        return None


def quarantine(storage: Storage, rel: str, why: str) -> str:
    """Move a damaged file to quarantine/<rel> (readers then skip it; the stage that wrote it redoes its
    rows) next to a note saying why; warn on stderr. Returns the quarantined path."""
    import sys
    import time

    dest = f"quarantine/{rel}"
    message = f"quarantined {storage.uri(rel) if storage.is_local else rel}: {why}; moved to {dest}"
    try:
        storage.makedirs(posixpath.dirname(dest))
        storage.fs.move(storage.path(rel), storage.path(dest))
        storage.write_bytes(dest + ".why.txt", f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {why}\n".encode())
    except FileNotFoundError:
        pass  # another reader moved it first
    print(f"warning: {scrub(message)}", file=sys.stderr, flush=True)
    QUARANTINED.append(scrub(message))
    return dest


# Messages of the files this process quarantined (the run manifest lists them).
QUARANTINED: list[str] = []


def dedupe_last(t: pa.Table, key: str) -> pa.Table:
    """Keep the last row of each key (later parts win)."""
    keys = t.column(key).to_pylist()
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return t
    return t.take(sorted(last.values()))
