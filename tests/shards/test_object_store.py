"""Writer and loader on a real S3 API (moto on 127.0.0.1): root, shards and reads all through URIs."""
from __future__ import annotations

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from curation.storage import Storage
from shards import demo, writer
from shards.config import WriterConfig
from shards.loader import ShardLoader


def test_write_and_load_shards_on_s3(s3_endpoint, tmp_path):
    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://key:secret@shards{q}&allow_bucket_creation=true")
    fs.create_dir("shards")
    d = demo.build(str(tmp_path / "local"), videos=2, clips_per_video=4)
    pafs.copy_files(d.root, "shards/root", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    root = f"s3://key:secret@shards/root{q}"
    st = Storage(root)
    assert not st.is_local
    wc = WriterConfig(max_samples_per_shard=2, captions_run="new")  # the upload reset modification times
    stats = writer.write_shards(st, wc, "s3", local=True)  # (the Ray path: test_writer.py)
    assert stats["samples"] == len(d.kept) == 3 and stats["shards"] == stats["shards_written"] == 2
    assert stats["folder"] == "s3://shards/root/shards/default"  # no credentials or options in the stats
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("shards/root/shards/default")))
    assert names == ["index", "index.parquet", "shard-000000.tar", "shard-000001.tar", "stats"]
    idx = pq.read_table(fs.open_input_file("shards/root/shards/default/index.parquet")).to_pylist()
    assert sorted(r["key"] for r in idx) == sorted(d.kept)
    assert writer.write_shards(st, wc, "s3-again", local=True)["shards_skipped"] == 2

    loader = ShardLoader({"shards": [f"s3://key:secret@shards/root/shards/default{q}"], "num_workers": 2,
                          "buckets": [{"frames": 9, "height": 64, "width": 64}], "batch_size": 2})
    assert len(loader.shards) == 2 and all(u.endswith(q) for u in loader.shards)
    batches = list(loader)
    assert sorted(k for b in batches for k in b["keys"]) == sorted(d.kept) and loader.stats["bad"] == {}
    assert all(m["_sample"]["url"].startswith("s3://shards/root/shards/default/shard-") for b in batches
               for m in b["meta"])


@pytest.mark.heavy
def test_ray_shard_tasks_write_to_s3(ray_local, s3_endpoint, tmp_path):
    """The same on Ray: each shard task gets the pickled S3 Storage and uploads its tar."""
    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://key:secret@rayshards{q}&allow_bucket_creation=true")
    fs.create_dir("rayshards")
    d = demo.build(str(tmp_path / "local"), videos=2, clips_per_video=4, frames=24)
    pafs.copy_files(d.root, "rayshards/root", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    st = Storage(f"s3://key:secret@rayshards/root{q}")
    stats = writer.write_shards(st, WriterConfig(max_samples_per_shard=1, captions_run="new"), "ray", progress=False)
    assert stats["samples"] == stats["shards_written"] == len(d.kept) and stats["sample_errors"] == 0
