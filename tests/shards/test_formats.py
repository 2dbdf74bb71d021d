"""Export a curated root as CogVideo / finetrainers / HF videofolder layouts and import each back."""
from __future__ import annotations

import csv
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from curation.probe import probe_video
from curation.select import SelectConfig, select
from curation.storage import Storage
from shards import demo, formats, writer
from shards.config import WriterConfig


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> demo.Demo:
    return demo.build(str(tmp_path_factory.mktemp("formats_root")))


def test_cogvideo_and_finetrainers_layouts_hold_the_kept_clips(built, tmp_path):
    st = Storage(built.root)
    for fmt in ("cogvideo", "finetrainers-csv", "finetrainers-json"):
        out = str(tmp_path / fmt)
        assert formats.export(st, out, fmt) == len(built.kept)
    prompts = open(tmp_path / "cogvideo/prompts.txt").read().splitlines()
    videos = open(tmp_path / "cogvideo/videos.txt").read().splitlines()
    ids = sorted(built.kept)
    assert videos == [f"videos/{c}.mp4" for c in ids] and prompts == [built.captions[c] for c in ids]
    for v in videos:  # the clip bytes, unchanged
        assert open(tmp_path / "cogvideo" / v, "rb").read() == st.read_bytes(f"clips/{v[7:].split('_')[0]}/{v[7:]}")
    rows = list(csv.DictReader(open(tmp_path / "finetrainers-csv/dataset.csv")))
    assert [r["caption"] for r in rows] == prompts and [r["video_file"] for r in rows] == videos
    assert float(rows[0]["aesthetic"]) > 0  # scores travel as columns
    assert json.load(open(tmp_path / "finetrainers-json/dataset.json"))[0]["caption"] == prompts[0]


def test_hf_videofolder_loads_with_the_datasets_library(built, tmp_path):
    import datasets

    out = str(tmp_path / "hf")
    formats.export(Storage(built.root), out, "hf")
    ds = datasets.load_dataset("videofolder", data_dir=out, split="train", cache_dir=str(tmp_path / "cache"))
    ds = ds.cast_column("video", datasets.Video(decode=False))  # decoding needs torchcodec; the paths are the test
    assert sorted(ds["clip_id"]) == sorted(built.kept) and len(ds) == len(built.kept)
    for row in ds:
        assert row["text"] == built.captions[row["clip_id"]]
        assert probe_video(row["video"]["path"])["frames"] == 48


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_each_layout_imports_and_shards_for_training(built, tmp_path, fmt):
    out = str(tmp_path / "export")
    formats.export(Storage(built.root), out, fmt)
    new = Storage(str(tmp_path / "root"))
    counts = formats.import_layout(out, new)
    assert counts == {"format": fmt, "clips": len(built.kept), "captions_run": "imported"}
    stats = writer.write_shards(new, WriterConfig(require_scores=False), "imp", local=True, progress=False)
    assert stats["kept"] == len(built.kept)
    index = pq.read_table(new.local_path("shards/default/index.parquet")).to_pylist()
    # cogvideo's two files carry no id: the clip is named after its file (+ a hash of its path)
    keys = {r["key"].rsplit("-", 1)[0] if fmt == "cogvideo" else r["key"]: r["key"] for r in index}
    assert sorted(keys) == sorted(built.kept)
    assert all(r["frames"] == 48 and r["fps"] == 24.0 for r in index)
    with tarfile.open(new.local_path(f"shards/default/{index[0]['shard']}")) as tf:
        for r in index:
            if r["shard"] == index[0]["shard"]:
                cid = next(k for k, v in keys.items() if v == r["key"])
                assert tf.extractfile(f"{r['key']}.txt").read().decode() == built.captions[cid]


def test_export_follows_the_selection_and_bad_layouts_are_named(tmp_path):
    d = demo.build(str(tmp_path / "root"))
    st = Storage(d.root)
    select(st, SelectConfig(score="aesthetic", max_clips=len(d.kept) + 2))  # +2: the caption-less kept clips
    chosen = formats.records(st)
    select(st, SelectConfig(score="aesthetic", max_clips=3))
    assert len(formats.records(st)) < len(chosen)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "prompts.txt").write_text("a\nb\n")
    (bad / "videos.txt").write_text("videos/a.mp4\n")
    with pytest.raises(ValueError, match="prompts.txt has 2 lines but videos.txt has 1"):
        formats.read_layout(str(bad))
    (bad / "prompts.txt").write_text("a\n")
    with pytest.raises(ValueError, match="1 listed videos do not exist"):
        formats.read_layout(str(bad))
    with pytest.raises(ValueError, match="no known dataset layout"):
        formats.read_layout(str(tmp_path / "root" / "clips"))
