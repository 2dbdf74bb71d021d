"""One owner per dataset root and stage (curation/lease.py): real holder processes, killed for real,
on a local root and on a real S3 API server (moto) with conditional writes."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from curation.lease import Lease, LeaseHeld, Leases, backend
from curation.storage import Storage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A holder in its own process: takes the lease, says so, holds it for `hold` s (or until killed), releases.
HOLDER = """
import sys, time
from curation.lease import Leases
from curation.storage import Storage
root, stage, ttl, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ls = Leases(Storage(root), "holder-run")
ls.acquire([stage], ttl_s=ttl, heartbeat_s=0.2)
print("held", flush=True)
time.sleep(hold)
ls.release()
print("released", flush=True)
"""


def start_holder(root: str, stage: str = "split", ttl: float = 2.0, hold: float = 600.0) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, root, stage, str(ttl), str(hold)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
    assert p.stdout.readline().strip() == "held", "the holder process did not take the lease"
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


@pytest.fixture
def s3_root(s3_endpoint):
    import pyarrow.fs as pafs

    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    bucket = f"lease{time.time_ns() % 10**9}"
    fs, _ = pafs.FileSystem.from_uri(f"s3://key:secret@{bucket}{q}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    return f"s3://key:secret@{bucket}/root{q}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_second_run_refused_then_takes_over_a_killed_holder(where, tmp_path, request):
    root = str(tmp_path / "root") if where == "local" else request.getfixturevalue("s3_root")
    holder = start_holder(root, ttl=2.0)
    try:
        time.sleep(0.5)
        mine = Leases(Storage(root), "second-run")
        with pytest.raises(LeaseHeld) as e:
            mine.acquire(["probe", "split"], ttl_s=2.0)
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "run holder-run" in msg and "stage 'split'" in msg, msg
        assert "heartbeat is" in msg and "s old" in msg and "--wait" in msg
        assert "secret" not in msg  # the root is shown redacted
        assert mine.held == [] and not Storage(root).exists("leases/probe.json")  # the probe lease was given back
        holder.send_signal(signal.SIGKILL)  # dies holding it: the heartbeat stops
        holder.wait(timeout=30)
        t0 = time.time()
        mine.acquire(["split"], wait=True, ttl_s=2.0, heartbeat_s=0.2)
        waited = time.time() - t0
        rec = mine.record()
        assert rec["took_over"] and rec["took_over"][0]["pid"] == holder.pid, rec
        # the holder ran on this host and its process is gone: taken over at once, not after the ttl
        assert rec["took_over"][0]["heartbeat_age_s"] < 2.0 and waited < 2.0
        held = json.loads(Storage(root).read_bytes("leases/split.json"))
        assert held["owner"] == "second-run" and held["pid"] == os.getpid()
        mine.release()
        assert not Storage(root).exists("leases/split.json")
    finally:
        stop(holder)


def test_wait_gets_the_lease_when_the_holder_finishes(tmp_path):
    root = str(tmp_path / "root")
    holder = start_holder(root, ttl=60.0, hold=1.5)  # live heartbeat: no takeover possible, only waiting
    try:
        mine = Leases(Storage(root), "waiter")
        mine.acquire(["split"], wait=True, heartbeat_s=0.2)
        assert holder.wait(timeout=30) == 0 and holder.stdout.read().strip() == "released"
        assert mine.record()["took_over"] == []
        mine.release()
    finally:
        stop(holder)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_acquirers_one_wins(where, tmp_path, request):
    """Eight threads race for one free lease, then for one stale lease: exactly one wins each time."""
    root = str(tmp_path / "root") if where == "local" else request.getfixturevalue("s3_root")
    st = Storage(root)
    for stale in (False, True):
        if stale:  # a dead holder's lease: heartbeat long ago
            st.write_bytes("leases/split.json", json.dumps({"owner": "dead", "host": "h", "pid": 1, "stage": "split",
                                                           "acquired": 0, "heartbeat": 0, "ttl_s": 1}).encode())
        be = backend(st)
        leases = [Lease(st, "split", f"run{i}") for i in range(8)]
        results: list = [None] * 8
        go = threading.Barrier(8)

        def race(i: int) -> None:
            go.wait()
            results[i] = leases[i].try_acquire(be)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join(timeout=60) for t in threads]
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert json.loads(st.read_bytes("leases/split.json"))["owner"] == f"run{winners[0]}"
        assert all(r.owner == f"run{winners[0]}" for r in results if r is not None)
        assert (leases[winners[0]].took_over is not None) == stale
        leases[winners[0]].release(be)


def test_renewal_notices_a_takeover(tmp_path):
    """A holder that stalled past its ttl and was taken over finds out at its next heartbeat."""
    st = Storage(str(tmp_path / "root"))
    be = backend(st)
    slow = Lease(st, "filter", "slow-run", ttl_s=0.3, heartbeat_s=60)
    assert slow.try_acquire(be) is None
    time.sleep(0.5)
    fresh = Lease(st, "filter", "fresh-run", ttl_s=30)
    assert fresh.try_acquire(be) is None and fresh.took_over["owner"] == "slow-run"
    slow.heartbeat_s = 0.05
    slow.start_heartbeat(be)
    slow._thread.join(timeout=10)
    assert slow.lost and "fresh-run" in slow.lost
    slow.release(be)  # does not delete the new holder's lease
    assert json.loads(st.read_bytes("leases/filter.json"))["owner"] == "fresh-run"


@pytest.mark.heavy
def test_two_real_runs_on_one_root(tmp_path):
    """Two `python -m vidcurate run` at once on one root: the second refuses naming the first; a third with
    --wait runs after it and re-does nothing (each clip file written once, one row per clip)."""
    from tests.curation.test_run import make_inputs, write_cfg

    from curation import tables

    raw, root = tmp_path / "raw", tmp_path / "root"
    make_inputs(str(raw), 3)
    cfg = write_cfg(tmp_path, root, raw)
    cmd = [sys.executable, "-m", "vidcurate", "run", cfg, "--stage", "probe,split"]
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(root / "leases" / "split.json") and time.time() < deadline:
            time.sleep(0.1)
        waiter = subprocess.Popen(cmd + ["--wait"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "heartbeat is" in second.stderr, second.stderr
        assert first.wait(timeout=600) == 0, first.stderr.read()
        out, err = waiter.communicate(timeout=600)
        assert waiter.returncode == 0 and "waiting: stage 'probe'" in err, err
    finally:
        for p in (first, locals().get("waiter")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    st = Storage(str(root))
    clips = tables.read_table(st, "clips", key="__none__").to_pylist()  # every row, duplicates included
    assert len(clips) == len({c["clip_id"] for c in clips}) == 6
    manifests = [json.loads(st.read_bytes(p)) for p in st.list("runs", ".json")]
    assert len(manifests) == 2 and all(m["leases"]["stages"] == ["probe", "split"] for m in manifests)
    assert not st.exists("leases/split.json")


def test_a_root_without_conditional_writes_runs_unguarded(capsys):
    """gs:// (a real pyarrow GcsFileSystem; the lease never calls it) has no compare-and-swap here: no lease,
    a warning, nothing refused."""
    ls = Leases(Storage("gs://bucket/root?endpoint_override=127.0.0.1:9&scheme=http"), "run")
    ls.acquire(["split"])
    assert ls.held == [] and "warning: no lease on gs://bucket/root (only local" in capsys.readouterr().err


def test_stale_by_heartbeat_or_by_a_dead_process_on_this_host():
    """A holder on another host is stale only when its heartbeat is older than its ttl; one on this host
    also when its process is gone (kill -9, then an immediate re-run)."""
    import socket
    import subprocess
    import sys

    from curation.lease import Holder

    now = time.time()
    other = Holder("r", "some-other-host", os.getpid(), "split", now - 10, now - 1.0, 2.0)
    assert not other.stale(now) and Holder("r", "some-other-host", 1, "split", now - 10, now - 3.0, 2.0).stale(now)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    assert Holder("r", here, dead.pid, "split", now, now, 60.0).stale(now)
    assert not Holder("r", here, os.getpid(), "split", now, now, 60.0).stale(now)
