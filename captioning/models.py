"""The caption models a run uses: local folders made absolute (Ray workers do not share the driver's
working dir), and the tiny random demo models built on first use (a model under `demo.models`)."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from captioning.config import CaptionConfig, TextLMConfig
from captioning.smollm2 import resolve_packaged
from captioning.tiny_lm import build_tiny_text_lm
from captioning.tiny_vlm import build_tiny_qwen25_vl
from curation.runner import output_to_log

M = TypeVar("M", CaptionConfig, TextLMConfig)  # a model config with `model`: the caption or a text LM


def prepare_text_model(t: TextLMConfig, demo_models: str | None = None) -> TextLMConfig:
    """prepare_model for a TextLMConfig (summary, enhance): absolute folder; a `packaged:` model's converted
    folder; the tiny text LM when the model lies under `demo_models` (demo.models)."""
    if t.engine == "openai":
        return t
    if t.model.startswith("packaged:"):  # a model an installed package ships (SmolLM2): its converted folder
        return t.model_copy(update={"model": resolve_packaged(t.model)})
    if t.demo_model or _under(t.model, demo_models):
        _build_demo(t.model, build_tiny_text_lm, "demo text LM")
    return _absolute(t)


def _build_demo(folder: str, build: Callable[[str], object], what: str) -> None:
    """Build a tiny random demo model in `folder` when it holds none yet."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    print(f"[caption] building the tiny random {what} at {folder}", file=sys.stderr)
    with output_to_log():  # its save_pretrained progress bar: the run log, not the console
        build(folder)


def _under(model: str, folder: str | None) -> bool:
    """`model` is a local path inside the demo models folder."""
    return bool(folder) and os.path.abspath(model).startswith(os.path.abspath(folder) + os.sep)


def _absolute(cfg: M) -> M:
    """A local model folder as an absolute path (Ray workers do not share the driver's working dir)."""
    if os.path.isdir(cfg.model):
        return cfg.model_copy(update={"model": os.path.abspath(cfg.model)})
    return cfg


def prepare_model(cfg: CaptionConfig, demo_models: str | None = None) -> CaptionConfig:
    """A local model folder as an absolute path (Ray workers do not share the driver's working dir);
    a model under `demo_models` (demo.models) that is missing is built there first as a tiny random one."""
    if cfg.mode == "frames_then_summary":
        cfg = cfg.model_copy(update={"summary": prepare_text_model(cfg.summary, demo_models)})
    if cfg.enhance.enabled:
        cfg = cfg.model_copy(update={"enhance": prepare_text_model(cfg.enhance, demo_models)})
    if cfg.engine == "openai":
        return cfg
    if cfg.demo_model or _under(cfg.model, demo_models):
        _build_demo(cfg.model, build_tiny_qwen25_vl, "demo model")
    return _absolute(cfg)
