"""caption.fields: structured captions as JSON fields checked against one schema, stored as field_<name>
columns of the captions table and carried into the shards' metadata. Here with transformers (free
generation, the schema checked after); the vLLM tests check that structured outputs make even the tiny
random VLM's answers schema-valid."""
from __future__ import annotations

import json

import pytest

from captioning.config import MIRADATA_FIELDS, CaptionConfig, FieldsConfig
from captioning.engines.openai import chat_payload
from captioning.engines.base import CaptionRequest, SamplingParams
from captioning.stage import caption_items, clip_items
from captioning.structured import INVALID, fields_prompt, fields_regex, fields_schema, parse_fields
from captioning.table import CAPTIONS, normalize, read_captions, schema_for
from curation.config import ConfigError
from curation.storage import Storage
from curation.tables import write_part

NAMES = {"short": "one sentence", "camera_movement": "how the camera moves"}


def test_answers_are_checked_against_the_schema():
    schema = fields_schema(NAMES)
    good = {"short": "A red car on a beach.", "camera_movement": "static"}
    assert parse_fields(json.dumps(good), schema) == good
    assert parse_fields("```json\n" + json.dumps(good) + "\n```", schema) == good  # a fence is tolerated
    for bad, why in [("A red car.", "not JSON"), (json.dumps({"short": "x"}), "'camera_movement' is a required"),
                     (json.dumps({**good, "mood": "calm"}), "Additional properties"),
                     (json.dumps({**good, "short": ""}), "too short|should be non-empty"),
                     (json.dumps({**good, "short": 3}), "is not of type 'string'")]:
        with pytest.raises(ValueError, match=why):
            parse_fields(bad, schema)
    assert all(f"\"{k}\"" in fields_prompt(NAMES).user for k in NAMES)
    assert fields_prompt(NAMES).hash != fields_prompt(MIRADATA_FIELDS).hash


def test_config_names_bad_fields_and_modes():
    with pytest.raises(ValueError, match="lower_snake_case"):
        FieldsConfig(names={"Camera Move": "x"})
    with pytest.raises(ValueError, match="caption.fields.enabled: .*mode video only"):
        CaptionConfig(mode="frames_then_summary", fields={"enabled": True})
    from captioning.config import load_caption_config

    with pytest.raises(ConfigError, match="caption.fields.max_tokens"):
        load_caption_config(None, ["fields.max_tokens=2"], None)


def test_served_requests_carry_the_schema_as_response_format():
    req = CaptionRequest("c0", [b"\xff\xd8"], 1.0)
    body = chat_payload("m", req, fields_prompt(NAMES), SamplingParams(64, 0.0, 1.0, json_schema=fields_schema(NAMES)))
    assert body["response_format"]["json_schema"]["schema"]["required"] == list(NAMES)
    assert "response_format" not in chat_payload("m", req, fields_prompt(NAMES), SamplingParams(64, 0.0, 1.0))
    both = SamplingParams(64, 0.0, 1.0, json_schema=fields_schema(NAMES), regex=fields_regex(NAMES, 40))
    vllm = chat_payload("m", req, fields_prompt(NAMES), both, structured="vllm")
    assert vllm["structured_outputs"] == {"regex": fields_regex(NAMES, 40)} and "response_format" not in vllm
    # the regex admits exactly the compact answers the schema accepts (printable ASCII values)
    import re

    good = json.dumps({"short": "A red car [x]!", "camera_movement": "static"}, separators=(",", ":"))
    assert re.fullmatch(fields_regex(NAMES, 40), good) and parse_fields(good, fields_schema(NAMES, 40))
    for bad in ('{ "short":"a","camera_movement":"b"}', '{"short":"a\\"","camera_movement":"b"}',
                '{"short":"","camera_movement":"b"}', '{"short":"' + "x" * 41 + '","camera_movement":"b"}'):
        assert not re.fullmatch(fields_regex(NAMES, 40), bad), bad


def test_free_generation_that_fails_the_schema_is_flagged_and_keeps_the_caption(tiny_vlm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    cfg = CaptionConfig(model=tiny_vlm, max_tokens=6, max_frames=2, max_side=112, retry_bad=0,
                        fields={"enabled": True, "names": NAMES, "max_tokens": 16, "retry_bad": 1})
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["errors"] == 0 and c["flagged"] == 3  # a random VLM writes no valid JSON, even on the retry
    for r in read_captions(st, "default").to_pylist():
        assert r["text"] is not None and INVALID in r["flags"]
        assert "field_short" in r and r["field_short"] is None and r["field_camera_movement"] is None


def test_field_and_check_columns_reach_shards_filter_rules_and_the_report(tiny_vlm, clip_root):
    from shards.config import WriterConfig
    from shards.writer import select

    root, ids = clip_root
    st = Storage(root)
    rows = [normalize({"clip_id": c, "text": f"caption {c}", "flags": [], "field_short": f"short {c}",
                       "field_camera_movement": "pan left", "check_slideshow": p, "check_slideshow_yes": p >= 0.5})
            for c, p in zip(ids[:3], (0.1, 0.2, 0.9))]
    schema = schema_for(rows)
    assert schema.names[:len(CAPTIONS)] == CAPTIONS.names and schema.field("check_slideshow_yes").type == "bool"
    write_part(st, "captions/f", rows, schema=schema)
    back = {r["clip_id"]: r for r in read_captions(st, "f").to_pylist()}
    assert back[ids[0]]["field_short"] == f"short {ids[0]}" and back[ids[0]]["check_slideshow"] == 0.1
    sel = select(st, WriterConfig(captions_run="f"))
    metas = {s["key"]: s["meta"]["caption"] for s in sel.samples}
    assert sorted(metas) == ids[:3] and all(m["field_camera_movement"] == "pan left" for m in metas.values())
    assert [metas[c]["check_slideshow_yes"] for c in ids[:3]] == [False, False, True]
    # a check as a filter rule: the clip answered "yes" leaves the shards, counted under its own reason
    sel = select(st, WriterConfig(captions_run="f", drop_caption_checks=["slideshow"]))
    assert sorted(s["key"] for s in sel.samples) == ids[:2] and sel.dropped["caption check slideshow"] == 1
    # ... and inspect's caption report counts the answers
    from vidcurate.caption_report import caption_report

    lines, html = caption_report(st, runs=["f"])
    assert any("checks answered yes: slideshow 1 of 3 (mean P 0.40)" in ln for ln in lines), lines
    assert "caption.checks" in html
