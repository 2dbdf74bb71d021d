"""CLIP classifiers on the shared frame embeddings: zero-shot classes from text prompts, and
linear-probe heads loaded from a file.

Zero-shot: each class is a list of prompts (their text embeddings are averaged, as in CLIP's prompt
ensembles); every frame gets a softmax over the classes plus the `background` class (what a good
clip looks like), scaled by the model's logit scale; the clip's score per class is the mean
probability over its sampled frames. Defaults are CogVideoX's negative classes.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.filters.base import ClipFrames, Rule, Scorer
from curation.filters.config import ScorerConfig, resolve_path


class ZeroShotClass(BaseModel):
    """One class: prompts describing it, and the mean probability above which a clip is dropped."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)  # text prompts; their embeddings are averaged
    max: float | None = Field(0.5, ge=0, le=1)  # drop when the clip's mean probability exceeds this (null: score only)


COGVIDEOX_NEGATIVES: dict[str, dict] = {
    "text": {"prompts": ["a video dominated by text", "subtitles over a video", "a slide full of text"]},
    "lecture": {"prompts": ["a lecture", "a talking head speaking to the camera", "a news anchor talking"]},
    "screen": {"prompts": ["a screenshot", "a screen recording of a computer", "a video game user interface"]},
    "low_quality": {"prompts": ["a blurry low quality video", "a noisy, pixelated, compressed video"]},
    "effects": {"prompts": ["a video editing transition effect", "a split screen with overlaid graphics"]},
}


class ZeroShotConfig(ScorerConfig):
    """filter.scorers.<name> with type: clip_zero_shot."""

    classes: dict[str, ZeroShotClass] = Field(
        default_factory=lambda: {k: ZeroShotClass(**v) for k, v in COGVIDEOX_NEGATIVES.items()})
    # The class the negatives compete against; its probability is written too (<name>_background).
    background: list[str] = ["a high quality video of a natural scene", "a cinematic shot", "a photo of people",
                             "a video of animals", "a landscape"]


class ZeroShotScorer(Scorer):
    Config = ZeroShotConfig
    step = "model"
    needs_embedding = True

    def metrics(self) -> dict[str, pa.DataType]:
        return {**{c: pa.float32() for c in self.cfg.classes}, "background": pa.float32()}

    def rules(self) -> list[Rule]:
        return super().rules() + [Rule(f"{self.name}_{c}", None, k.max) for c, k in self.cfg.classes.items()
                                  if k.max is not None and c not in self.cfg.thresholds]

    def setup(self, encoder: Any = None) -> None:
        prompts = [k.prompts for k in self.cfg.classes.values()] + [self.cfg.background]
        emb = [encoder.embed_texts(p).mean(axis=0) for p in prompts]
        w = np.stack(emb)
        self.text = (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)
        self.scale = encoder.logit_scale

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        logits = self.scale * embeddings @ self.text.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        mean = p.mean(axis=0)
        names = list(self.cfg.classes) + ["background"]
        return {n: float(v) for n, v in zip(names, mean)}


class LinearProbeConfig(ScorerConfig):
    """filter.scorers.<name> with type: linear_probe."""

    # .safetensors or .npz with `weight` (K, D) and `bias` (K,) over L2-normalised CLIP embeddings.
    path: str
    heads: list[str] = Field(min_length=1)  # names of the K outputs (columns <name>_<head>)
    activation: str = "sigmoid"  # sigmoid (independent heads) or softmax (one K-way head)

    _paths = field_validator("path")(resolve_path)

    @field_validator("activation")
    @classmethod
    def _act(cls, v: str) -> str:
        if v not in ("sigmoid", "softmax"):
            raise ValueError("activation must be sigmoid or softmax")
        return v


def load_probe(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"linear probe file {path!r} not found")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        d = load_file(path)
    else:
        d = dict(np.load(path))
    if "weight" not in d or "bias" not in d:
        raise ValueError(f"linear probe {path!r}: needs arrays `weight` (K, D) and `bias` (K,), has {list(d)}")
    return d["weight"].astype(np.float32), d["bias"].astype(np.float32)


class LinearProbeScorer(Scorer):
    Config = LinearProbeConfig
    step = "model"
    needs_embedding = True

    def metrics(self) -> dict[str, pa.DataType]:
        return {h: pa.float32() for h in self.cfg.heads}

    def setup(self, encoder: Any = None) -> None:
        self.w, self.b = load_probe(self.cfg.path)
        if self.w.shape[0] != len(self.cfg.heads):
            raise ValueError(f"linear probe {self.cfg.path!r} has {self.w.shape[0]} outputs, "
                             f"filter.scorers.{self.name}.heads names {len(self.cfg.heads)}")

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        if embeddings.shape[1] != self.w.shape[1]:
            raise ValueError(f"linear probe {self.cfg.path!r} expects {self.w.shape[1]}-dim embeddings, "
                             f"the CLIP model gives {embeddings.shape[1]}")
        z = embeddings @ self.w.T + self.b
        if self.cfg.activation == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-z))
        else:
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        return {h: float(v) for h, v in zip(self.cfg.heads, p.mean(axis=0))}
