"""Fixtures of the shards tests: one synthetic dataset root with its shards, built once per session."""
from __future__ import annotations

import pytest

from curation.storage import Storage
from shards import demo, writer
from shards.config import WriterConfig


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> demo.Demo:
    """3 videos x 4 clips (160x96 and 96x96, 48 frames at 24 fps, frames carry their index); 7 kept."""
    return demo.build(str(tmp_path_factory.mktemp("shards_demo")))


@pytest.fixture(scope="session")
def demo_shards(demo_root) -> tuple[demo.Demo, str]:
    """The demo root's shard set "default", two samples per shard (4 shards); returns (demo, shard folder)."""
    writer.write_shards(Storage(demo_root.root), WriterConfig(max_samples_per_shard=2), "fixture", local=True)
    return demo_root, f"{demo_root.root}/shards/default"


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
