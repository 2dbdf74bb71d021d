"""`python -m vidcurate demo pipelines.yaml`: the whole flow in one command, quiet, ending with where
everything is (the README's first command, on a copy of the repository's pipelines.yaml)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.heavy
def test_demo_runs_the_whole_flow_to_a_sampled_video(tmp_path):
    import av

    cfg = tmp_path / "pipelines.yaml"  # relative root/inputs/model paths land under tmp_path
    shutil.copy(os.path.join(REPO, "pipelines.yaml"), cfg)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vidcurate", "demo", str(cfg), "--set", "ray.num_cpus=2",
                        "--set", f"caption.model={tmp_path / 'data' / 'models' / 'tiny-qwen25-vl'}"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    root = tmp_path / "data" / "demo"
    # the end of the run says where everything is, and every path it names exists
    tail = out[out.index("[demo] done"):]
    for label in ("tables", "report", "checkpoints", "exports", "sample"):
        assert re.search(rf"^\s+{label}\s", tail, re.M), tail
    named = re.findall(r"(/[^\s,()']+)", tail)
    assert named and all(os.path.exists(p) for p in named), [p for p in named if not os.path.exists(p)]
    sample = root / "samples" / "sample_000.mp4"
    with av.open(str(sample)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    assert (root / "training" / "vae" / "export" / "vae" / "config.json").exists()
    assert (root / "training" / "transformer" / "export" / "transformer" / "config.json").exists()
    # quiet: Ray's own log lines are in the run's log file, not on the console
    assert not re.search(r"^\S* ?(INFO|WARNING) \S+\.py:\d+ --", out, re.M), out[-4000:]
    # nor Ray's C++ warning about actor arguments, nor transformers' bar while the tiny models are saved
    assert "has constructor arguments in the object store" not in out and "Writing model shards" not in out, out[-4000:]
    assert "summary of run" in out and list((root / "runs").glob("*.log"))
