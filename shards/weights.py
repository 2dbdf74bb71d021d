"""Score-aware sampling and score-to-text captions for the shard loader (`training.data.weights`).

A sample's weight is the expected number of times it is seen per epoch: the `expression` over its
scores (the `scores` of its .json, written by the shard stage), optionally mapped to quality `tiers`,
then flattened by `temperature` (w ** (1/T): T=1 keeps the weights, large T tends to 1 copy each).
The loader draws floor(w) copies plus one more with probability frac(w), from a generator seeded by
(seed, epoch, key): the same epoch repeats exactly (resume replays it), another epoch redraws.

`score_text` appends scores to the caption as Open-Sora does ("..., aesthetic score: 6.5."), so the
model can be conditioned on quality at sampling time.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curation import expr


class Tier(BaseModel):
    """One quality tier: samples whose expression value is >= `min` get `weight` (highest tier wins)."""

    model_config = ConfigDict(extra="forbid")
    min: float  # lower bound of the expression value
    weight: float = Field(ge=0)  # expected copies per epoch of the tier's samples


class SampleWeights(BaseModel):
    """`training.data.weights`: per-sample sampling weights and score-to-text captions (shards source)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    expression: str | None = None  # over the sample's scores, e.g. "aesthetic_mean"; null: every sample once
    tiers: list[Tier] = []  # map the value to tier weights; empty: the value itself is the weight
    below_tiers: float = Field(0.0, ge=0)  # weight of a value below every tier (0: left out)
    temperature: float = Field(1.0, gt=0)  # w ** (1/temperature): > 1 flattens towards one copy each
    missing: float = Field(1.0, ge=0)  # weight of a sample whose expression cannot be computed (no scores)
    max_weight: float = Field(10.0, gt=0)  # cap on copies per epoch (one sample never floods an epoch)
    score_text: dict[str, str] = {}  # scores column -> label appended to the caption, e.g. {aesthetic_mean: aesthetic score}
    score_text_digits: int = Field(1, ge=0, le=4)  # decimals of the appended scores

    @field_validator("expression")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        if v is not None:
            expr.parse(v)
        return v

    @model_validator(mode="after")
    def _tiers_need_expression(self) -> "SampleWeights":
        if self.tiers and self.expression is None:
            raise ValueError("tiers need an expression (the value the tiers are read from)")
        return self

    @property
    def active(self) -> bool:
        """Whether the loader has anything to do (weights or caption text)."""
        return self.expression is not None or bool(self.score_text)


def weight(scores: dict, cfg: SampleWeights) -> float:
    """The expected copies per epoch of a sample with these scores."""
    if cfg.expression is None:
        return 1.0
    cols = {k: np.array([v], np.float64) for k, v in scores.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        value = float(expr.evaluate(cfg.expression, cols)[0])
    except ValueError:  # a column this sample lacks
        value = math.nan
    if not math.isfinite(value):
        return cfg.missing
    if cfg.tiers:
        hit = [t for t in cfg.tiers if value >= t.min]
        w = max(hit, key=lambda t: t.min).weight if hit else cfg.below_tiers
    else:
        w = max(0.0, value)
    return min(cfg.max_weight, w ** (1.0 / cfg.temperature)) if w > 0 else 0.0


def copies(scores: dict, cfg: SampleWeights, seed: int, epoch: int, key: str) -> int:
    """How many times the sample appears in this epoch (stochastic rounding of its weight, seeded)."""
    w = weight(scores, cfg)
    whole = int(math.floor(w))
    h = hashlib.sha1(f"weights/{seed}/{epoch}/{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return whole + (1 if u < w - whole else 0)


def score_caption(caption: str, scores: dict, cfg: SampleWeights) -> str:
    """The caption with the configured scores appended ("a cat. aesthetic score: 6.5, motion score: 0.3.")."""
    parts = [f"{label}: {scores[col]:.{cfg.score_text_digits}f}" for col, label in cfg.score_text.items()
             if isinstance(scores.get(col), (int, float)) and math.isfinite(scores[col])]
    if not parts:
        return caption
    base = caption.rstrip()
    sep = "" if not base else (" " if base.endswith((".", "!", "?")) else ". ")
    return f"{base}{sep}{', '.join(parts)}."
