"""Caption engines behind one interface (see base.Engine): `make_engine(cfg)` picks one by name.

Each engine module imports its heavy library (vllm, transformers, httpx) only when built, so the
stage, the config and the CLI import without them.
"""
from __future__ import annotations

from captioning.config import CaptionConfig
from captioning.engines.base import CaptionRequest, Engine, Generation, SamplingParams, TextEngine, TextRequest

__all__ = ["CaptionRequest", "Engine", "Generation", "SamplingParams", "TextEngine", "TextRequest", "make_engine",
           "make_text_engine"]


def make_engine(cfg: CaptionConfig) -> Engine:
    """The engine named by `cfg.engine`, ready to generate (models are loaded here)."""
    if cfg.engine == "openai":
        from captioning.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.engine == "vllm":
        from captioning.engines.vllm_offline import VLLMEngine

        return VLLMEngine(cfg)
    if cfg.engine == "transformers":
        from captioning.engines.transformers_local import TransformersEngine

        return TransformersEngine(cfg)
    raise ValueError(f"caption.engine: unknown engine {cfg.engine!r}")


def make_text_engine(cfg: "object") -> TextEngine:
    """The text-only engine of a TextLMConfig (`caption.summary`, `caption.enhance`), model loaded."""
    if cfg.engine != "openai" and cfg.model.startswith("packaged:"):  # callers that skipped prepare_text_model
        from captioning.smollm2 import resolve_packaged

        cfg = cfg.model_copy(update={"model": resolve_packaged(cfg.model)})
    if cfg.engine == "openai":
        from captioning.engines.openai import OpenAITextEngine

        return OpenAITextEngine(cfg)
    if cfg.engine == "vllm":
        from captioning.engines.vllm_offline import VLLMTextEngine

        return VLLMTextEngine(cfg)
    if cfg.engine == "transformers":
        from captioning.engines.transformers_local import TransformersTextEngine

        return TransformersTextEngine(cfg)
    raise ValueError(f"unknown text engine {cfg.engine!r}")
