"""Caption engines behind one interface (see base.Engine): `make_engine(cfg)` picks one by name.

Each engine module imports its heavy library (vllm, transformers, httpx) only when built, so the
stage, the config and the CLI import without them.
"""
from __future__ import annotations

from captioning.config import CaptionConfig
from captioning.engines.base import CaptionRequest, Engine, Generation, SamplingParams

__all__ = ["CaptionRequest", "Engine", "Generation", "SamplingParams", "make_engine"]


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
