"""Prompts, caption clean-up and quality flags, and the config section's validation."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from captioning.config import CaptionConfig
from captioning.postprocess import clean, is_looping, quality_flags
from captioning.prompts import TEMPLATES, get_prompt

DENSE = ("A man in a red jacket rides a bicycle along a coastal road at sunset. The camera tracks him from the "
         "side as waves break on the rocks below, and gulls circle overhead in the orange light.")


@pytest.mark.parametrize("raw, want", [
    ("The video shows a man riding a bicycle.", "A man riding a bicycle."),
    ("This clip depicts two dogs on a beach.", "Two dogs on a beach."),
    ("In this video, we see a cat on a sofa.", "A cat on a sofa."),
    ("Sure! Here is a detailed description of the video: The video begins with a sunset.", "A sunset."),
    ("  A car drives   down a road. ", "A car drives down a road."),
    ("The man shows the video to his friend.", "The man shows the video to his friend."),
])
def test_clean_strips_boilerplate_openings_only(raw, want):
    assert clean(raw) == want


def test_quality_flags():
    assert quality_flags(DENSE, "stop") == []
    assert quality_flags("", "stop") == ["empty"]
    assert quality_flags("...", "stop") == ["empty"]
    assert quality_flags(DENSE, "length") == ["truncated"]
    assert quality_flags("A man walks. " * 12, "length") == ["truncated", "looping"]
    assert is_looping("ha" * 100) and is_looping("!" * 150)
    assert not is_looping(DENSE) and not is_looping("A cat.")


def test_prompt_hash_is_stable_and_changes_with_the_text():
    p = get_prompt("dense-v1")
    assert p.hash == get_prompt("dense-v1").hash and len(p.hash) == 16
    assert "describe this video in detail" in p.user.lower()  # CogVLM2-Caption's instruction
    assert len({t.hash for t in TEMPLATES.values()}) == len(TEMPLATES)
    custom = get_prompt("dense-v1", "Describe the clip.")
    assert custom.name == "custom" and custom.hash != p.hash
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        get_prompt("nope")
    with pytest.raises(ValueError, match="prompt_text is empty"):
        get_prompt("dense-v1", "  ")


def test_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ValidationError, match="engine"):
        CaptionConfig(engine="llama.cpp")
    with pytest.raises(ValidationError, match="min_frames"):
        CaptionConfig(min_frames=8, max_frames=4)
    with pytest.raises(ValidationError, match="extra"):
        CaptionConfig(openai={"base_url": "http://x/v1", "apikey": "secret"})
    with pytest.raises(ValidationError, match="tensor_parallel_size"):
        CaptionConfig(engine="vllm", vllm={"tensor_parallel_size": 2}, resources={"num_gpus": 1})
    with pytest.raises(ValidationError, match="run"):
        CaptionConfig(run="../escape")


def test_pipeline_config_carries_the_caption_section(tmp_path):
    from curation.config import ConfigError
    from vidcurate.flow import load_config

    p = tmp_path / "p.yaml"
    p.write_text("root: r\ninputs: [x.mp4]\ncaption: {engine: openai, openai: {concurrency: 4}}\n")
    cfg = load_config(str(p), check_inputs=False)
    assert cfg.caption.engine == "openai" and cfg.caption.openai.concurrency == 4
    p.write_text("root: r\ninputs: [x.mp4]\ncaption: {max_tokens: 0}\n")
    with pytest.raises(ConfigError, match="caption.max_tokens"):
        load_config(str(p), check_inputs=False)
