"""bench/gpu.sh, the one prepared GPU check, dry-run on the CPU so it cannot rot before a GPU is lent.

The dry run executes every section's real code path (our FSDP2 wrapping, diffusers' models, LoRA,
CLIP, TransNetV2's real weights, vLLM through our engine) on tiny shapes and writes the same JSON and
table as a GPU run; a section that fails is a failed test, not a number missing on the GPU day.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(tmp_path, sections: str) -> dict:
    out = tmp_path / "gpu"
    p = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu.sh"), "--dry-run", "--strict", "--out", str(out),
                        "--only", sections], capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    return {"results": results, "table": table, "stdout": p.stdout}


@pytest.mark.heavy
def test_dry_run_measures_every_cpu_section(tmp_path):
    r = dry_run(tmp_path, "transformer,vae,lora,filter")
    res = r["results"]
    assert res["dry_run"] is True
    for name in ("env", "transformer", "vae", "lora", "filter"):
        assert res["status"][name].startswith("ok"), res["status"]
    # Every measured row is a number, both sides of each comparison present.
    for label in ("plain", "activation checkpointing"):
        for side in ("ours", "diffusers"):
            step = res["transformer"][f"{side}_{label}"]
            assert step["s_per_step"] > 0 and step["peak_bytes"] > 0
    assert res["vae"]["ours"]["peak_bytes"] > 0 and res["vae"]["diffusers"]["peak_bytes"] > 0
    assert res["lora"]["tiny"]["peak_bytes"] > 0
    assert res["filter"]["cpu_decode_clips_per_s"] > 0 and res["filter"]["transnetv2_frames_per_s"] > 0
    # The environment check names what a GPU run would miss here instead of failing late.
    assert "| env | vllm | MISSING |" in r["table"] or res["env"]["packages"]["vllm"]
    assert r["table"].count("| transformer |") == 2 and "| vae |" in r["table"]


def test_unknown_section_is_refused_by_name(tmp_path):
    p = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu.sh"), "--dry-run", "--only", "transformer,nvdec"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 2 and "unknown section(s) ['nvdec']" in p.stderr


@pytest.mark.vllm
def test_dry_run_caption_section_through_vllm(tmp_path):
    from captioning.servers import VLLM_PYTHON, vllm_available

    if not vllm_available():
        msg = f"{VLLM_PYTHON} missing: build it with scripts/setup_vllm_cpu.sh"
        if os.environ.get("VIDCURATE_REQUIRE_VLLM"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = dry_run(tmp_path, "caption")["results"]
    assert res["status"]["caption"].startswith("ok"), res["status"]
    cap = res["caption"]
    assert cap["ours_tokens_per_s"] > 0 and cap["ceiling_tokens_per_s"] > 0 and cap["clips"] == 4
