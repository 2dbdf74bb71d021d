"""Running stages: the registry, the run context and the run manifest.

Each stage module exposes `run(cfg, ctx) -> dict` (counts). Stages of other packages are named by
import path so `curation` does not import them until they run.
"""
from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

from curation.config import PipelineConfig
from curation.storage import Storage

# Stage name -> "module:function". Order of a full run.
STAGES: dict[str, str] = {
    "probe": "curation.probe:run",
    "split": "curation.split:run",
    "filter": "curation.filter:run",
    "caption": "captioning.stage:run",
    "shard": "shards.writer:run",
}
DEFAULT_STAGES = ["probe", "split", "filter", "caption", "shard"]
_VERSIONED = ["torch", "ray", "av", "scenedetect-headless", "opencv-python-headless", "pyarrow", "transformers",
              "open-clip-torch", "webdataset", "vllm", "numpy", "pydantic"]


@dataclass
class RunContext:
    """What a stage gets besides the config: the root, and the manifest it reports into."""

    cfg: PipelineConfig
    storage: Storage
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + f"-{int(time.time()*1e6)%1000000:06d}")
    stages: dict = field(default_factory=dict)  # stage -> {"counts", "seconds", "errors", "accounting"}

    def manifest(self) -> dict:
        versions = {}
        for p in _VERSIONED:
            try:
                versions[p] = metadata.version(p)
            except metadata.PackageNotFoundError:
                pass
        return {"run_id": self.run_id, "argv": sys.argv, "python": platform.python_version(),
                "versions": versions, "config": self.cfg.model_dump(mode="json"), "stages": self.stages}

    def write_manifest(self) -> str:
        rel = f"runs/{self.run_id}.json"
        self.storage.write_bytes(rel, json.dumps(self.manifest(), indent=2, default=str).encode())
        return rel


def resolve(stage: str):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    mod, fn = STAGES[stage].split(":")
    return getattr(importlib.import_module(mod), fn)


def run_stages(cfg: PipelineConfig, stages: list[str], ctx: RunContext | None = None) -> RunContext:
    """Run the named stages in order on Ray, writing the manifest after each (so a crash keeps it)."""
    from curation import accounting
    from curation.runner import check_root_placement, init_ray

    ctx = ctx or RunContext(cfg, Storage(cfg.root))
    fns = [(s, resolve(s)) for s in stages]  # fail on a bad name before any work
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    check_root_placement(ctx.storage, cfg.ray.shared_root)  # before any work: nothing lands on a node's disk
    accounting.take()  # events of pipelines run outside run_stages are not this run's
    for name, fn in fns:
        t0 = time.time()
        entry = ctx.stages.setdefault(name, {"counts": {}, "errors": []})
        print(f"[{name}] starting", file=sys.stderr, flush=True)
        try:
            entry["counts"] = fn(cfg, ctx) or {}
        except Exception as e:
            entry["errors"].append(f"{type(e).__name__}: {e}")
            entry["seconds"] = round(time.time() - t0, 3)
            entry["accounting"] = accounting.summarize(accounting.take())
            ctx.write_manifest()
            raise
        entry["seconds"] = round(time.time() - t0, 3)
        entry["accounting"] = accounting.summarize(accounting.take())  # per step: busy, waits, rows/s, bottleneck
        path = ctx.write_manifest()
        print(f"[{name}] done in {entry['seconds']:.1f}s: {entry['counts']} (manifest {path})", file=sys.stderr,
              flush=True)
    return ctx
