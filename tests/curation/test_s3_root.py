"""Inputs and dataset root on an object store: a real S3 API server (moto) on 127.0.0.1."""

import pyarrow.fs as pafs
import pytest

from curation import tables
from curation.config import load_config
from curation.pipeline import run_stages
from curation.storage import Storage, expand_inputs
from curation.synth import Scene, make_video
from curation.video import video_id_for


def test_probe_and_split_on_s3(ray_local, s3_endpoint, tmp_path):
    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    bucket = "s3://key:secret@videos"
    fs, _ = pafs.FileSystem.from_uri(bucket + q + "&allow_bucket_creation=true")
    fs.create_dir("videos")
    for k in range(2):
        local = str(tmp_path / f"v{k}.mp4")
        make_video(local, [Scene(36, 2, k), Scene(36, 3, k + 9)], 96, 64, 24.0)
        pafs.copy_files(local, f"videos/raw/v{k}.mp4", destination_filesystem=fs)
    inputs = expand_inputs([f"{bucket}/raw/*.mp4{q}"])
    assert len(inputs) == 2 and all(i.endswith(q) for i in inputs)
    assert video_id_for(inputs[0]) == video_id_for("s3://videos/raw/v0.mp4")
    p = tmp_path / "p.yaml"
    p.write_text(f"root: '{bucket}/root{q}'\ninputs: ['{bucket}/raw/*.mp4{q}']\nray: {{progress: false}}\n"
                 "split: {min_clip_s: 1.0}\n")
    cfg = load_config(str(p))
    run_stages(cfg, ["probe", "split"])
    st = Storage(cfg.root)
    assert not st.is_local
    videos = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    assert [v["error"] for v in videos] == [None, None]
    clips = tables.read_table(st, "clips", tables.CLIPS).to_pylist()
    assert sorted(c["start_frame"] for c in clips) == [0, 0, 36, 36]
    assert all(c["status"] == "ok" and st.exists(c["path"]) for c in clips)
    assert fs.get_file_info(f"videos/root/{clips[0]['path']}").size == clips[0]["bytes"]
