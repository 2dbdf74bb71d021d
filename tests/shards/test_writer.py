"""Shard writer: the join, the tar layout, the index, the stats, resume per shard, and the Ray path."""
from __future__ import annotations

import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from curation import tables
from curation.storage import Storage
from shards import demo, writer
from shards.config import WriterConfig


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def test_shards_hold_exactly_the_kept_clips_with_metadata(demo_shards):
    d, folder = demo_shards
    tars = sorted(f for f in os.listdir(folder) if f.endswith(".tar"))
    assert tars == [f"shard-{i:06d}.tar" for i in range(4)]  # 7 kept clips, 2 per shard
    keys = []
    for t in tars:
        m = _members(os.path.join(folder, t))
        ks = sorted({n.split(".", 1)[0] for n in m})
        assert len(ks) <= 2
        for k in ks:
            assert {f"{k}.mp4", f"{k}.json", f"{k}.txt"} <= set(m)
            meta = json.loads(m[f"{k}.json"])
            assert m[f"{k}.txt"].decode() == d.captions[k] == meta["caption"]["text"]
            assert meta["caption"]["run"] == "new" and meta["caption"]["model"] == "tiny-vlm"
            assert meta["scores"]["passed"] is True and meta["scores"]["aesthetic"] > 0
            clip = meta["clip"]
            assert clip["clip_id"] == k and clip["status"] == "ok"
            with open(os.path.join(d.root, clip["path"]), "rb") as f:
                assert f.read() == m[f"{k}.mp4"]
        keys += ks
    assert sorted(keys) == sorted(d.kept)
    assert not set(keys) & set(d.excluded)


def test_index_lists_every_sample_with_offsets_and_sizes(demo_shards):
    d, folder = demo_shards
    idx = pq.read_table(os.path.join(folder, "index.parquet")).to_pylist()
    assert sorted(r["key"] for r in idx) == sorted(d.kept)
    for r in idx:
        assert r["error"] is None and r["frames"] == 48 and r["duration_s"] == pytest.approx(2.0)
        assert (r["width"], r["height"]) in {(160, 96), (96, 96)}
        with open(os.path.join(folder, r["shard"]), "rb") as f:  # in-place reads (re-captioning) work
            f.seek(r["offset"])
            data = f.read(r["size"])
        with open(os.path.join(d.root, "clips", r["video_id"], r["key"] + ".mp4"), "rb") as f:
            assert f.read() == data
    # Samples are shuffled across source videos: the first shards do not follow the source order.
    order = [r["key"] for r in idx]
    assert order != sorted(order)


def test_stats_summary_counts_every_reason(demo_shards):
    d, folder = demo_shards
    stats = json.load(open(os.path.join(folder, "stats", "fixture.json")))
    assert stats["kept"] == stats["samples"] == len(d.kept) and stats["clips"] == 12
    assert stats["dropped"] == {"clip dropped": 1, "filtered out": 1, "caption failed": 1, "not captioned": 1,
                                "caption flagged": 1}
    assert stats["captions_run"] == "new" and stats["resolutions"] == {"160x96": 4, "96x96": 3}


def test_resume_rewrites_only_missing_shards_and_size_limit(tmp_path):
    d = demo.build(str(tmp_path / "r"), videos=2, clips_per_video=4, frames=24)
    st = Storage(d.root)
    wc = WriterConfig(max_samples_per_shard=1, seed=3)
    first = writer.write_shards(st, wc, "a", local=True)
    assert first["shards"] == len(d.kept) == 3 and first["shards_written"] == 3
    folder = tmp_path / "r" / "shards" / "default"
    before = {p: os.path.getmtime(folder / p) for p in os.listdir(folder) if p.endswith(".tar")}
    os.remove(folder / "shard-000001.tar")
    (folder / ".tmp-deadbeef-shard-000002.tar").write_bytes(b"half")  # a killed run's leftover
    again = writer.write_shards(st, wc, "b", local=True)
    assert (again["shards_written"], again["shards_skipped"]) == (1, 2)
    assert not [p for p in os.listdir(folder) if p.startswith(".tmp-")]
    assert os.path.getmtime(folder / "shard-000000.tar") == before["shard-000000.tar"]
    # A byte budget smaller than one clip still writes one sample per shard (never an empty shard).
    small = writer.write_shards(st, WriterConfig(target_shard_mb=0.001, max_samples_per_shard=100), "c",
                                local=True)
    assert small["shards"] == small["samples"] == 3
    big = writer.write_shards(st, WriterConfig(max_samples_per_shard=100), "d", local=True)
    assert big["shards"] == 1 and big["shards_removed"] == 2  # the old plan's extra shards are removed
    assert sorted(f for f in os.listdir(folder) if f.endswith(".tar")) == ["shard-000000.tar"]


