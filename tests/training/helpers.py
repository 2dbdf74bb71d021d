"""Shared helpers of the training tests: a minimal pipelines.yaml and reading metrics.jsonl."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_config(folder: str, training: dict, **sections) -> str:
    """A pipelines.yaml whose dataset root is `folder`/data, with the given training section."""
    cfg = {"root": os.path.join(folder, "data"), "inputs": [os.path.join(folder, "raw", "*.mp4")],
           "training": training, **sections}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pipelines.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def losses(run_dir: str) -> dict[int, float]:
    """step -> loss from a run's metrics.jsonl (the last line of a step wins, as after a resume)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out


def run_cli(args: list[str], nproc: int = 1, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m training ...` (nproc 1) or `torchrun --nproc_per_node N -m training ...` in a subprocess."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, "-m", "training", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "training", *args]
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)
