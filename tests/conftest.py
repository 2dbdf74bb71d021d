"""Shared fixtures: the real third-party test videos (optional) and synthetic videos."""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Keep the 2-core machine responsive when several test processes and Ray workers run.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def testdata() -> str:
    """Folder of real third-party videos (../shared/testdata, or $VIDEO_TESTDATA); skips when absent."""
    path = os.environ.get("VIDEO_TESTDATA", os.path.join(REPO, "..", "shared", "testdata"))
    if not os.path.isdir(path):
        pytest.skip(f"real test videos not found at {path} (set VIDEO_TESTDATA to run these tests)")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> str:
    """Synthetic videos with known cuts, made once per session."""
    from curation.synth import Scene, make_video

    d = tmp_path_factory.mktemp("synth")
    make_video(str(d / "cuts.mp4"), [Scene(48, 2.0, 1), Scene(60, 3.0, 2), Scene(40, 1.0, 3)], 160, 96, 24.0)
    make_video(str(d / "still.mp4"), [Scene(72, 0.0, 4)], 160, 96, 24.0)
    make_video(str(d / "moving.mp4"), [Scene(72, 3.0, 5)], 160, 96, 24.0)
    make_video(str(d / "indexed.mp4"), [Scene(96, 2.0, 6)], 160, 96, 24.0, with_index=True)
    return str(d)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded 2-CPU Ray for the session (started on first use)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"PYTHONPATH": REPO}})
    yield ray


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 API server (moto) on 127.0.0.1; yields host:port."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
