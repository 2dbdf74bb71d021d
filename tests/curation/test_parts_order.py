"""Part order ("last part wins") follows a sequence, not wall-clock time, and survives another writer."""
from __future__ import annotations

import pyarrow as pa

from curation import tables
from curation.storage import Storage

SCHEMA = pa.schema([("video_id", pa.string()), ("v", pa.int64())])


def test_parts_sort_in_write_order_whatever_the_clock(tmp_path, monkeypatch):
    st = Storage(str(tmp_path))
    # an earlier run on a machine whose clock ran ahead: an old time-stamped name (20 digits)
    tables.write_part(st, "videos", [{"video_id": "a", "v": 1}], SCHEMA)
    old = st.list("videos", ".parquet")[0]
    st.fs.move(st.path(old), st.path("videos/part-29991231235959999999-deadbeef.parquet"))
    tables.new_run(st)
    monkeypatch.setattr("time.time_ns", lambda: 0)  # this machine's clock is far behind: must not matter
    monkeypatch.setattr("time.time", lambda: 0.0)
    tables.write_part(st, "videos", [{"video_id": "a", "v": 2}], SCHEMA)
    tables.write_part(st, "videos", [{"video_id": "b", "v": 3}], SCHEMA)
    # another process writes meanwhile; a new run of this one continues after it
    st.part_sequences["videos"] = 5
    tables.new_run(st)
    tables.write_part(st, "videos", [{"video_id": "b", "v": 4}], SCHEMA)
    names = st.list("videos", ".parquet")
    assert names == sorted(names) and len(names) == 4
    assert [tables._sequence_of(n) for n in names][1:] == [29991231235959999999 + k for k in (1, 2, 3)]
    got = {r["video_id"]: r["v"] for r in tables.read_table(st, "videos", SCHEMA, key="video_id").to_pylist()}
    assert got == {"a": 2, "b": 4}
