"""End to end on CPU: synthetic raw videos -> probe/split/filter/caption/shard on Ray -> 2-process FSDP
training of the tiny VAE and transformer from the shards (with an exact-resume check) -> sample mp4."""
from __future__ import annotations

import os

import pytest

from tests.training.helpers import losses, run_cli

TRAINING = """
training:
  out_dir: runs
  log_every: 1
  data: {source: shards}
  optim: {lr: 1.0e-3, warmup_steps: 1}
  checkpoint: {every: 2, keep: 2}
  transformer: {max_text_len: 16, vae: tiny-random, text_encoder: tiny-random}
  sample: {steps: 2, guidance: 3.0}
"""


@pytest.mark.heavy
def test_raw_videos_to_trained_checkpoint_and_sample(ray_local, tmp_path):
    from captioning.tiny_vlm import build_tiny_qwen25_vl
    from vidcurate.flow import load_config
    from curation.pipeline import run_stages
    from curation.synth import Scene, make_video

    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):  # a moving shot + a still shot each; the motion filter drops the still ones
        make_video(str(raw / f"v{k}.mp4"), [Scene(36, 2.5, k), Scene(36, 0.0, k + 50)], 128, 80, 12.0)
    vlm = build_tiny_qwen25_vl(str(tmp_path / "vlm"))
    cfg_path = tmp_path / "pipelines.yaml"
    cfg_path.write_text(
        f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\nray: {{num_cpus: 2, progress: false}}\n"
        "split: {min_clip_s: 1.0}\n"
        "filter: {scorers: {motion: {type: motion, thresholds: {mean: {min: 0.01}}}}}\n"
        f"caption: {{model: {vlm}, max_tokens: 8, max_frames: 4, max_side: 112, "
        "resources: {num_cpus: 1, workers: 1, batch_size: 4}}\n"
        "shard: {writer: {max_samples_per_shard: 1, drop_caption_flags: []}, loader: {num_workers: 0, batch_size: 1, fps: 8.0, "
        "buckets: [{frames: 9, height: 32, width: 48}]}}\n" + TRAINING)
    cfg = load_config(str(cfg_path))
    run_stages(cfg, ["probe", "split", "filter", "caption", "shard"])
    shards = os.listdir(tmp_path / "root" / "shards" / "default")
    assert len([s for s in shards if s.endswith(".tar")]) >= 2  # one per rank at least

    runs = tmp_path / "root" / "runs"
    r = run_cli([str(cfg_path), "--task", "vae", "--set", "training.steps=2"], nproc=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (runs / "vae" / "checkpoints" / "step_00000002" / "meta.json").exists()
    assert (runs / "vae" / "export" / "vae" / "diffusion_pytorch_model.safetensors").exists()

    # transformer: uninterrupted 4 steps, vs 2 steps + resume to 4 in another run folder (same shards)
    r = run_cli([str(cfg_path), "--task", "transformer", "--set", "training.steps=4"], nproc=2)
    assert r.returncode == 0, r.stderr[-4000:]
    ref = losses(str(runs / "transformer"))
    for stop in ("training.stop_at=2", "training.stop_at=4"):
        r = run_cli([str(cfg_path), "--task", "transformer", "--set", "training.steps=4", "--set", stop,
                     "--set", "training.out_dir=resumed"], nproc=2)
        assert r.returncode == 0, r.stderr[-4000:]
    assert "resumed from" in r.stdout
    assert losses(str(tmp_path / "root" / "resumed" / "transformer")) == ref

    r = run_cli(["sample", "--checkpoint", str(runs / "transformer"), "--prompt", "a moving square",
                 "--out", str(tmp_path / "samples"), "--steps", "2"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "samples" / "sample_000.mp4").stat().st_size > 0
