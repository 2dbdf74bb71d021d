"""Latent-cache benchmark: transformer training from the per-clip cache vs encoding on the fly, one run.

    .venv/bin/python bench/cache.py [--steps 10] [--clips 16] [--workdir /tmp/bench-cache]

Builds a synthetic root (clips 256x160, 48 frames at 24 fps) and its shards, then, with the tiny VAE and
tiny T5 of the demo (CPU; a real VAE/T5 makes the encoders' share, so the ratio, much larger):
  fill-1       `python -m training cache` on an empty cache: clips encoded, seconds, bytes per clip
  fill-2       the same again: clips encoded (must be 0), seconds (keying + the plan-only pass)
  on-the-fly   `python -m training --task transformer`, data.source=shards: decode + VAE + T5 every step
  from-cache   the same run with data.source=cache
Step time = median `step_time_s` of metrics.jsonl (data wait included) after 2 warm-up steps; the ratio
on-the-fly / from-cache is printed, and both runs' first-step losses (same weights; different noise
draws, since the cache stores the posterior mean/std and draws noise at train time).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

LOADER = {"num_workers": 1, "batch_size": 2, "fps": 24.0, "random_start": False, "crop": "center",
          "buckets": [{"frames": 17, "height": 128, "width": 192}]}


def build(work: str, clips: int) -> str:
    """The synthetic root with shards; returns the pipelines.yaml path."""
    import yaml

    from curation.storage import Storage
    from shards import demo, writer
    from shards.config import WriterConfig

    root = os.path.join(work, "data")
    demo.build(root, videos=max(1, clips // 4), clips_per_video=4, frames=48, sizes=((256, 160),), exclusions=False)
    writer.write_shards(Storage(root), WriterConfig(max_samples_per_shard=4), "bench", local=True, progress=False)
    cfg = {"root": root, "inputs": [os.path.join(work, "raw", "*.mp4")], "shard": {"loader": LOADER},
           "training": {"log_every": 1000, "checkpoint": {"every": 100000, "export_diffusers": False, "resume": False},
                        "optim": {"warmup_steps": 0},
                        "transformer": {"max_text_len": 32, "vae": "tiny-random", "text_encoder": "tiny-random"}}}
    path = os.path.join(work, "pipelines.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def cli(args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": REPO}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0, p.stdout + p.stderr


def fill(path: str) -> tuple[float, dict]:
    secs, out = cli(["cache", path])
    line = next(x for x in out.splitlines() if x.startswith("[training cache]"))
    return secs, json.loads(line.split(": ", 1)[1].rsplit(" -> ", 1)[0])


def train(path: str, work: str, source: str, steps: int) -> tuple[float, float]:
    out = os.path.join(work, f"run-{source}")
    shutil.rmtree(out, ignore_errors=True)
    cli([path, "--task", "transformer", "--set", f"training.data.source={source}", "--set", f"training.steps={steps}",
         "--set", f"training.out_dir={out}"])
    rows = [json.loads(x) for x in open(os.path.join(out, "transformer", "metrics.jsonl"))]
    return statistics.median(r["step_time_s"] for r in rows[2:]), rows[0]["loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--workdir", default=os.path.join("/tmp", "bench-cache"))
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    path = build(a.workdir, a.clips)
    s1, c1 = fill(path)
    s2, c2 = fill(path)
    cache_dir = os.path.join(a.workdir, "data", "cache", "latents")
    entries = [os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs if f.endswith(".safetensors")]
    lat = sum(os.path.getsize(e) for e in entries if os.path.basename(e).startswith("lat-"))
    txt = sum(os.path.getsize(e) for e in entries if os.path.basename(e).startswith("txt-"))
    mp4 = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(a.workdir, "data", "clips"))
              for f in fs if f.endswith(".mp4"))
    n = c1["clips"]
    t_fly, l_fly = train(path, a.workdir, "shards", a.steps)
    t_cache, l_cache = train(path, a.workdir, "cache", a.steps)
    print(f"{n} clips, bucket {LOADER['buckets'][0]}, batch {LOADER['batch_size']}, tiny VAE + tiny T5 on CPU")
    print(f"  fill-1      {s1:6.1f} s  latents encoded {c1['latents_encoded']}, texts {c1['texts_encoded']}")
    print(f"  fill-2      {s2:6.1f} s  latents encoded {c2['latents_encoded']}, texts {c2['texts_encoded']}, "
          f"reused {c2['reused']}")
    print(f"  bytes/clip  latents {lat / n:,.0f} + text {txt / n:,.0f} (float16)  vs the clip's mp4 {mp4 / n:,.0f}")
    print(f"  step time   on-the-fly {t_fly:.3f} s, from-cache {t_cache:.3f} s: {t_fly / t_cache:.2f}x faster "
          f"(median of {a.steps - 2} steps)")
    print(f"  step-1 loss on-the-fly {l_fly:.4f}, from-cache {l_cache:.4f}")


if __name__ == "__main__":
    main()
