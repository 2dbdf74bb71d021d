"""Model folders in the caption section are relative to pipelines.yaml (its stated rule), not to the
working directory: a copied file finds its models from anywhere; hub names stay names."""
from __future__ import annotations

import os

import yaml

from captioning.config import load_caption_config
from vidcurate.flow import load_config


def _write(folder, caption: dict, engines: dict | None = None) -> str:
    path = os.path.join(folder, "pipelines.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"root": "data", "inputs": ["videos"], "demo": {"models": "models"}, "caption": caption,
                        **({"engines": engines} if engines else {})}, f)
    return path


def test_relative_model_folders_follow_the_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "vlm").mkdir(parents=True)
    path = _write(str(conf), {"model": "vlm", "mode": "frames_then_summary",
                              "summary": {"model": "models/tiny-lm"}, "enhance": {"engine": "mine"}},
                  engines={"mine": {"model": "Qwen/Qwen2.5-7B-Instruct"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for cfg in (load_caption_config(path, [], None), load_config(path, check_inputs=False).caption):
        assert cfg.model == str(conf / "vlm")  # exists next to the file
        assert cfg.summary.model == str(conf / "models" / "tiny-lm")  # missing, but under demo.models: built there
        assert cfg.enhance.model == "Qwen/Qwen2.5-7B-Instruct"  # a hub name stays a name


def test_hub_names_and_served_names_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(str(tmp_path), {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "engine": "openai",
                                  "openai": {"base_url": "http://localhost:8000/v1"}})
    os.makedirs(tmp_path / "Qwen" / "Qwen2.5-VL-7B-Instruct")  # a folder of that name does not turn a served name into a path
    assert load_caption_config(path, [], None).model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_a_missing_nested_folder_is_still_the_files(tmp_path):
    """Two or more slashes cannot be a hub name: the value is the file's folder even while missing (loading
    the file works: stages other than captioning need no caption model)."""
    path = _write(str(tmp_path), {"model": "data/weights/my-vlm"})
    assert load_caption_config(path, [], None).model == str(tmp_path / "data" / "weights" / "my-vlm")
