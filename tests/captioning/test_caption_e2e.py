"""The caption stage inside the real pipeline: probe -> split -> filter -> caption on Ray, with the
transformers engine (heavy) and through a real `vllm serve` (vllm)."""
from __future__ import annotations

import os

import pytest

from captioning.table import read_captions
from curation import tables
from curation.config import load_config
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
                 "filter: {demo_models: null, scorers: {motion: {type: motion, thresholds: {mean: {min: 0.01}}}}}\n"
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
