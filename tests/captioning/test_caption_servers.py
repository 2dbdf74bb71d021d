"""The OpenAI-compatible engine against real servers: the API key stays secret on failures (fast),
and `transformers serve` (the serving extra) captions clips (heavy: a server start)."""
from __future__ import annotations

import logging

import pytest

from captioning.config import CaptionConfig
from captioning.engines import CaptionRequest, SamplingParams
from captioning.engines.openai import OpenAIEngine
from captioning.prompts import get_prompt
from captioning.servers import free_port, start_transformers_server
from captioning.stage import caption_items, clip_items
from captioning.table import read_captions
from curation.storage import Storage


def test_unreachable_server_is_an_error_and_the_key_is_never_shown(monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("VIDCURATE_TEST_KEY", secret)
    port = free_port()  # nothing listens there: a real connection refusal
    cfg = CaptionConfig(engine="openai", model="m", openai={"base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key_env": "VIDCURATE_TEST_KEY", "max_retries": 2, "backoff_s": 0.01})
    eng = OpenAIEngine(cfg)
    assert eng._client.headers["authorization"] == f"Bearer {secret}"  # it is sent ...
    with caplog.at_level(logging.DEBUG):
        g = eng.generate([CaptionRequest("c1", [b"\xff\xd8"], 1.0)], get_prompt("dense-v1"),
                         SamplingParams(8, 0.0, 1.0))[0]
    eng.close()
    assert g.error.startswith("connection error") and "after 3 attempt(s)" in g.error and g.text == ""
    for shown in (g.error, caplog.text, repr(eng)):  # ... and never shown
        assert secret not in shown


@pytest.mark.heavy
def test_transformers_serve_captions_clips(tiny_vlm, clip_root, tmp_path):
    root, ids = clip_root
    server = start_transformers_server(tiny_vlm, str(tmp_path / "serve.log"))
    try:
        cfg = CaptionConfig(engine="openai", model=server.model, max_tokens=12, max_frames=4, max_side=112,
                            openai={"base_url": server.base_url, "concurrency": 2})
        st = Storage(root)
        c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    finally:
        server.stop()
    assert c["errors"] == 0 and c["captioned"] + c["flagged"] == 3
    for r in read_captions(st, "default").to_pylist():
        assert r["engine"] == "openai" and r["tokens_in"] > 50 and 0 < r["tokens_out"] <= 12 and r["text"] is not None
