"""End-to-end curation throughput on a real multi-node Ray cluster on this machine.

    .venv/bin/python bench/pipeline.py [--nodes 1,2] [--data synth,real] [--cpus 1] [--out results.json]

For each worker-node count (curation.local_cluster: a head without CPUs + N worker raylets) and each
input set (synthetic videos; real third-party videos from ../shared/testdata), it runs the whole flow
probe -> split -> filter -> caption -> shard twice on fresh roots:

  stages alone   `run_stages`: each stage its own Ray Data pipeline, one after the other (as
                 `python -m vidcurate run` does): the sum of the stages run alone
  streamed       one Ray Data pipeline probe -> split -> filter.decode -> filter.score ->
                 caption-frames -> caption, each step writing its table as it goes (so the result is
                 the same dataset), then the shard stage (its plan needs every kept clip)

and prints clips/s of both (the ratio is the overlap gained by streaming), the streamed wall time
against the slowest stage alone (the bound of any overlap), the per-step breakdown of
the streamed run from the stage accounting (busy s, CPU s per clip, utilisation, queue waits, bytes
per clip, bottleneck share), and the storage bytes moved per clip. The peer of every number is the
other mode measured in the same run on the same cluster. Models are the tiny offline ones (random
weights): CLIP and caption costs here are not those of ViT-L-14 or a 7B VLM (docs/scaling-curation.md).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from curation import accounting, tables  # noqa: E402
from curation.stage import Stage  # noqa: E402
from curation.storage import Storage  # noqa: E402

REAL = ["sintel/test_clip_10s.mp4", "bbb/*.mp4", "decord/flipping_a_pancake.mkv"]
STEPS = ["probe", "split", "filter.decode", "filter.score", "caption-frames", "caption", "shard"]


def synth_inputs(folder: str, n: int) -> list[str]:
    """n videos of 3 scenes (two moving, one still) at 320x180, 24 fps, 2 s each."""
    from curation.synth import Scene, make_video

    os.makedirs(folder, exist_ok=True)
    out = []
    for k in range(n):
        p = os.path.join(folder, f"synth{k}.mp4")
        make_video(p, [Scene(48, 2.5, 3 * k), Scene(48, 0.0, 3 * k + 1), Scene(48, 1.5, 3 * k + 2)], 320, 180, 24.0)
        out.append(p)
    return out


def real_inputs() -> list[str]:
    td = os.environ.get("VIDEO_TESTDATA", os.path.join(REPO, "..", "shared", "testdata"))
    found = sorted(p for pat in REAL for p in glob.glob(os.path.join(td, pat)))
    if not found:
        raise SystemExit(f"no real test videos under {td} (set VIDEO_TESTDATA or use --data synth)")
    return found


def step_cpus(cpus: float) -> tuple[float, float]:
    """Ray CPUs of each task step and of each actor so that one worker of every step of the streamed
    flow fits on one worker node at once: 4 task steps (probe, split, filter decode, caption frames)
    + 2 actor steps (CLIP scorer, captioner) at half a task's share. With each step asking for a whole
    CPU (the defaults) the actors alone fill a 1-CPU node and no task can start: the flow stalls
    (a streamed run waited 574 s in the filter stage). Actors get a different share than tasks so Ray
    Data never fuses a decode step into an actor."""
    task = round(cpus / 5, 4)
    return task, round(task / 2, 4)


def write_cfg(folder: str, inputs: list[str], models: str, cpus: float = 1, nodes: int = 1) -> str:
    task, actor = step_cpus(cpus)
    t = f"{{num_cpus: {task}, batch_size: 1}}"
    a = f"{{num_cpus: {actor}, workers: {nodes}, batch_size: 4}}"
    p = os.path.join(folder, "pipelines.yaml")
    with open(p, "w") as f:
        f.write(f"root: {folder}/root\ninputs: {json.dumps(inputs)}\n"
                "ray: {progress: false, shared_root: true}\n"  # one machine: every node sees the same disk
                f"probe: {{resources: {t}}}\n"
                f"split: {{min_clip_s: 1.0, resources: {t}}}\n"  # production clip size: fit 1280x720
                f"demo: {{models: {models}}}\nfilter:\n  clip: {{model: {models}/tiny-clip}}\n"
                f"  decode: {{resources: {t}}}\n  model: {{resources: {a}}}\n"
                "  scorers:\n    motion: {type: motion, thresholds: {mean: {min: 0.01}}}\n"
                f"    aesthetic: {{type: aesthetic, weights: {models}/tiny-aesthetic.safetensors}}\n"
                f"caption: {{model: {models}/tiny-vlm, max_tokens: 16, max_frames: 4, max_side: 224, sink_every: 4,\n"
                f"          frames: {{resources: {{num_cpus: {task}, batch_size: 4}}}}, resources: {a}}}\n"
                f"shard: {{writer: {{max_samples_per_shard: 8, resources: {{num_cpus: {task}}}}}}}\n")
    return p


# ------------------------------------------------------------------------------------- streamed flow
class Tee(Stage):
    """Runs `inner`, writes its output rows as a part of `table` (the same dataset as a staged run), and
    passes on the rows `keep` selects, reshaped by `shape` for the next step."""

    def __init__(self, inner: Stage, root: str, table: str | None, schema, keep=None, shape=None) -> None:
        super().__init__(inner.resources)
        self.inner, self.root, self.table, self.schema = inner, root, table, schema
        self.keep, self.shape = keep or (lambda r: True), shape or (lambda st, r: r)
        self.name, self.stateful = inner.name, inner.stateful

    def setup(self) -> None:
        self.inner.ensure_setup()
        self.storage = Storage(self.root)

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.ensure_setup()
        out = self.inner(rows)
        if self.table:
            tables.write_part(self.storage, self.table, out, self.schema)
        return [self.shape(self.storage, r) for r in out if self.keep(r)]


def flow_steps(cfg) -> tuple[list[Stage], dict]:
    """The steps of the streamed flow (each stage's worker object, teed to its table) and its sink."""
    from captioning.stage import Caption, SampleFrames, prepare_model
    from captioning.table import CAPTIONS, normalize, table_name
    from curation.filter import BASE_FIELDS, build_stages, ensure_demo_models, scores_schema
    from curation.probe import ProbeStage
    from curation.split import SplitStage
    from curation.stage import StageResources
    from curation.storage import expand_inputs

    st = Storage(cfg.root)
    ensure_demo_models(cfg.filter, cfg.demo.models)
    ccfg = prepare_model(cfg.caption, cfg.demo.models)
    dec, sco, scorers = build_stages(st.root, cfg.filter)
    base = [k for k, _ in BASE_FIELDS]
    steps = [
        Tee(ProbeStage(cfg.probe.count_frames, StageResources.from_config(cfg.probe.resources)), st.root, "videos",
            tables.VIDEOS, keep=lambda r: not r.get("error"),
            shape=lambda s, r: {"video_id": r["video_id"], "source": r["source"], "fps": r["fps"]}),
        Tee(SplitStage(cfg.split, st.root, StageResources.from_config(cfg.split.resources)),
            st.root, "clips", tables.CLIPS, keep=lambda r: r["status"] == "ok",
            shape=lambda s, r: {k: r.get(k) for k in base}),
        dec,
        Tee(sco, st.root, "scores", scores_schema(scorers, {"filter.config": cfg.filter.model_dump_json()}),
            keep=lambda r: bool(r.get("passed")),
            shape=lambda s, r: {"clip_id": r["clip_id"], "path": s.uri(r["path"]),
                                "duration_s": (r["end_s"] - r["start_s"]) if r.get("end_s") else None}),
        SampleFrames(ccfg), Caption(ccfg)]
    counts = {"captions": 0}

    def sink(rows: list[dict]) -> None:
        tables.write_part(st, table_name(ccfg.run), [normalize(r) for r in rows], schema=CAPTIONS)
        counts["captions"] += len(rows)

    return steps, {"sink": sink, "counts": counts, "items": [{"source": s} for s in expand_inputs(cfg.inputs)]}


def streamed(cfg) -> dict:
    """The flow as one Ray Data pipeline (+ the shard stage); returns counts, seconds, accounting."""
    from curation.pipeline import RunContext
    from curation.runner import run_pipeline
    from shards.writer import run as shard_run

    steps, f = flow_steps(cfg)
    st, ccfg, sink, counts, items = Storage(cfg.root), cfg.caption, f["sink"], f["counts"], f["items"]
    events: list[dict] = []
    t0 = time.time()
    run_pipeline(items, steps, sink, sink_every=ccfg.sink_every, progress=False, events=events)
    flow_s = time.time() - t0
    flow_acct = accounting.summarize(events)
    t1 = time.time()
    ctx = RunContext(cfg, st)
    shard = shard_run(cfg, ctx)
    shard_s = time.time() - t1
    return {"seconds": flow_s + shard_s, "flow_s": flow_s, "shard_s": shard_s, "counts": counts,
            "samples": shard["samples"], "accounting": flow_acct,
            "shard_accounting": accounting.summarize(ctx.events)}


def solo(cfg) -> dict:
    """Every step alone in this process, one after the other over all rows (no Ray): per step wall
    and CPU seconds. The floor of each step's cost, free of Ray's scheduling and start-up."""
    from shards.writer import write_shards

    steps, f = flow_steps(cfg)
    rows, out = f["items"], {}
    for stp in steps:
        stp.ensure_setup()
        t0, c0 = time.perf_counter(), time.process_time()
        nxt = []
        for i in range(0, len(rows), max(1, stp.resources.batch_size)):
            nxt.extend(stp(rows[i:i + max(1, stp.resources.batch_size)]))
        out[stp.name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                         "rows_in": len(rows), "rows_out": len(nxt)}
        rows = nxt
    f["sink"](rows)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = write_shards(Storage(cfg.root), cfg.shard.writer, "solo", local=True)
    out["shard"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                    "rows_in": stats["kept"], "rows_out": stats["samples"]}
    return {"steps": out, "samples": stats["samples"], "seconds": sum(v["wall_s"] for v in out.values())}


def staged(cfg) -> dict:
    from curation.pipeline import run_stages

    t0 = time.time()
    ctx = run_stages(cfg, ["probe", "split", "filter", "caption", "shard"])
    return {"seconds": time.time() - t0, "stages": {k: v["seconds"] for k, v in ctx.stages.items()},
            "accounting": {k: v.get("accounting", {}) for k, v in ctx.stages.items()},
            "samples": ctx.stages["shard"]["counts"]["samples"]}


def storage_bytes(root: str) -> dict:
    st = Storage(root)
    vids = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    clips = [c for c in tables.read_table(st, "clips", tables.CLIPS).to_pylist() if c["status"] == "ok"]
    return {"videos": len(vids), "clips": len(clips), "video_bytes": sum(v["bytes"] or 0 for v in vids),
            "clip_bytes": sum(c["bytes"] or 0 for c in clips),
            "video_s": sum(v["duration_s"] or 0 for v in vids),
            "clip_s": sum((c["end_s"] or 0) - (c["start_s"] or 0) for c in clips)}


def run_case(nodes: int, cpus: float, data: str, inputs: list[str], models: str, work: str) -> dict:
    from vidcurate.flow import load_config

    res: dict = {"nodes": nodes, "cpus_per_node": cpus, "data": data, "inputs": len(inputs)}
    for mode, fn in (("staged", staged), ("streamed", streamed)):
        folder = os.path.join(work, f"{data}-{nodes}-{mode}")
        os.makedirs(folder)
        cfg = load_config(write_cfg(folder, inputs, models, cpus, nodes))
        res[mode] = fn(cfg)
        res[mode]["storage"] = storage_bytes(cfg.root)
    return res


# ------------------------------------------------------------------------------------------- report
def report(r: dict) -> None:
    s, f = r["staged"], r["streamed"]
    clips = f["storage"]["clips"]
    print(f"\n== {r['data']} videos ({r['inputs']}), {r['nodes']} worker node(s) x {r['cpus_per_node']} CPU: "
          f"{clips} clips, {f['samples']} shard samples (staged: {s['storage']['clips']} clips, {s['samples']} samples)")
    print(f"  stages alone (sum): {s['seconds']:7.1f} s  {s['storage']['clips'] / s['seconds']:.3f} clips/s   "
          + ", ".join(f"{k} {v:.1f}s" for k, v in s["stages"].items()))
    print(f"  streamed          : {f['seconds']:7.1f} s  {clips / f['seconds']:.3f} clips/s   "
          f"(flow {f['flow_s']:.1f}s + shard {f['shard_s']:.1f}s)")
    print(f"  streamed / stages alone: {s['seconds'] / f['seconds']:.2f}x clips/s (the overlap gained by streaming)")
    slow = max(s["stages"], key=s["stages"].get)  # the bound: a stream is never faster than its slowest stage
    print(f"  streamed / slowest stage alone ({slow} {s['stages'][slow]:.1f}s): "
          f"{f['seconds'] / s['stages'][slow]:.2f}x wall time (1.0 = perfect overlap; stages alone: "
          f"{s['seconds'] / s['stages'][slow]:.2f}x)")
    steps = dict(f["accounting"].get("steps", {}))
    steps.update({k: v for k, v in f["shard_accounting"].get("steps", {}).items() if k != "sink"})
    print(f"  {'step':15s} {'workers':>7s} {'busy s':>7s} {'CPU s/clip':>10s} {'util':>5s} {'wait s':>7s} "
          f"{'obj KB/clip':>11s} {'bottleneck':>10s}")
    for k, v in steps.items():
        print(f"  {k:15s} {v['workers']:7d} {v['busy_s']:7.2f} {v['cpu_s'] / max(clips, 1):10.3f} "
              f"{100 * v['utilization']:4.0f}% {v['queue_wait_mean_s']:7.2f} "
              f"{v['bytes_in'] / 1024 / max(clips, 1):11.1f} {100 * v.get('bottleneck_share', 0):9.0f}%")
    b = f["storage"]
    print(f"  storage: {b['video_bytes'] / 1e6:.1f} MB of video ({b['video_s']:.0f} s) -> {b['clip_bytes'] / 1e6:.1f} MB "
          f"of clips ({b['clip_s']:.0f} s); per clip: {b['video_bytes'] / max(clips, 1) / 1e3:.0f} KB source, "
          f"{b['clip_bytes'] / max(clips, 1) / 1e3:.0f} KB clip")


def run_solo(inputs: dict, models: str, work: str, out: str | None) -> None:
    from vidcurate.flow import load_config

    results = []
    for data, paths in inputs.items():
        folder = os.path.join(work, f"{data}-solo")
        os.makedirs(folder)
        cfg = load_config(write_cfg(folder, paths, models))
        r = solo(cfg)
        r["storage"] = storage_bytes(cfg.root)
        clips = r["storage"]["clips"]
        print(f"\n== {data} videos ({len(paths)}), every step alone in one process: {clips} clips, "
              f"{r['samples']} samples, {r['seconds']:.1f} s = {clips / r['seconds']:.3f} clips/s")
        print(f"  {'step':15s} {'rows in':>7s} {'wall s':>7s} {'CPU s':>7s} {'CPU s/clip':>10s}")
        for k, v in r["steps"].items():
            print(f"  {k:15s} {v['rows_in']:7d} {v['wall_s']:7.2f} {v['cpu_s']:7.2f} {v['cpu_s'] / max(clips, 1):10.3f}")
        b = r["storage"]
        print(f"  storage: {b['video_bytes'] / 1e6:.2f} MB video ({b['video_s']:.0f} s) -> {b['clip_bytes'] / 1e6:.2f} MB "
              f"clips ({b['clip_s']:.0f} s, {clips} clips)")
        results.append({"data": data, **r})
    if out:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,2", help="worker-node counts to run, comma-separated")
    ap.add_argument("--cpus", type=float, default=1, help="CPUs of each worker node")
    ap.add_argument("--data", default="synth", help="input sets, comma-separated: synth (default: a few minutes on 2 "
                    "cores), real (the third-party test videos: much longer)")
    ap.add_argument("--videos", type=int, default=4, help="synthetic videos")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--solo", action="store_true", help="only run every step alone in this process (no Ray): "
                    "per step CPU s per clip")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from captioning.tiny_vlm import build_tiny_qwen25_vl
    from curation.filters.make_tiny import make_tiny
    from curation.local_cluster import LocalCluster

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        models = os.path.join(work, "models")
        make_tiny(models)
        build_tiny_qwen25_vl(os.path.join(models, "tiny-vlm"))
        sets = {"synth": lambda: synth_inputs(os.path.join(work, "synth"), args.videos), "real": real_inputs}
        inputs = {d: sets[d]() for d in args.data.split(",")}
        if args.solo:
            return run_solo(inputs, models, work, args.out)
        counts = sorted(int(n) for n in args.nodes.split(","))
        cluster = LocalCluster(workers=counts[0], cpus=args.cpus)  # grown node by node: one start-up
        try:
            cluster.connect(REPO)
            for nodes in counts:
                while len(cluster.c.worker_nodes) < nodes:
                    cluster.add_worker()
                for data, paths in inputs.items():
                    r = run_case(nodes, args.cpus, data, paths, models, work)
                    report(r)
                    results.append(r)
                    if args.out:  # after every case: a long run that breaks off keeps what it measured
                        with open(args.out, "w") as fh:
                            json.dump(results, fh, indent=1, default=str)
        finally:
            cluster.shutdown()
    for data in inputs:
        by = {r["nodes"]: r for r in results if r["data"] == data}
        if 1 in by and 2 in by:
            one, two = (by[n]["streamed"]["seconds"] for n in (1, 2))
            print(f"{data}: 2 worker nodes / 1 (streamed): {one / two:.2f}x clips/s")


if __name__ == "__main__":
    main()
