"""caption.windows: long clips captioned in overlapping windows (spans, frames per window, one merged
caption with the window captions and their times kept), through the real caption stage."""
from __future__ import annotations

import pytest

from captioning.config import CaptionConfig
from captioning.stage import caption_items, clip_items
from captioning.table import read_captions
from captioning.windows import merge_texts, window_spans
from curation.storage import Storage


def test_window_spans_cover_the_clip_with_the_overlap():
    assert window_spans(8.0, 10.0, 2.0) == [(0.0, 8.0)]  # a short clip stays one request
    assert window_spans(30.0, 10.0, 2.0) == [(0.0, 10.0), (8.0, 18.0), (16.0, 26.0), (24.0, 30.0)]
    assert window_spans(20.5, 10.0, 0.0) == [(0.0, 10.0), (10.0, 20.5)]  # a 0.5-s sliver joins the last window
    assert window_spans(30.0, None, 0.0) == [(0.0, 30.0)]
    with pytest.raises(ValueError, match="overlap_s .* must be < window_s"):
        CaptionConfig(windows={"window_s": 2.0, "overlap_s": 2.0})
    with pytest.raises(ValueError, match="caption.windows.window_s: .*mode video only"):
        CaptionConfig(mode="frames_then_summary", windows={"window_s": 2.0})


def test_merge_keeps_order_and_drops_what_an_overlap_repeats():
    merged = merge_texts(["A dog runs. It jumps over a log.", "It jumps over a log! A cat watches.", "Rain falls."])
    assert merged == "A dog runs. It jumps over a log. A cat watches. Rain falls."


def test_long_clips_are_captioned_per_window_and_merged(tiny_vlm, clip_root):
    root, ids = clip_root  # 2-s clips at 12 fps
    st = Storage(root)
    cfg = CaptionConfig(model=tiny_vlm, max_tokens=6, sample_fps=2.0, max_frames=4, max_side=112, retry_bad=0,
                        windows={"window_s": 1.0, "overlap_s": 0.25})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["errors"] == c["unreadable"] == 0 and c["captioned"] + c["flagged"] == 3
    for r in read_captions(st, "default").to_pylist():
        w = r["window_captions"]
        assert [(x["start_s"], x["end_s"]) for x in w] == [(0.0, 1.0), (0.75, 1.75), (1.5, 2.0)]
        assert r["window_s"] == 1.0 and r["window_overlap_s"] == 0.25 and r["frames"] == 6  # 2 frames a window
        assert r["text"] == merge_texts([x["text"] for x in w]) and 3 <= r["tokens_out"] <= 3 * 6
    short = cfg.model_copy(update={"run": "whole", "windows": cfg.windows.model_copy(update={"window_s": 5.0})})
    caption_items(st, short, clip_items(st, short), local=True)
    assert all(r["window_captions"] is None and r["window_s"] is None and r["frames"] == 4
               for r in read_captions(st, "whole").to_pylist())


@pytest.mark.heavy
def test_windows_fields_and_checks_on_ray(ray_local, tiny_vlm, clip_root):
    """The same through Ray Data (frame tasks -> engine actor): window spans, field and check columns survive
    the batches' conversions."""
    root, ids = clip_root
    st = Storage(root)
    cfg = CaptionConfig(model=tiny_vlm, max_tokens=6, sample_fps=2.0, max_frames=4, max_side=112, retry_bad=0,
                        windows={"window_s": 1.0, "overlap_s": 0.25},
                        fields={"enabled": True, "names": {"short": "one sentence"}, "max_tokens": 16, "retry_bad": 0},
                        checks={"enabled": True, "questions": {"rotated": "Is the view rotated?"}},
                        resources={"num_cpus": 1, "workers": 1, "batch_size": 4})
    c = caption_items(st, cfg, clip_items(st, cfg), local=False, progress=False)
    assert c["errors"] == c["unreadable"] == 0 and c["captioned"] + c["flagged"] == 3
    for r in read_captions(st, "default").to_pylist():
        assert len(r["window_captions"]) == 3 and r["frames"] == 6 and "field_short" in r and "check_rotated" in r
