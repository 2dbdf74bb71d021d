"""The whole curation flow on a real multi-node Ray cluster on this machine.

`ray.cluster_utils.Cluster`: a head (the driver's node, no CPUs for work) and two worker nodes, each
its own raylet with its own CPUs and a custom resource, all bound to 127.0.0.1. The dataset root and
the inputs are on a real S3 API server (moto). A worker node is killed in the middle of split and of
filter; the run (or a re-run) must end with every clip exactly once and no half-written file.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time

import av
import pyarrow.fs as pafs
import pytest

from curation import tables
from vidcurate.flow import load_config
from curation.pipeline import run_stages
from curation.storage import Storage
from curation.synth import Scene, make_video

pytestmark = pytest.mark.heavy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAMES = 36  # frames per scene; every video is a moving shot then a still shot (the filter drops the still one)


@pytest.fixture(scope="module")
def cluster():
    import ray

    from curation.local_cluster import LocalCluster

    was_local = ray.is_initialized()
    ray.shutdown()
    lc = LocalCluster(workers=2, cpus=1)
    try:
        lc.connect(REPO)
        yield lc
    finally:
        lc.shutdown()
        if was_local:  # the session's embedded Ray (tests/conftest.py ray_local) for the tests after these
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": {"PYTHONPATH": REPO}})


def s3_dataset(s3_endpoint: str, tmp_path, prefix: str, videos: int) -> tuple[str, str, pafs.FileSystem]:
    """Upload `videos` synthetic videos; return (root URI, inputs glob URI, filesystem)."""
    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    bucket = "s3://key:secret@cluster"
    fs, _ = pafs.FileSystem.from_uri(bucket + q + "&allow_bucket_creation=true")
    fs.create_dir("cluster")
    for k in range(videos):
        local = str(tmp_path / f"{prefix}-v{k}.mp4")
        make_video(local, [Scene(FRAMES, 2.5, k), Scene(FRAMES, 0.0, k + 50)], 128, 80, 12.0)
        pafs.copy_files(local, f"cluster/{prefix}/raw/v{k}.mp4", destination_filesystem=fs)
    return f"{bucket}/{prefix}/root{q}", f"{bucket}/{prefix}/raw/*.mp4{q}", fs


def write_cfg(tmp_path, name: str, root: str, inputs: str) -> str:
    models = tmp_path / "models"
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        f"root: '{root}'\ninputs: ['{inputs}']\nray: {{progress: false}}\n"
        "split: {detector: stride, stride_s: 3.0, min_clip_s: 1.0}\n"  # clips at every 36th frame, exactly
        f"demo: {{models: {models}}}\nfilter:\n  clip: {{model: {models}/tiny-clip}}\n"
        "  decode: {resources: {num_cpus: 0.5}}\n"  # decode + model step fit on one 1-CPU node (after a node is lost)
        "  model: {resources: {num_cpus: 0.5, min_workers: 1, max_workers: 2, batch_size: 2}}\n"
        "  scorers:\n    motion: {type: motion, thresholds: {mean: {min: 0.01}}}\n"
        f"    aesthetic: {{type: aesthetic, weights: {models}/tiny-aesthetic.safetensors}}\n"
        f"caption: {{model: {models}/tiny-vlm, max_tokens: 8, max_frames: 4, max_side: 112, sink_every: 2,\n"
        "          resources: {num_cpus: 0.5, workers: 1, batch_size: 2}}\n"
        "shard: {writer: {max_samples_per_shard: 2}}\n")
    return str(p)


def raw_rows(st: Storage, table: str) -> list[dict]:
    """Every row of every part, without the readers' de-duplication."""
    import pyarrow.parquet as pq

    return [r for p in st.list(table, ".parquet")
            for r in pq.read_table(st.fs.open_input_file(st.path(p))).to_pylist()]


def check_clips(st: Storage, videos: int) -> list[dict]:
    """Each video split into exactly its two scenes, each clip row once, each file whole."""
    vids = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    assert len(vids) == videos and not any(v["error"] for v in vids)
    rows = raw_rows(st, "clips")
    ids = collections.Counter(r["clip_id"] for r in rows)
    assert all(n == 1 for n in ids.values()), f"duplicated clip rows: {[k for k, n in ids.items() if n > 1]}"
    want = {f"{v['video_id']}_{a:07d}_{b:07d}" for v in vids for a, b in ((0, FRAMES), (FRAMES, 2 * FRAMES))}
    assert set(ids) == want
    assert all(r["status"] == "ok" for r in rows)
    files = sorted(p for p in st.walk_files("clips") if p.endswith(".mp4"))
    assert files == sorted(r["path"] for r in rows), "a clip file without its row, or a row without its file"
    for r in rows:  # no half-written file: each decodes to the frames its row says
        with av.open(st.fs.open_input_file(st.path(r["path"]))) as c:
            assert sum(1 for _ in c.decode(video=0)) == r["frames"] == FRAMES
    assert not [p for p in st.walk_files("") if os.path.basename(p).startswith(".tmp-")]
    return rows


