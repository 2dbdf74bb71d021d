"""Running stages: the run context, the run manifest and running stages in order.

A stage is a curation.table_stage.TableStage class (the framework resumes, sinks, counts and records
errors), or a function `run(cfg, ctx) -> dict` (counts) for whole-table work. Which stages exist, and in what order, is
the config's: `type(cfg).SECTIONS` (curation.config.Section), so this module names none of them.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata

from curation import cluster, retry, tables
from curation.config import BaseConfig
from curation.console import Console
from curation.lease import Leases
from curation.storage import Storage
from curation.table_stage import TableStage
from curation.tables import QUARANTINED
from curation.uris import redact, scrub_obj

_VERSIONED = ["torch", "ray", "av", "scenedetect-headless", "opencv-python-headless", "pyarrow", "transformers",
              "open-clip-torch", "webdataset", "vllm", "numpy", "pydantic"]


@dataclass
class RunContext:
    """What a stage gets besides the config: the root, and the manifest it reports into."""

    cfg: BaseConfig
    storage: Storage
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + f"-{int(time.time()*1e6)%1000000:06d}")
    stages: dict = field(default_factory=dict)  # stage -> {"counts", "seconds", "errors", "accounting"}
    log_path: str | None = None  # local file with Ray's own logging of this run (runs/<run_id>.log in the root)
    wait: bool = False  # another run holds a stage's lease: wait for it (True) or refuse (curation/lease.py)
    leases: object = None  # curation.lease.Leases held by this run (taken in run_stages)
    console: Console = field(default_factory=Console)  # where Ray's own output goes during this run
    events: list = field(default_factory=list)  # accounting events of the running stage's pipelines (accounting.py)

    def manifest(self) -> dict:
        versions = {}
        for p in _VERSIONED:
            try:
                versions[p] = metadata.version(p)
            except metadata.PackageNotFoundError:
                pass
        # No credentials in the manifest: every URI in argv, config and errors is redacted.
        return scrub_obj({"run_id": self.run_id, "argv": sys.argv, "python": platform.python_version(),
                          "versions": versions, "config": self.cfg.model_dump(mode="json"), "stages": self.stages,
                          **_fault_records(self)})

    def write_manifest(self) -> str:
        rel = f"runs/{self.run_id}.json"
        self.storage.write_bytes(rel, json.dumps(self.manifest(), indent=2, default=str).encode())
        return rel


def stage_names(cfg: BaseConfig | type[BaseConfig]) -> list[str]:
    """The stages of a config's model, in run order (a full run)."""
    return [s.key for s in cfg.SECTIONS if s.stage]


def resolve(cfg: BaseConfig, stage: str):
    """The run function of `stage`, imported from its section's "module:name": a function run(cfg, ctx),
    or a curation.table_stage.TableStage class (run by the framework: TableStage.run)."""
    targets = {s.key: s.stage for s in cfg.SECTIONS if s.stage}
    if stage not in targets:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(targets)}")
    mod, name = targets[stage].split(":")
    target = getattr(importlib.import_module(mod), name)
    return target.run if isinstance(target, type) and issubclass(target, TableStage) else target


def run_stages(cfg: BaseConfig, stages: list[str], ctx: RunContext | None = None,
               verbose: bool = False) -> RunContext:
    """Run the named stages in order on Ray, writing the manifest after each (so a crash keeps it).

    The console shows one progress bar per stage and a summary at the end; Ray's own logging goes to
    runs/<run_id>.log under the root unless `verbose`."""
    ctx = ctx or RunContext(cfg, Storage(cfg.root))
    fns = [(s, resolve(cfg, s)) for s in stages]  # fail on a bad name before any work
    ctx.log_path = ctx.storage.local_path(f"runs/{ctx.run_id}.log") or os.path.join(
        tempfile.gettempdir(), f"vidcurate-{ctx.run_id}.log")
    ctx.console.open(ctx.log_path, verbose)

    tables.new_run(ctx.storage)  # part numbers continue after whatever another process wrote meanwhile

    retry.take()  # retries of this run only
    refused = False
    try:
        try:  # one owner per root and stage, before any work (curation/lease.py)
            _take_leases(ctx, stages)
        except ValueError:
            refused = True
            raise
        cluster.init_ray(cfg.ray.address, cfg.ray.num_cpus, ctx.console)
        # before any work: on a multi-node cluster nothing may land on one node's disk
        try:
            cluster.check_root_placement(ctx.storage, cfg.ray.shared_root)
        except ValueError:
            refused = True  # nothing of this run may stay in the refused folder, not even its log or lease
            raise
        ctx.events.clear()
        for name, fn in fns:
            _run_one(cfg, ctx, name, fn)
    finally:
        if ctx.leases is not None:
            ctx.leases.release()
        ctx.console.close()
        if refused:
            _drop_local_log(ctx)
        else:
            _keep_log(ctx)
        print(summary(ctx), file=sys.stderr, flush=True)
    return ctx


