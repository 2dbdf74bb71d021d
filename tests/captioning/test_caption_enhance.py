"""caption.enhance (a text-LM rewrite of a captions run into a new run) and prompt expansion for
`python -m training sample --enhance-prompt`, with the tiny random Qwen2 text LM through transformers."""
from __future__ import annotations

import pytest

from captioning.config import CaptionConfig
from captioning.enhance import Enhance, enhance_run, expand_prompts
from captioning.table import CAPTIONS, done_ids, normalize, read_captions
from curation.storage import Storage
from curation.tables import write_part


def source_run(st: Storage, rows: list[tuple[str, str | None]]) -> None:
    """A captions run `src` as the caption stage writes it: (clip id, text or None for an error)."""
    write_part(st, "captions/src", [normalize({"clip_id": c, "text": t, "raw_text": t, "model": "vlm", "frames": 4,
                                               "error": None if t else "HTTP 500 (after 4 attempt(s))", "flags": []})
                                    for c, t in rows], schema=CAPTIONS)


def enhance_cfg(lm: str, **kw) -> CaptionConfig:
    e = {"model": lm, "max_tokens": 10, "source_run": "src", **kw}
    return CaptionConfig(enhance=e, sink_every=2, retry_bad=1)


def test_enhance_writes_a_new_run_one_row_per_clip_and_resumes(tiny_lm, tmp_path):
    st = Storage(str(tmp_path / "root"))
    source_run(st, [("c0", "A man rides a bicycle."), ("c1", "Two dogs run on a beach."), ("c2", None)])
    write_part(st, "scores", [{"clip_id": "c0", "passed": True, "motion_camera_type": "pan_left"},
                              {"clip_id": "c1", "passed": True, "motion_camera_type": "unknown"}])
    cfg = enhance_cfg(tiny_lm)
    c = enhance_run(st, cfg, local=True)
    assert c["run"] == "src-enhanced" and c["clips"] == 3 and c["errors"] == 1
    rows = {r["clip_id"]: r for r in read_captions(st, "src-enhanced").to_pylist()}
    assert sorted(rows) == ["c0", "c1", "c2"]
    assert rows["c2"]["error"].startswith("enhance: source run 'src' has no caption") and rows["c2"]["text"] is None
    for k in ("c0", "c1"):
        r = rows[k]
        assert r["mode"] == "enhance" and r["source_run"] == "src" and r["model"] == tiny_lm
        assert r["prompt"] == "enhance-v1" and r["error"] is None and 0 < r["tokens_out"] <= 10
    # A random LM never names the pan: flagged after one retry; c1's type is unknown, so it is not asked.
    assert "no_camera_motion" in rows["c0"]["flags"] and rows["c0"]["retries"] == 1
    assert "no_camera_motion" not in rows["c1"]["flags"]
    assert [r["text"] for r in read_captions(st, "src").to_pylist()][:2] == ["A man rides a bicycle.",
                                                                             "Two dogs run on a beach."]  # kept
    source_run(st, [("c2", "A cat sleeps on a sofa.")])  # the source clip captioned later ...
    c2 = enhance_run(st, cfg, local=True)
    assert c2["skipped"] == 2 and c2["errors"] == 0 and c2["captioned"] + c2["flagged"] == 1  # ... fills only it
    assert done_ids(st, "src-enhanced") == {"c0", "c1", "c2"}


def test_enhance_prompt_names_the_camera_motion_and_bad_input_is_named(tiny_lm, tmp_path):
    st = Storage(str(tmp_path / "root"))
    stage = Enhance(enhance_cfg(tiny_lm, target_words=80), "src")
    req = stage.request({"clip_id": "c0", "source_text": "A car.", "camera": "zoom_in"})
    assert "The camera motion detected in the clip is: zoom in" in req.user and "about 80 words" in req.user
    assert "camera motion" not in Enhance(enhance_cfg(tiny_lm, require_camera_motion=False), "src").request(
        {"clip_id": "c0", "source_text": "A car.", "camera": "zoom_in"}).user
    with pytest.raises(ValueError, match="no captions run 'src'"):
        enhance_run(st, enhance_cfg(tiny_lm), local=True)
    with pytest.raises(ValueError, match="caption.enhance.run: the output run must differ"):
        enhance_run(st, enhance_cfg(tiny_lm, run="src"), local=True)
    with pytest.raises(Exception, match=r"enhance.prompt_text[\s\S]*\{clip\}"):
        enhance_cfg(tiny_lm, prompt_text="Rewrite {caption} of {clip}")


def test_expand_prompts_for_sampling(tiny_lm, tmp_path):
    from captioning.servers import free_port

    y = tmp_path / "p.yaml"
    y.write_text(f"caption:\n  enhance:\n    model: {tiny_lm}\n    max_tokens: 12\n")
    out = expand_prompts(["a cat on a sofa", "a red car"], str(y))
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    down = ["enhance.engine=openai", f"enhance.openai.base_url=http://127.0.0.1:{free_port()}/v1",
            "enhance.openai.max_retries=0"]
    with pytest.raises(ValueError, match="prompt 'a red car': no expansion .*connection error"):
        expand_prompts(["a red car"], str(y), down)


def test_training_sample_enhance_prompt_reports_a_bad_config(tmp_path, capsys):
    """The flag runs before any checkpoint is loaded: a bad caption.enhance section is a one-line error."""
    from training.sample import main

    y = tmp_path / "p.yaml"
    y.write_text("caption:\n  enhance:\n    prompt_text: 'Expand {caption} for {audience}'\n")
    assert main(["--checkpoint", str(tmp_path / "none"), "--prompt", "a cat", "--enhance-prompt", str(y)]) == 2
    out = capsys.readouterr().err  # errors go to stderr
    assert "[training sample] error:" in out and "caption.enhance.prompt_text" in out and "{audience}" in out
