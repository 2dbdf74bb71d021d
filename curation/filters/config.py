"""The `filter:` section of pipelines.yaml: frame sampling, the shared CLIP encoder, and the scorers.

Scorers are a mapping `name -> {type: ..., <the scorer's own keys>, thresholds: {...}}`. `type` is a
short name from `curation.filters.registry.REGISTRY` or an import path `package.module:Class`; the
entry is validated against that class's own `Config` model, so a typo in any scorer key fails at load
time naming the key. Pure pydantic: importing this module never imports torch or a scorer's model.
"""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import (Field, SerializeAsAny, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from curation.filters.registry import scorer_class
from curation.schema import Resources, Step, Strict as _Strict, step_resources  # noqa: F401 (Resources: re-exported, its old home)


class Threshold(_Strict):
    """A keep-rule on one score: the clip is dropped when the value is below `min` or above `max`."""

    min: float | None = None  # drop when score < min
    max: float | None = None  # drop when score > max

    @model_validator(mode="after")
    def _some(self) -> "Threshold":
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min, max or both")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


def resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """Relative local paths are relative to pipelines.yaml (load_config passes its folder as context)."""
    if not value or "://" in value or ":" in value.split("/", 1)[0] or os.path.isabs(value):
        return value
    base = (info.context or {}).get("base_dir") if info.context else None
    return os.path.join(base, os.path.expanduser(value)) if base else os.path.expanduser(value)


def resolve_model(value: str | None, info: ValidationInfo) -> str | None:
    """Like resolve_path, but a bare name (ViT-L-14) stays a name unless such a folder exists there."""
    if value and "/" not in value and not value.startswith("."):
        base = (info.context or {}).get("base_dir") if info.context else None
        if not (base and os.path.exists(os.path.join(base, value))):
            return value
    return resolve_path(value, info)


class ScorerConfig(_Strict):
    """Keys every scorer entry has; each scorer class extends this with its own typed `Config`."""

    type: str  # registry name (motion, aesthetic, clip_zero_shot, linear_probe) or "package.module:Class"
    enabled: bool = True  # false keeps the entry in the file but skips it (no columns, no rules)
    thresholds: dict[str, Threshold] = {}  # metric -> {min, max}; metric names are the scorer's columns without the "<name>_" prefix


class ClipModelConfig(_Strict):
    """The CLIP image encoder shared by every model-backed scorer (loaded once per actor)."""

    # A local folder in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors),
    # "hf-hub:org/repo", or a built-in open_clip architecture name (ViT-L-14, ViT-B-32, ...) with `pretrained`.
    model: str = "data/models/tiny-clip"
    pretrained: str | None = None  # with a built-in name: an open_clip tag (openai, laion2b_s32b_b82k) or a weights file
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # inference dtype on GPU (the CPU always runs fp32)
    # CLIP sees at most this many of a clip's sampled frames (evenly spread; null = all of them). CLIP is
    # the costly part on a CPU (bench/filter.py); motion always uses every sampled frame.
    max_frames: int | None = Field(4, ge=1)
    frame_batch: int = Field(64, ge=1)  # frames per CLIP forward pass (memory bound on GPU)
    _model = field_validator("model")(resolve_model)
    _paths = field_validator("pretrained")(resolve_model)


class FilterConfig(_Strict):
    """Filter stage: decode each clip once, score it, keep or drop it with reasons."""

    sample_fps: float = Field(2.0, gt=0)  # frames sampled per second of clip, shared by every scorer
    max_frames: int = Field(64, ge=2)  # at most this many sampled frames per clip (evenly thinned beyond)
    rescore: bool = False  # true: score every ok clip again, even those already in the scores table
    decode: Step = Step(resources=Resources(num_cpus=1, batch_size=1))  # CPU step: decode + CPU scorers (motion)
    model: Step = Step(resources=Resources(num_cpus=1, num_gpus=0, workers=1, batch_size=8))  # actor step: CLIP + model scorers
    clip: ClipModelConfig = ClipModelConfig()
    store_embedding: bool = True  # write each clip's mean CLIP embedding (L2-normalised) into the scores table
    # name -> scorer entry. Column names are "<name>_<metric>". Defaults: see pipelines.yaml.
    scorers: dict[str, SerializeAsAny[ScorerConfig]] = Field(default_factory=lambda: default_scorers())

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return step_resources(data, "filter", ("decode", "model"))  # filter.decode: {num_cpus ...} until the next release

    @field_validator("scorers", mode="before")
    @classmethod
    def _typed(cls, raw: Any, info: ValidationInfo) -> dict[str, ScorerConfig]:
        return validate_scorers(raw, info.context)

    def enabled_scorers(self) -> dict[str, ScorerConfig]:
        return {k: v for k, v in self.scorers.items() if v.enabled}


def validate_scorers(raw: Any, context: dict | None = None) -> dict[str, ScorerConfig]:
    """Each entry validated by its scorer class's own Config (errors name `scorers.<name>.<key>`)."""
    if not isinstance(raw, dict):
        raise ValueError("scorers must be a mapping of name -> {type: ..., ...}")

    out: dict[str, ScorerConfig] = {}
    for name, entry in raw.items():
        if not str(name).isidentifier():
            raise ValueError(f"scorer name {name!r} must be an identifier (it prefixes column names)")
        if isinstance(entry, ScorerConfig):
            out[name] = entry
            continue
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"scorers.{name}: needs a `type` (e.g. motion, aesthetic, clip_zero_shot)")
        try:
            klass = scorer_class(entry["type"])
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"scorers.{name}.type: {e}") from None
        try:
            out[name] = klass.Config.model_validate(entry, context=context)
        except ValidationError as e:
            msgs = "; ".join(f"scorers.{name}.{'.'.join(map(str, x['loc']))}: "
                             f"{'unknown key' if x['type'] == 'extra_forbidden' else x['msg']}"
                             for x in e.errors())
            raise ValueError(msgs) from None
        klass(name, out[name])  # checks threshold metric names against what the scorer writes
    return out


def default_scorers() -> dict[str, ScorerConfig]:
    """The defaults of pipelines.yaml: motion (flow), LAION aesthetic, CogVideoX negative classes."""
    return validate_scorers({
        "motion": {"type": "motion", "thresholds": {"mean": {"min": 0.01}}},
        "aesthetic": {"type": "aesthetic", "thresholds": {"mean": {"min": 4.5}}},
        "neg": {"type": "clip_zero_shot"},
    })
