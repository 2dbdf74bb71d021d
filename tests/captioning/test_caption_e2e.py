"""The caption stage inside the real pipeline: probe -> split -> filter -> caption on Ray, with the
transformers engine (heavy) and through a real `vllm serve` (vllm)."""
from __future__ import annotations

import os

import pytest

from captioning.table import read_captions
from curation import tables
from vidcurate.flow import load_config
from curation.pipeline import run_stages
from curation.storage import Storage
from curation.synth import Scene, make_video


def pipeline_cfg(tmp_path, caption: str) -> str:
    """Two videos: a moving shot + a still shot each (the motion filter drops the still ones)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(2):
        make_video(str(raw / f"v{k}.mp4"), [Scene(36, 2.5, k), Scene(36, 0.0, k + 50)], 128, 80, 12.0)
    p = tmp_path / "pipelines.yaml"
    p.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\nray: {{num_cpus: 2, progress: false}}\n"
                 "split: {min_clip_s: 1.0}\n"
                 "filter: {scorers: {motion: {type: motion, thresholds: {mean: {min: 0.01}}}}}\n"
                 f"caption: {caption}\n")
    return str(p)


def check_one_row_per_kept_clip(cfg) -> list[dict]:
    st = Storage(cfg.root)
    scores = tables.read_table(st, "scores").to_pylist()
    kept = {r["clip_id"] for r in scores if r["passed"]}
    assert 0 < len(kept) < len(scores)  # the still shots were dropped
    rows = read_captions(st, cfg.caption.run).to_pylist()
    assert sorted(r["clip_id"] for r in rows) == sorted(kept)
    assert all(r["error"] is None and r["text"] is not None and r["tokens_out"] > 0 for r in rows)
    return rows


@pytest.mark.heavy
def test_pipeline_to_captions_on_ray_with_transformers(ray_local, tiny_vlm, tmp_path):
    cfg = load_config(pipeline_cfg(tmp_path, f"{{model: {tiny_vlm}, max_tokens: 8, max_frames: 4, max_side: 112, "
                                             "resources: {num_cpus: 1, workers: 1, batch_size: 4}}"))
    ctx = run_stages(cfg, ["probe", "split", "filter", "caption"])
    rows = check_one_row_per_kept_clip(cfg)
    assert ctx.stages["caption"]["counts"]["clips"] == len(rows)
    again = run_stages(cfg, ["caption"]).stages["caption"]["counts"]
    assert again["skipped"] == len(rows) and again["errors"] == 0


@pytest.mark.vllm
def test_pipeline_to_captions_through_vllm_serve(ray_local, tiny_vlm, tmp_path):
    from captioning.servers import start_vllm_server, vllm_available

    if not vllm_available():
        (pytest.fail if os.environ.get("VIDCURATE_REQUIRE_VLLM") else pytest.skip)("no .venv-vllm")
    server = start_vllm_server(tiny_vlm, str(tmp_path / "serve.log"))
    try:
        cfg = load_config(pipeline_cfg(tmp_path, f"{{engine: openai, model: {server.model}, max_tokens: 16, "
                                                 f"max_frames: 4, max_side: 112, openai: {{base_url: '{server.base_url}'}}}}"))
        run_stages(cfg, ["probe", "split", "filter", "caption"])
    finally:
        server.stop()
    rows = check_one_row_per_kept_clip(cfg)
    assert all(r["engine"] == "openai" and r["model"] == "tiny" for r in rows)


@pytest.mark.heavy
def test_recaption_shards_on_ray(ray_local, tiny_vlm, clip_root, tmp_path):
    """Shard samples cross Ray Data's batches (nulls become NaN there): 3 clips captioned, a JPEG named
    .mp4 is an error row by key, and the new shard carries the new captions."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from captioning.config import CaptionConfig
    from captioning.recaption import recaption

    root, ids = clip_root
    shard = tmp_path / "shard-000000.tar"
    jpg = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpg, format="JPEG")
    with tarfile.open(shard, "w") as t:
        for cid in ids[:3]:
            t.add(Storage(root).path(f"clips/vid0/{cid}.mp4"), f"{cid}.mp4")
        info = tarfile.TarInfo("still.mp4")
        info.size = len(jpg.getvalue())
        t.addfile(info, io.BytesIO(jpg.getvalue()))
    cfg = CaptionConfig(run="shards-v2", model=tiny_vlm, max_tokens=8, max_frames=2, max_side=112, retry_bad=0,
                        resources={"num_cpus": 1, "workers": 1, "batch_size": 2})
    c = recaption(str(tmp_path / "out-root"), cfg, [str(shard)], str(tmp_path / "out"))
    assert (c["captioned"] + c["flagged"], c["unreadable"], c["errors"]) == (3, 1, 0)
    rows = {r["clip_id"]: r for r in read_captions(Storage(str(tmp_path / "out-root")), "shards-v2").to_pylist()}
    assert rows["still"]["error"].startswith("frames: ") and "still" in rows["still"]["error"]
    with tarfile.open(tmp_path / "out" / shard.name) as t:
        assert t.extractfile(f"{ids[0]}.txt").read().decode() == rows[ids[0]]["text"]


@pytest.mark.heavy
def test_pipeline_frames_then_summary_and_enhance_on_ray(ray_local, tiny_vlm, tiny_lm, tmp_path):
    """The three steps of frames_then_summary as Ray Data operators (frame captions cross pandas batches),
    then caption.enhance into a second run; both runs one row per kept clip; a re-run redoes nothing."""
    lm = f"{{model: {tiny_lm}, max_tokens: 8, resources: {{num_cpus: 0.25, workers: 1, batch_size: 2}}}}"
    caption = (f"{{model: {tiny_vlm}, mode: frames_then_summary, max_tokens: 6, max_side: 112, retry_bad: 0, "
               f"summary: {lm[:-1]}, keyframe_every_s: 1.0}}, enhance: {lm[:-1]}, enabled: true}}, "
               "resources: {num_cpus: 0.5, workers: 1, batch_size: 4}}")  # 2-CPU Ray: leave a CPU for the frame tasks
    cfg = load_config(pipeline_cfg(tmp_path, caption))
    ctx = run_stages(cfg, ["probe", "split", "filter", "caption"])
    rows = check_one_row_per_kept_clip(cfg)
    assert all(r["mode"] == "frames_then_summary" and len(r["frame_captions"]) >= 2 for r in rows)
    assert all(f["t_s"] == pytest.approx(i, abs=0.1) for r in rows for i, f in enumerate(r["frame_captions"]))
    enh = read_captions(Storage(cfg.root), "default-enhanced").to_pylist()
    assert sorted(r["clip_id"] for r in enh) == sorted(r["clip_id"] for r in rows)
    assert all(r["mode"] == "enhance" and r["error"] is None and r["source_run"] == "default" for r in enh)
    assert ctx.stages["caption"]["counts"]["enhance"]["clips"] == len(rows)
    again = run_stages(cfg, ["caption"]).stages["caption"]["counts"]
    assert again["skipped"] == len(rows) and again["enhance"]["skipped"] == len(rows)
