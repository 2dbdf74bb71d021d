"""Rows of the captions table as the caption steps make them, one floor below the steps.

The steps of every captioning mode (captioning/stage.py, summary.py, enhance.py) build their rows
and read their inputs with these helpers; the steps import this module, never each other.
"""
from __future__ import annotations

from datetime import datetime, timezone

from captioning.engines import Generation
from captioning.table import CAPTIONS


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