def check_scores(st: Storage, clips: list[dict]) -> list[dict]:
    """One error-free score row per clip (a re-run may add one after an error row, never a second good one)."""
    rows = raw_rows(st, "scores")
    good = collections.Counter(r["clip_id"] for r in rows if not r["error"])
    assert all(n == 1 for n in good.values()), f"scored twice: {[k for k, n in good.items() if n > 1]}"
    assert set(good) == {c["clip_id"] for c in clips}
    kept = tables.read_table(st, "scores").to_pylist()
    passed = {r["clip_id"] for r in kept if r["passed"]}
    assert passed == {c["clip_id"] for c in clips if c["start_frame"] == 0}  # the moving shots
    return kept


def test_local_root_is_refused_on_a_multi_node_cluster(cluster, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(str(raw / "v.mp4"), [Scene(24, 2.0, 1)], 96, 64, 12.0)
    p = tmp_path / "local.yaml"
    p.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\nray: {{progress: false}}\n")
    with pytest.raises(ValueError, match=r"is a local folder but the Ray cluster has 3 nodes.*shared_root"):
        run_stages(load_config(str(p)), ["probe", "split"])
    assert not (tmp_path / "root").exists()  # refused before any work


def test_whole_flow_on_s3_across_nodes(cluster, s3_endpoint, tmp_path):
    videos = 4
    root, inputs, _ = s3_dataset(s3_endpoint, tmp_path, "flow", videos)
    cfg = load_config(write_cfg(tmp_path, "flow", root, inputs))
    ctx = run_stages(cfg, ["probe", "split", "filter", "caption", "shard"])
    st = Storage(cfg.root)
    clips = check_clips(st, videos)
    scores = check_scores(st, clips)
    kept = {r["clip_id"] for r in scores if r["passed"]}
    caps = raw_rows(st, f"captions/{cfg.caption.run}")
    assert sorted(r["clip_id"] for r in caps) == sorted(kept)  # one caption row per kept clip
    assert all(r["error"] is None for r in caps)
    import pyarrow.parquet as pq

    index = pq.read_table(st.fs.open_input_file(st.path(f"shards/{cfg.shard.writer.name}/index.parquet"))).to_pylist()
    assert sorted(r["key"] for r in index) == sorted(kept) and not any(r["error"] for r in index)
    man = json.loads(st.read_bytes(f"runs/{ctx.run_id}.json"))
    acct = {name: man["stages"][name]["accounting"] for name in ("probe", "split", "filter", "caption", "shard")}
    assert set(acct["filter"]["steps"]) == {"filter.decode", "filter.score", "sink"}
    assert acct["split"]["steps"]["split"]["rows_in"] == videos
    assert acct["split"]["steps"]["split"]["rows_out"] == 2 * videos
    assert acct["filter"]["steps"]["filter.score"]["rows_in"] == 2 * videos
    # Work ran on both worker nodes (the head has no CPUs for it).
    nodes = {n for a in acct.values() for s, v in a["steps"].items() if s != "sink" for n in v["node_ids"]}
    assert len(nodes) == 2, nodes


def run_with_kill(cluster, cfg, stages: list[str], table: str) -> tuple[bool, int]:
    """Run `stages`; kill a worker node once `table` has its first part. Returns (finished, parts at kill).

    The run goes on with the one node left; if it fails, the caller re-runs it. A replacement node
    joins afterwards (what a cluster autoscaler does), for what follows."""
    st = Storage(cfg.root)
    seen: dict = {}

    def killer() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not st.list(table, ".parquet"):
            time.sleep(0.05)
        seen["parts"] = len(st.list(table, ".parquet"))
        cluster.kill()
        seen["killed"] = time.time()

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        run_stages(cfg, stages)
        finished = True
    except Exception as e:  # a lost node may fail the run; the re-run must complete it
        print(f"run failed after the kill ({type(e).__name__}: {str(e)[:300]}); re-running")
        finished = False
    th.join(timeout=600)
    assert "killed" in seen
    cluster.add_worker()
    return finished, seen["parts"]


@pytest.mark.timeout(1500)  # a few minutes on a quiet machine; node start-ups dominate on a loaded one
def test_worker_node_killed_mid_split_and_mid_filter(cluster, s3_endpoint, tmp_path):
    videos = 6
    root, inputs, _ = s3_dataset(s3_endpoint, tmp_path, "kill", videos)
    cfg = load_config(write_cfg(tmp_path, "kill", root, inputs))
    run_stages(cfg, ["probe"])
    st = Storage(cfg.root)
    finished, parts = run_with_kill(cluster, cfg, ["split"], "clips")
    assert parts < videos, "the kill must land mid-split"
    if not finished:
        run_stages(cfg, ["split"])
    clips = check_clips(st, videos)
    finished, parts = run_with_kill(cluster, cfg, ["filter"], "scores")
    assert parts < len(clips), "the kill must land mid-filter"
    if not finished:
        run_stages(cfg, ["filter"])
    check_scores(st, clips)
