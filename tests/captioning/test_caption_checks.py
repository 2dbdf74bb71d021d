"""caption.checks: yes/no VLM questions per clip scored as P(yes) from the first token's log-probabilities,
stored as check_<name> / check_<name>_yes columns; through the real transformers engine with the tiny VLM."""
from __future__ import annotations

import math

import pytest

from captioning.checks import p_yes, question_prompt
from captioning.config import COSMOS_CHECKS, CaptionConfig, ChecksConfig
from captioning.engines.openai import parse_response
from captioning.stage import caption_items, clip_items
from captioning.table import read_captions
from curation.storage import Storage


def test_p_yes_reads_yes_and_no_spellings_of_the_first_token():
    assert p_yes({"Yes": math.log(0.6), " no": math.log(0.2), "The": math.log(0.1)}) == pytest.approx(0.75)
    assert p_yes({"yes.": math.log(0.3), "YES": math.log(0.1), "No": math.log(0.4)}) == pytest.approx(0.5)
    assert p_yes({"The": -0.1}) is None and p_yes(None) is None
    assert question_prompt("slideshow", COSMOS_CHECKS["slideshow"]).user.endswith("Answer with yes or no.")
    with pytest.raises(ValueError, match="lower_snake_case"):
        ChecksConfig(questions={"x_yes": "Is it?"})
    with pytest.raises(ValueError, match="caption.checks.enabled: .*mode video only"):
        CaptionConfig(mode="frames_then_summary", checks={"enabled": True})


def test_served_answers_bring_their_first_token_candidates():
    body = {"choices": [{"message": {"content": "Yes"}, "finish_reason": "length", "logprobs": {"content": [
        {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                           {"token": "No", "logprob": -2.4}]}]}}]}
    assert parse_response(body).first_logprobs == {"Yes": -0.1, "No": -2.4}
    assert parse_response({"choices": [{"message": {"content": "x"}}]}).first_logprobs is None


def test_checks_are_columns_of_the_captions_table(tiny_vlm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    qs = {"slideshow": COSMOS_CHECKS["slideshow"], "overlay_text": COSMOS_CHECKS["overlay_text"]}
    cfg = CaptionConfig(model=tiny_vlm, max_tokens=6, max_frames=2, max_side=112, retry_bad=0,
                        checks={"enabled": True, "questions": qs, "logprobs": 20})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["errors"] == 0 and c["captioned"] + c["flagged"] == 3
    rows = read_captions(st, "default").to_pylist()
    for r in rows:
        assert r["text"] is not None
        for n in qs:
            p, yes = r[f"check_{n}"], r[f"check_{n}_yes"]
            assert (p is None and yes is None) or (0.0 <= p <= 1.0 and yes == (p >= 0.5)), r
    print({r["clip_id"]: {n: r[f"check_{n}"] for n in qs} for r in rows})


def test_transformers_engine_returns_the_first_token_distribution(tiny_vlm, clip_root):
    from captioning.engines import SamplingParams, make_engine
    from captioning.frames import sample_frames
    from captioning.engines.base import CaptionRequest

    root, ids = clip_root
    cfg = CaptionConfig(model=tiny_vlm, max_frames=2, max_side=112)
    frames, fps = sample_frames(f"{root}/clips/vid0/{ids[0]}.mp4", 2.0, cfg)
    engine = make_engine(cfg)
    q = question_prompt("slideshow", COSMOS_CHECKS["slideshow"])
    reqs = [CaptionRequest(ids[0], frames, fps, prompt=q), CaptionRequest(ids[0], frames, fps)]
    a, b = engine.generate(reqs, question_prompt("rotated", COSMOS_CHECKS["rotated"]), SamplingParams(1, 0.0, 1.0,
                                                                                                       logprobs=5))
    for g in (a, b):
        probs = sorted(math.exp(x) for x in g.first_logprobs.values())
        assert 1 <= len(probs) <= 5 and sum(probs) <= 1.0 + 1e-5 and g.tokens_out == 1
        assert max(g.first_logprobs, key=g.first_logprobs.get).strip() == g.text.strip()  # greedy = the top one
    assert a.first_logprobs != b.first_logprobs  # each request asked its own question
    assert engine.generate(reqs[:1], q, SamplingParams(1, 0.0, 1.0))[0].first_logprobs is None


def test_report_agreement_with_ocr_and_near_duplicate_captions(tmp_path):
    from captioning.table import normalize, schema_for
    from vidcurate.caption_report import caption_report
    from curation.tables import write_part

    st = Storage(str(tmp_path / "root"))
    texts = {"a": "A red car drives along a coastal road under a blue sky at noon.",
             "b": "A red car drives along a coastal road under a blue sky at dusk.",
             "c": "Two dogs play with a ball in a green park."}
    yes = {"a": True, "b": False, "c": False}
    rows = [normalize({"clip_id": k, "text": t, "flags": [], "check_overlay_text": 0.9 if yes[k] else 0.1,
                       "check_overlay_text_yes": yes[k]}) for k, t in texts.items()]
    write_part(st, "captions/r", rows, schema=schema_for(rows))
    write_part(st, "scores", [{"clip_id": "a", "passed": True, "ocr_boxes_max": 3},
                              {"clip_id": "b", "passed": True, "ocr_boxes_max": 2},
                              {"clip_id": "c", "passed": True, "ocr_boxes_max": 0}])
    lines, html = caption_report(st, runs=["r"])
    text = "\n".join(lines)
    assert "overlay_text check agrees with OCR: 2 of 3 clips" in text, text  # b has text the VLM said it lacks
    # 14 words: 12 word 3-grams each, 11 shared, 13 in all
    assert "near-duplicate captions (3-gram Jaccard >= 0.8): 1 pairs; a ~ b 0.846" in text, text
    assert "near-duplicate caption pairs" in html
