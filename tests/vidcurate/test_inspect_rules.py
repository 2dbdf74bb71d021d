"""`run --stage filter --rules-only`: thresholds re-applied to the stored scores (no decode, no scoring)."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation import tables
from curation.__main__ import main as cli
from curation.filter import decide, decide_table, rules_of, scores_schema
from curation.filters.base import Rule, ScorerSet
from curation.filters.config import FilterConfig
from curation.storage import Storage

SCORERS = {"motion": {"type": "motion", "thresholds": {"mean": {"min": 0.01}}},
           "aesthetic": {"type": "aesthetic", "weights": "unused.safetensors", "thresholds": {"mean": {"min": 4.5}}}}


def scores_table(n: int, seed: int = 0, scorers: dict | None = None) -> tuple[pa.Table, pa.Schema]:
    """A scores table as the filter writes it (embeddings included), decided by its rules."""
    rng = np.random.default_rng(seed)
    fcfg = FilterConfig(scorers=scorers or SCORERS)
    schema = scores_schema(ScorerSet.from_config(fcfg.enabled_scorers()), {"filter.config": fcfg.model_dump_json()})
    mean = rng.lognormal(-3, 1, n).astype(np.float32)
    mean[::37] = np.nan
    mean[1::41] = np.float32(0.01)  # exactly at the threshold as float32 (below 0.01 in float64)
    aes = rng.normal(5, 0.7, n).astype(np.float32)
    err = [("decode failed" if i % 501 == 5 else None) for i in range(n)]
    cols = {"clip_id": [f"c{i:07d}" for i in range(n)], "video_id": [f"v{i // 50}" for i in range(n)],
            "source": [f"/raw/v{i // 50}.mp4" for i in range(n)], "path": [f"clips/v{i // 50}/c{i:07d}.mp4" for i in range(n)],
            "start_s": np.zeros(n), "end_s": rng.uniform(2, 10, n), "frames_sampled": np.full(n, 8, np.int32),
            "motion_mean": mean, "motion_min_patch": mean * 0.5, "motion_still_share": rng.random(n).astype(np.float32),
            # the motion scorer's camera/scene metrics and its camera-type label
            "motion_camera": mean * 0.6, "motion_object": mean, "motion_moving_area": rng.random(n).astype(np.float32),
            "motion_shake": (rng.random(n) * 0.01).astype(np.float32), "motion_level": mean,
            "motion_camera_type": pa.array(np.array(["static", "pan", "zoom"], object)[rng.integers(0, 3, n)].tolist(),
                                           pa.string()),
            "aesthetic_mean": aes, "aesthetic_min": aes - 0.5, "passed": np.zeros(n, bool), "reasons": [[]] * n,
            "clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 4).astype(np.float32)), 4)
            .cast(pa.list_(pa.float32())),
            "error": err, "decode_s": np.zeros(n, np.float32), "score_s": np.zeros(n, np.float32)}
    t = pa.table({f.name: cols[f.name] for f in schema}, schema=schema)
    passed, reasons = decide_table(t, rules_of(schema))
    t = t.set_column(t.schema.get_field_index("passed"), "passed", passed)
    return t.set_column(t.schema.get_field_index("reasons"), "reasons", reasons), schema


def write_root(root: str, t: pa.Table, schema: pa.Schema, parts: int = 3) -> Storage:
    st = Storage(root)
    step = -(-t.num_rows // parts)
    for i in range(0, t.num_rows, step):
        tables.write_part(st, "scores", t.slice(i, step), schema)
    return st


def write_config(root: str, thresholds: dict[str, dict], path: str) -> str:
    """A pipelines.yaml for `root` whose scorers carry these thresholds (scorer -> metric -> {min, max})."""
    os.makedirs(os.path.join(root, "raw"), exist_ok=True)
    open(os.path.join(root, "raw", "x.mp4"), "wb").close()  # inputs must match a file; nothing reads it
    sc = {k: {**v, "thresholds": thresholds.get(k, v.get("thresholds", {}))} for k, v in SCORERS.items()}
    cfg = {"root": root, "inputs": [os.path.join(root, "raw", "*.mp4")],
           "filter": {"scorers": sc}}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def passed_ids(st: Storage) -> set[str]:
    t = tables.read_table(st, "scores")
    return set(pa.compute.filter(t.column("clip_id"), t.column("passed")).to_pylist())


def ipc(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema.remove_metadata()) as w:
        w.write_table(t.replace_schema_metadata(None).combine_chunks())
    return sink.getvalue().to_pybytes()


def test_decide_table_is_decide_row_by_row():
    rng = np.random.default_rng(1)
    n = 3000
    a = rng.random(n).astype(np.float32)
    a[40:60] = np.nan
    b = rng.random(n).astype(np.float32)
    b[:40] = np.float32(0.01)  # float32(0.01) < 0.01 in float64: the row-wise rule drops these
    err = [None] * n
    err[3], err[7], err[11] = "boom", "", "x"  # an empty error string is no error (as in decide)
    t = pa.table({"a": pa.array(a, mask=np.arange(n) % 97 == 0), "b": b, "error": err})
    rules = [Rule("a", 0.3, 0.9), Rule("b", None, 0.5), Rule("a", 0.1), Rule("b", 0.01)]
    passed, reasons = decide_table(t, rules)
    expect = [decide(dict(r), rules) for r in t.to_pylist()]
    assert passed.to_pylist() == [e["passed"] for e in expect]
    assert reasons.to_pylist() == [e["reasons"] for e in expect]
    assert sum("b<0.01" in r for r in reasons.to_pylist()[:40]) == 38  # all but the two error rows
    assert any(len(r) == 2 for r in reasons.to_pylist())  # a clip breaking two rules lists both


def test_rules_only_rewrites_decisions_and_keeps_everything_else(tmp_path, capsys):
    t, schema = scores_table(4000)
    st = write_root(str(tmp_path), t, schema)
    parts = st.list("scores", ".parquet")
    before = {p: pq.read_table(st.path(p)) for p in parts}
    cfg = write_config(str(tmp_path), {"motion": {"mean": {"min": 0.05}, "still_share": {"max": 0.9}},
                                       "aesthetic": {"mean": {"min": 4.0}}}, str(tmp_path / "p.yaml"))
    assert cli(["run", cfg, "--stage", "filter", "--rules-only"]) == 0
    assert st.list("scores", ".parquet") == parts  # rewritten in place: no new part, order kept
    after = tables.read_table(st, "scores")
    m = after.column("motion_mean").cast(pa.float64()).to_numpy(zero_copy_only=False)
    s = after.column("motion_still_share").cast(pa.float64()).to_numpy(zero_copy_only=False)
    a = after.column("aesthetic_mean").cast(pa.float64()).to_numpy(zero_copy_only=False)
    err = np.array([e is not None for e in after.column("error").to_pylist()])
    expect = ~err & ~(m < 0.05) & ~(s > 0.9) & ~(a < 4.0)  # NaN compares false: breaks no rule
    assert after.column("passed").to_pylist() == expect.tolist()
    rs = after.column("reasons").to_pylist()
    assert all(r == ["error"] for r, e in zip(rs, err) if e)
    assert any(set(r) == {"motion_mean<0.05", "aesthetic_mean<4"} for r in rs)
    for p in parts:  # every other column, the embeddings included, is untouched; the rules metadata is new
        new = pq.read_table(st.path(p))
        keep = [c for c in new.column_names if c not in ("passed", "reasons")]
        assert ipc(new.select(keep)) == ipc(before[p].select(keep))  # bytes: NaN scores are equal too
        assert {(r.column, r.min, r.max) for r in rules_of(new.schema)} == {
            ("motion_mean", 0.05, None), ("motion_still_share", None, 0.9), ("aesthetic_mean", 4.0, None)}
    run = json.load(open(max((tmp_path / "runs").iterdir())))
    f = run["stages"]["filter"]
    assert f["rules_only"] and f["counts"]["kept"] == int(expect.sum()) and f["counts"]["changed"] > 0
    assert f["counts"]["errors"] == int(err.sum())


def test_rules_only_bad_input_changes_nothing(tmp_path, capsys):
    t, schema = scores_table(500)
    st = write_root(str(tmp_path), t, schema)
    snap = {p: st.read_bytes(p) for p in st.list("scores", ".parquet")}
    cfg = write_config(str(tmp_path), {}, str(tmp_path / "p.yaml"))
    # A scorer added after scoring has no column to apply a threshold to.
    assert cli(["run", cfg, "--stage", "filter", "--rules-only", "--set",
                "filter.scorers.neg={type: clip_zero_shot}"]) == 2
    err = capsys.readouterr().err
    assert "filter.scorers.neg: column neg_text is not in scores/part-" in err and "rescore" in err
    assert {p: st.read_bytes(p) for p in st.list("scores", ".parquet")} == snap
    assert cli(["run", cfg, "--stage", "split,filter", "--rules-only"]) == 2
    assert "split cannot run before it" in capsys.readouterr().err
    assert cli(["run", cfg, "--stage", "shard", "--rules-only"]) == 2
    empty = tmp_path / "empty"
    cfg2 = write_config(str(empty), {}, str(tmp_path / "e.yaml"))
    assert cli(["run", cfg2, "--stage", "filter", "--rules-only"]) == 2
    assert "no scores table to re-apply thresholds to" in capsys.readouterr().err


def test_shard_writer_follows_rules_only(tmp_path):
    """The shard writer's join reads the rewritten decisions: kept = passed under the new thresholds."""
    from captioning.table import CAPTIONS
    from shards.config import WriterConfig
    from shards.writer import select

    t, schema = scores_table(300)
    st = write_root(str(tmp_path), t, schema)
    clips = [{"clip_id": r["clip_id"], "video_id": r["video_id"], "source": r["source"], "start_frame": 0,
              "end_frame": 48, "start_s": 0.0, "end_s": 2.0, "width": 64, "height": 64, "fps": 24.0, "frames": 48,
              "bytes": 1, "path": r["path"], "status": "ok", "reason": None} for r in t.to_pylist()]
    tables.write_part(st, "clips", clips, tables.CLIPS)
    tables.write_part(st, "captions/default", [{"clip_id": c["clip_id"], "text": "a clip", "flags": []} for c in clips],
                      CAPTIONS)
    assert {s["key"] for s in select(st, WriterConfig()).samples} \
        == passed_ids(st)
    cfg = write_config(str(tmp_path), {"motion": {"mean": {"min": 0.1}}}, str(tmp_path / "p.yaml"))
    assert cli(["run", cfg, "--stage", "filter", "--rules-only"]) == 0
    new = passed_ids(st)
    sel = select(st, WriterConfig())
    assert {s["key"] for s in sel.samples} == new
    assert sel.dropped["filtered out"] == 300 - len(new)