def test_captions_run_choice_and_missing_scores(tmp_path):
    d = demo.build(str(tmp_path / "c"), videos=2, clips_per_video=4, frames=24)
    st = Storage(d.root)
    stats = writer.write_shards(st, WriterConfig(captions_run="old", name="old"), "a", local=True)
    assert stats["captions_run"] == "old" and stats["samples"] == 6  # old run captioned every clip
    m = _members(str(tmp_path / "c" / "shards" / "old" / "shard-000000.tar"))
    assert {v.decode() for k, v in m.items() if k.endswith(".txt")} == {"old caption"}
    with pytest.raises(ValueError, match="captions run 'nope' has no parts"):
        writer.write_shards(st, WriterConfig(captions_run="nope"), "b", local=True)
    import shutil

    shutil.rmtree(tmp_path / "c" / "scores")
    with pytest.raises(ValueError, match="no scores table.*require_scores"):
        writer.write_shards(st, WriterConfig(), "c", local=True)
    stats = writer.write_shards(st, WriterConfig(require_scores=False, name="noscores"), "d", local=True)
    assert stats["samples"] == len(d.kept) + 1 and not stats["scores_table"]  # the filtered clip is back


def test_missing_clip_file_is_reported_and_retried(tmp_path):
    d = demo.build(str(tmp_path / "m"), videos=2, clips_per_video=4, frames=24)
    st = Storage(d.root)
    victim = d.kept[0]
    path = tmp_path / "m" / "clips" / victim.split("_")[0] / f"{victim}.mp4"
    data = path.read_bytes()
    path.unlink()
    stats = writer.write_shards(st, WriterConfig(), "a", local=True)
    assert stats["samples"] == len(d.kept) - 1 and stats["sample_errors"] == 1 and victim in stats["errors"][0]
    path.write_bytes(data)
    stats = writer.write_shards(st, WriterConfig(), "b", local=True)
    assert stats["samples"] == len(d.kept) and stats["shards_written"] == 1


def test_stage_runs_on_ray_through_the_pipeline_entry(tmp_path, ray_local):
    from vidcurate.flow import load_config
    from curation.pipeline import RunContext

    d = demo.build(str(tmp_path / "ray"), videos=2, clips_per_video=4, frames=24)
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"root: {d.root}\ninputs: [x]\nray: {{progress: false}}\n"
                        "shard:\n  writer: {max_samples_per_shard: 1}\n")
    cfg = load_config(str(cfg_path), check_inputs=False)
    counts = writer.run(cfg, RunContext(cfg, Storage(cfg.root), run_id="ray1"))
    assert counts["samples"] == counts["shards"] == counts["shards_written"] == len(d.kept)
    idx = tables.read_table(Storage(d.root), "shards/default")  # index.parquet + sidecars are readable
    assert idx.num_rows == len(d.kept)


def test_object_store_root_through_pyarrow_fs(tmp_path):
    """The writer on a non-local pyarrow filesystem (an in-memory mock of an object store)."""
    import pyarrow.fs as pafs

    d = demo.build(str(tmp_path / "local"), videos=2, clips_per_video=4, frames=24)
    mock = pafs._MockFileSystem()
    pafs.copy_files(d.root, "bucket/root", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=mock)
    st = Storage(str(tmp_path))  # then pointed at the mock store, as Storage("s3://bucket/root") would be
    st.root, st.fs, st.base, st.is_local = "mock://bucket/root", mock, "bucket/root", False
    wc = WriterConfig(max_samples_per_shard=2, captions_run="new")  # the copy reset modification times
    stats = writer.write_shards(st, wc, "obj", local=True)
    assert stats["samples"] == len(d.kept) and stats["captions_run"] == "new" and stats["shards"] == 2
    local_tar = tmp_path / "s0.tar"
    local_tar.write_bytes(st.read_bytes("shards/default/shard-000000.tar"))
    assert len(_members(str(local_tar))) == 6
    assert not [i for i in mock.get_file_info(pafs.FileSelector("bucket/root/shards", recursive=True))
                if i.base_name.startswith(".tmp-")]
    again = writer.write_shards(st, wc, "obj2", local=True)
    assert again["shards_skipped"] == 2


def test_caption_flags_that_drop_a_clip_are_configurable(tmp_path):
    d = demo.build(str(tmp_path / "f"), videos=2, clips_per_video=4, frames=24)
    st = Storage(d.root)
    rows = tables.read_table(st, "captions/new").to_pylist()
    for r in rows:
        if r["clip_id"] == d.kept[0]:
            r.update(text="a pattern that", flags=["truncated"])
    tables.write_part(st, "captions/flagged", rows, demo.CAPTIONS)
    kept = writer.write_shards(st, WriterConfig(name="a", captions_run="flagged"), "a", local=True)
    assert kept["samples"] == len(d.kept)  # a truncated caption still describes its clip
    strict = writer.write_shards(st, WriterConfig(name="b", captions_run="flagged",
                                                  drop_caption_flags=["truncated", "looping"]), "b", local=True)
    assert strict["samples"] == len(d.kept) - 1 and strict["dropped"]["caption flagged"] == 2
