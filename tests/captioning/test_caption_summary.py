"""mode frames_then_summary in process (tiny random Qwen2.5-VL for the key frames, tiny random Qwen2 text
LM for the summary, both through transformers): one row per clip, frame captions with their times,
error rows per clip, resume that never captions a frame twice; bad templates and empty frame lists."""
from __future__ import annotations

import pytest

from captioning.config import CaptionConfig
from captioning.stage import caption_items, clip_items
from captioning.table import done_ids, read_captions
from curation.storage import Storage


def summary_cfg(vlm: str, lm: str, **kw) -> CaptionConfig:
    summary = {"model": lm, "max_tokens": 12, "keyframe_every_s": 1.0, **kw.pop("summary", {})}
    base = dict(model=vlm, mode="frames_then_summary", max_tokens=6, max_frames=2, max_side=112, sink_every=2,
                retry_bad=0, summary=summary)
    return CaptionConfig(**{**base, **kw})


def test_frames_then_summary_one_row_per_clip_with_timed_frame_captions(tiny_vlm, tiny_lm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    cfg = summary_cfg(tiny_vlm, tiny_lm, summary={"video_prompt": "short-v1"})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["captioned"] + c["flagged"] == 3 and c["errors"] == c["unreadable"] == 0
    rows = read_captions(st, "default").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ids[:3]
    for r in rows:
        assert r["mode"] == "frames_then_summary" and r["error"] is None and r["text"] is not None
        assert r["prompt"] == "frame-v1+short-v1+summary-v1" and len(r["prompt_hash"]) == 16
        # 2-s clips, one key frame per second from t=0 (12 fps: frames at 0 and 1 s).
        assert [f["t_s"] for f in r["frame_captions"]] == pytest.approx([0.0, 1.0], abs=0.09)
        assert all(isinstance(f["text"], str) for f in r["frame_captions"]) and r["frames"] == 2
        assert r["video_caption"] is not None and r["model"] == tiny_vlm and r["engine"] == "transformers"
        assert r["summary_model"] == tiny_lm and r["summary_engine"] == "transformers"
        # tokens of 2 frame captions + the video caption + the summary (each <= its max_tokens).
        assert 12 < r["tokens_out"] <= 2 * 6 + 6 + 12 and r["tokens_in"] > 100
    again = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert again["skipped"] == 3 and again["captioned"] + again["flagged"] + again["errors"] == 0


def test_unreachable_summary_server_is_an_error_per_clip_and_rerun_reuses_frame_captions(tiny_vlm, tiny_lm,
                                                                                          clip_root):
    from captioning.servers import free_port

    root, ids = clip_root
    st = Storage(root)
    down = {"engine": "openai", "model": "m", "openai": {"base_url": f"http://127.0.0.1:{free_port()}/v1",
                                                        "max_retries": 1, "backoff_s": 0.01}}
    c = caption_items(st, summary_cfg(tiny_vlm, tiny_lm, summary=down), clip_items(st, summary_cfg(tiny_vlm, tiny_lm)),
                      local=True)
    assert c["errors"] == 3 and c["captioned"] + c["flagged"] == 0
    rows = {r["clip_id"]: r for r in read_captions(st, "default").to_pylist()}
    assert len(rows) == 3 and done_ids(st, "default") == set()
    for r in rows.values():
        assert r["error"].startswith("summary: connection error") and "after 2 attempt(s)" in r["error"]
        assert len(r["frame_captions"]) == 2 and r["text"] is None  # the VLM's work is kept
    # The clip files are gone now: the re-run can only succeed by reusing the stored frame captions.
    for cid in ids[:3]:
        open(st.path(f"clips/vid0/{cid}.mp4"), "wb").write(b"gone")
    cfg = summary_cfg(tiny_vlm, tiny_lm)
    c2 = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c2["captioned"] + c2["flagged"] == 3 and c2["errors"] == c2["unreadable"] == 0
    new = {r["clip_id"]: r for r in read_captions(st, "default").to_pylist()}
    for k, r in new.items():
        assert r["error"] is None and r["frame_captions"] == rows[k]["frame_captions"]


def test_unreadable_clip_is_a_frames_error_row(tiny_vlm, tiny_lm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    open(st.path(f"clips/vid0/{ids[0]}.mp4"), "wb").write(b"not a video")
    cfg = summary_cfg(tiny_vlm, tiny_lm, run="r2")
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["unreadable"] == 1 and c["captioned"] + c["flagged"] == 2
    rows = {r["clip_id"]: r for r in read_captions(st, "r2").to_pylist()}
    assert rows[ids[0]]["error"].startswith("frames: ") and rows[ids[0]]["frame_captions"] is None


def test_empty_frame_captions_and_unknown_placeholders_are_clear_errors(tmp_path):
    from captioning.__main__ import load_caption_config
    from captioning.prompts import get_text_prompt
    from captioning.summary import summary_request
    from curation.config import ConfigError

    p = get_text_prompt("summary-v1")
    with pytest.raises(ValueError, match="clip c7: no frame captions"):
        summary_request({"clip_id": "c7", "frame_times": [0.0, 2.0], "frame_texts": ["", "  "]}, p)
    with pytest.raises(ValueError, match="clip c8: no frame captions"):
        summary_request({"clip_id": "c8", "frame_times": [], "frame_texts": []}, p)
    r = summary_request({"clip_id": "c9", "frame_times": [0.0, 2.0], "frame_texts": ["A dog.", "A cat."],
                         "video_caption": "Pets.", "duration_s": 4.0}, p)
    assert "[0.0 s] A dog.\n[2.0 s] A cat." in r.user and "Pets." in r.user and "4.0 seconds" in r.user
    y = tmp_path / "p.yaml"
    y.write_text("caption:\n  summary:\n    prompt_text: 'Summarise {frames} for {viewer}'\n")
    with pytest.raises(ConfigError, match=r"caption\.summary\.prompt_text.*\{viewer\}"):
        load_caption_config(str(y), [], None)
    with pytest.raises(ValueError, match=r"caption.enhance.prompt: unknown text template 'dense-v1'"):
        get_text_prompt("dense-v1", None, "caption.enhance")
