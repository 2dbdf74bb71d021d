"""Fixtures of the captioning tests: a tiny random Qwen2.5-VL and a dataset root with real clip files."""
from __future__ import annotations

import pytest

from captioning_helpers import make_clip_root


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    """Folder of a tiny random Qwen2.5-VL with a locally trained tokenizer (built once per session)."""
    from captioning.tiny_vlm import build_tiny_qwen25_vl

    return build_tiny_qwen25_vl(str(tmp_path_factory.mktemp("tiny_vlm")))


@pytest.fixture
def clip_root(tmp_path) -> tuple[str, list[str]]:
    """(root, clip ids) with 4 clips, the last of which the filter dropped."""
    root = str(tmp_path / "root")
    return root, make_clip_root(root)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """Folder of a tiny random Qwen2 text LM with the same tokenizer (built once per session)."""
    from captioning.tiny_lm import build_tiny_text_lm

    return build_tiny_text_lm(str(tmp_path_factory.mktemp("tiny_lm")))
