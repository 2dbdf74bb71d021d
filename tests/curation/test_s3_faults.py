"""Object-store faults on a real S3 API server (moto) behind a fault-injecting proxy (tests/curation/s3_faults.py):
503 SlowDown, slow calls and dropped connections per call type. Retries with backoff and jitter, counted;
the final tables equal a clean run's."""
import json
import os
import time

import pyarrow.fs as pafs
import pytest

from curation import retry, tables
from curation.storage import Storage
from s3_faults import FaultProxy, Faults

TYPES = ("get", "put", "post", "head", "list", "delete")  # post: multipart upload start and end


def test_retry_backs_off_and_counts():
    p = retry.Policy(attempts=4, base_s=0.01, max_s=0.02, seed=1)
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate. (503)")
        return "done"

    retry.take()
    assert retry.call("put", flaky, policy=p) == "done" and len(calls) == 3
    assert retry.snapshot()["retries"] == {"put": 2}

    def missing():
        calls.append(0)
        raise FileNotFoundError("s3://b/x: no such key")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        retry.call("get", missing, policy=p)
    assert len(calls) == 1  # not transient: no retry

    def down():
        raise ConnectionResetError("Connection reset by peer")

    with pytest.raises(OSError, match=r"object store: list failed after 4 attempts; last error: ConnectionResetError"):
        retry.call("list", down, policy=p)
    assert retry.take() == {"retries": {"list": 3, "put": 2}, "gave_up": {"list": 1}}


def bucket_root(endpoint: str, name: str) -> str:
    q = f"?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://key:secret@{name}{q}&allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://key:secret@{name}/root{q}"


@pytest.fixture
def proxy(s3_endpoint):
    # 15% of the requests of every type fail (Storage's own calls reach the store once per try: every retry is
    # curation/retry.py's, counted), 10% are slow. A read is two requests (HEAD, GET): 28% of reads fail.
    px = FaultProxy(s3_endpoint, Faults(error={t: 0.1 for t in TYPES}, drop={t: 0.05 for t in TYPES},
                                        slow={t: 0.1 for t in TYPES}, delay_s=0.2, seed=7))
    yield px
    px.stop()


def test_tables_through_faults_equal_a_clean_store(s3_endpoint, proxy):
    """Thirty parts written and read back through 10% 503s, 5% drops and 10% slow calls of every type."""
    name = f"faults{time.time_ns() % 10**9}"
    bucket_root(s3_endpoint, name)  # the bucket, made directly
    root = f"s3://key:secret@{name}/root?endpoint_override={proxy.endpoint}&scheme=http&region=us-east-1"
    st = Storage(root)
    rows = [{"video_id": f"v{i:03d}", "source": f"/in/{i}.mp4", "frames": i, "error": None} for i in range(300)]
    retry.take()
    for i in range(0, 300, 10):
        tables.write_part(st, "videos", rows[i:i + 10], tables.VIDEOS)
    got = tables.read_table(st, "videos", tables.VIDEOS)
    assert sorted(got.column("video_id").to_pylist()) == [r["video_id"] for r in rows]
    assert [p for p in st.walk_files("") if "quarantine" in p] == []  # a transient error never quarantines
    counts = retry.take()
    faults = {k: n for k, n in proxy.seen.items() if k[1] != "ok"}
    assert sum(counts["retries"].values()) > 0 and counts["gave_up"] == {}, (counts, faults)
    assert {k[0] for k in faults} >= {"put", "get"}, faults
    print("proxy:", dict(proxy.seen), "retries:", counts)


@pytest.mark.heavy
def test_run_through_faults_equals_clean_run(ray_local, s3_endpoint, proxy, tmp_path):
    """probe -> split on an S3 root through the faulty proxy (driver and Ray workers): same tables and clip
    files as a clean run; the manifest counts the driver's retries."""
    from curation.config import load_config
    from curation.pipeline import run_stages
    from curation.synth import Scene, make_video

    raw = tmp_path / "raw"
    os.makedirs(raw)
    for k in range(3):
        make_video(str(raw / f"v{k}.mp4"), [Scene(30, 2, k), Scene(30, 3, k + 9)], 96, 64, 24.0)

    def run(root: str):
        p = tmp_path / f"{time.time_ns()}.yaml"
        p.write_text(f"root: '{root}'\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                     "split: {min_clip_s: 0.5}\n")
        cfg = load_config(str(p))
        return cfg, run_stages(cfg, ["probe", "split"])

    def final(root: str) -> tuple:
        st = Storage(root)
        clips = sorted((c["clip_id"], c["status"], c["frames"], c["bytes"], c["path"])
                       for c in tables.read_table(st, "clips", tables.CLIPS).to_pylist())
        videos = sorted((v["video_id"], v["frames"], v["error"]) for v in tables.read_table(st, "videos").to_pylist())
        files = {c[4]: st.read_bytes(c[4]) for c in clips if c[4]}
        return videos, clips, files

    clean_root = bucket_root(s3_endpoint, f"clean{time.time_ns() % 10**9}")
    run(clean_root)
    name = f"faulty{time.time_ns() % 10**9}"
    bucket_root(s3_endpoint, name)
    root = f"s3://key:secret@{name}/root?endpoint_override={proxy.endpoint}&scheme=http&region=us-east-1"
    cfg, ctx = run(root)
    # read back directly (not through the proxy): what a reader of the store finds
    direct = root.replace(proxy.endpoint, s3_endpoint)
    assert final(direct) == final(clean_root)
    man = json.loads(Storage(direct).read_bytes(f"runs/{ctx.run_id}.json"))
    assert sum(man["object_store"]["retries"].values()) > 0 and man["object_store"]["gave_up"] == {}, man["object_store"]
    print("proxy:", dict(proxy.seen), "manifest:", man["object_store"])