def _run_one(cfg: BaseConfig, ctx: RunContext, name: str, fn) -> None:
    t0 = time.time()
    entry = ctx.stages.setdefault(name, {"counts": {}, "errors": []})
    try:
        entry["counts"] = fn(cfg, ctx) or {}
    except Exception as e:
        entry["errors"].append(f"{type(e).__name__}: {e}")
        entry["failed"] = True
        raise
    finally:
        from curation import accounting

        entry["seconds"] = round(time.time() - t0, 3)
        entry["accounting"] = accounting.summarize(ctx.events)  # per step: busy, waits, rows/s, bottleneck
        ctx.events.clear()
        ctx.write_manifest()
        _keep_log(ctx)


def _take_leases(ctx: RunContext, stages: list[str]) -> None:
    ctx.leases = Leases(ctx.storage, ctx.run_id)
    ctx.leases.acquire(stages, wait=ctx.wait)


def _fault_records(ctx: RunContext) -> dict:
    """The manifest's record of leases (held, taken over from a dead run, lost), quarantined files and retries."""
    out = {"quarantined": list(QUARANTINED),  # damaged files this driver moved aside (curation.tables.quarantine)
           "object_store": retry.snapshot()}  # the driver's object-store retries per call type (curation/retry.py)
    if ctx.leases is not None:
        out["leases"] = ctx.leases.record()
    return out


def _drop_local_log(ctx: RunContext) -> None:
    """Remove the log a refused run opened under a local root, and the folders made for it."""
    if ctx.log_path and os.path.exists(ctx.log_path):
        os.remove(ctx.log_path)
    ctx.log_path = None
    for rel in ("runs", "leases", ""):  # the root last
        d = ctx.storage.local_path(rel)
        try:
            if d:
                os.rmdir(d)  # only when empty: a root that had data keeps it
        except OSError:
            pass


def _keep_log(ctx: RunContext) -> None:
    """An object-store root gets a copy of the local log file after every stage."""
    if ctx.log_path and not ctx.storage.is_local and os.path.exists(ctx.log_path):
        with open(ctx.log_path, "rb") as f:
            ctx.storage.write_bytes(f"runs/{ctx.run_id}.log", f.read())


def error_kind(message: str) -> str:
    """The exception class named in an error message ("src: VideoError: ..." -> VideoError), else "other"."""
    m = re.search(r"\b([A-Z]\w*(?:Error|Exception|Timeout))\b", message)
    return m.group(1) if m else "other"


def summary(ctx: RunContext) -> str:
    """The end-of-run report: counts per stage, errors by kind, where to look for details."""
    tables = {s.key: s.table for s in ctx.cfg.SECTIONS if s.stage}
    lines = [f"summary of run {ctx.run_id} (root {redact(ctx.storage.root)})"]
    kinds: Counter = Counter()
    for name, entry in ctx.stages.items():
        counts = ", ".join(f"{k} {v}" for k, v in entry.get("counts", {}).items() if isinstance(v, (int, float)))
        state = "FAILED" if entry.get("failed") else f"{entry.get('seconds', 0):.1f} s"
        table = tables.get(name)
        where = f"  -> {table.format(cfg=ctx.cfg)}" if table else ""
        lines.append(f"  {name:<8} {state:>8}  {counts or '-'}{where}")
        for e in entry.get("errors", []):
            kinds[(name, error_kind(str(e)))] += 1
    if kinds:
        lines.append("  errors by kind: " + ", ".join(f"{k} {n} ({s})" for (s, k), n in kinds.most_common()))
    else:
        lines.append("  errors: none")
    lines.append(f"  details: runs/{ctx.run_id}.json (manifest), the `error` column of each table above, "
                 f"`python -m vidcurate inspect <root>`; Ray's log: {ctx.log_path}")
    return "\n".join(lines)
