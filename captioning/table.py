"""The captions table: `<root>/captions/<run>/part-*.parquet`, one row per clip per captioning run.

A run is append-only: a re-run writes new parts for the clips still missing or failed. Readers use
`read_captions`, which keeps one row per clip — a caption over an error, and the later of two of the
same kind — so a clip that failed and was filled on re-run counts once, with its caption.
"""
from __future__ import annotations

import json

import pyarrow as pa

from curation.storage import Storage
from curation.tables import read_table

FRAME_CAPTION = pa.struct([("t_s", pa.float64()), ("text", pa.string())])  # time in the clip (s), caption
# caption.windows: one window's caption and its span in the clip (s)
WINDOW_CAPTION = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])

CAPTIONS = pa.schema([
    ("clip_id", pa.string()),
    ("text", pa.string()),            # cleaned caption (boilerplate opening stripped); null on error
    ("raw_text", pa.string()),        # what the model returned, before clean-up
    ("model", pa.string()),           # model folder / hub name / served name
    ("engine", pa.string()),          # "vllm", "openai" or "transformers"
    ("prompt", pa.string()),          # template name (or "custom")
    ("prompt_hash", pa.string()),     # sha256 (16 hex) of the exact prompt text sent
    ("frames", pa.int32()),           # frames sent to the model
    ("tokens_in", pa.int32()),        # prompt tokens including visual tokens (as the engine reports)
    ("tokens_out", pa.int32()),       # generated tokens
    ("latency_s", pa.float64()),      # wall time of the request (batched engines: of the batch)
    ("finish_reason", pa.string()),   # "stop" or "length"
    ("flags", pa.list_(pa.string())), # quality problems left after the retry: empty / truncated / looping
    ("retries", pa.int32()),          # re-generations spent on a bad caption
    ("error", pa.string()),           # why there is no caption (frames or engine); null when captioned
    ("created_at", pa.string()),      # UTC time the row was written (ISO 8601)
    ("mode", pa.string()),            # "video", "frames_then_summary" or "enhance" (null: written before modes)
    ("frame_captions", pa.list_(FRAME_CAPTION)),  # frames_then_summary: each key frame's caption and time
    ("video_caption", pa.string()),   # frames_then_summary with summary.video_prompt: the short video caption
    ("summary_model", pa.string()),   # the text LM that wrote `text` (summary or enhance), else null
    ("summary_engine", pa.string()),  # its engine
    ("source_run", pa.string()),      # enhance: the run whose caption was rewritten
    ("text_tokens", pa.int32()),      # tokens of the caption's own generation (tokens_in/out: the whole clip's)
    ("window_captions", pa.list_(WINDOW_CAPTION)),  # caption.windows: each window's caption (text = merged)
    ("window_s", pa.float64()),       # the window length used (null: the clip was one request)
    ("window_overlap_s", pa.float64()),  # the overlap between consecutive windows
])

_INT_COLUMNS = [f.name for f in CAPTIONS if pa.types.is_integer(f.type)]
# Columns whose names come from the config: caption.fields (field_<name>: string) and caption.checks
# (check_<name>: P(yes), float; check_<name>_yes: the answer, bool). They follow the fixed columns.
EXTRA_PREFIXES = ("field_", "check_")


def extra_columns(names: "list[str]") -> list[str]:
    return [n for n in names if n.startswith(EXTRA_PREFIXES)]


def extra_type(name: str) -> pa.DataType:
    if name.startswith("field_"):
        return pa.string()
    return pa.bool_() if name.endswith("_yes") else pa.float64()


def schema_for(rows: list[dict]) -> pa.Schema:
    """CAPTIONS plus the field_/check_ columns that `rows` carry (in first-seen order)."""
    seen = dict.fromkeys(c for r in rows for c in extra_columns(list(r)))
    return pa.schema(list(CAPTIONS) + [pa.field(c, extra_type(c)) for c in seen])


def table_name(run: str) -> str:
    return f"captions/{run}"


def normalize(row: dict) -> dict:
    """A row in the schema's types (rows that went through pandas carry floats for ints, arrays for lists)."""
    out = {f.name: row.get(f.name) for f in CAPTIONS}
    # Through pandas an all-null column comes back as NaN: nulls stay nulls.
    out.update({c: None if isinstance(row[c], float) and row[c] != row[c] else row[c]
                for c in extra_columns(list(row))})
    for c in _INT_COLUMNS:
        if out[c] is not None:
            out[c] = int(out[c])
    out["flags"] = list(out["flags"] or [])
    if out["frame_captions"] is None and row.get("frame_texts") is not None:  # the steps carry two lists
        out["frame_captions"] = [{"t_s": float(t), "text": x} for t, x in zip(row["frame_times"], row["frame_texts"])]
    return out


def frame_lists(captions: list[dict] | None) -> tuple[list[float], list[str]] | tuple[None, None]:
    """The (times, texts) lists of a frame_captions cell, (None, None) when it is empty."""
    if not captions:
        return None, None
    return [c["t_s"] for c in captions], [c["text"] for c in captions]


def conform(t: pa.Table) -> pa.Table:
    """`t` in the CAPTIONS schema (columns that older parts lack come back as nulls), then its field_/check_
    columns."""
    schema = pa.schema(list(CAPTIONS) + [pa.field(c, extra_type(c)) for c in extra_columns(t.column_names)])
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def read_captions(storage: Storage, run: str) -> pa.Table:
    """One row per clip of a captions run (see module doc for which row wins)."""
    t = conform(read_table(storage, table_name(run), schema=CAPTIONS, key=""))
    if t.num_rows == 0:
        return t
    rows = t.to_pylist()
    best: dict[str, int] = {}
    for i, r in enumerate(rows):  # parts come in write order
        j = best.get(r["clip_id"])
        if j is None or r["error"] is None or rows[j]["error"] is not None:
            best[r["clip_id"]] = i
    return t.take(sorted(best.values()))


def done_ids(storage: Storage, run: str) -> set[str]:
    """Clips of the run that have a caption (error rows are not done: a re-run retries them)."""
    t = read_table(storage, table_name(run), schema=CAPTIONS, key="")
    if t.num_rows == 0:
        return set()
    return {c for c, e in zip(t.column("clip_id").to_pylist(), t.column("error").to_pylist()) if e is None}


def write_run_info(storage: Storage, run: str, info: dict) -> None:
    """`captions/<run>/_run.json` (engine, model, prompt text and hash, config of the latest start).

    The leading underscore keeps Parquet dataset readers of the folder from reading it as a part.
    """
    storage.write_bytes(f"{table_name(run)}/_run.json", json.dumps(info, indent=2, default=str).encode())
