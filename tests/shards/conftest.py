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
