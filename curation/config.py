"""pipelines.yaml: typed, validated configuration of every stage.

`load_config` validates the whole file before any work: an unknown key, a wrong type, an impossible
value or a missing input fails with `ConfigError` naming the key path (e.g. `split.min_clip_s`).
Each package owns its section's model (captioning/config.py, shards/config.py, training/config.py,
curation/filters/config.py); this module assembles them. They are plain pydantic: no torch here.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from captioning.config import CaptionConfig
from curation.filters.config import FilterConfig
from shards.config import ShardConfig
from training.config import TrainingConfig


class ConfigError(ValueError):
    """A pipelines.yaml problem; the message names the key path and the reason."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Strict):
    """How a stage runs on Ray: its worker pool and what each worker holds."""

    num_cpus: float = Field(1.0, gt=0)  # CPUs reserved per worker (task or actor)
    num_gpus: float = Field(0.0, ge=0)  # GPUs per worker; fractional shares allowed
    workers: int | None = Field(None, ge=1)  # actor/task concurrency; None = as many as CPUs allow
    batch_size: int = Field(1, ge=1)  # rows handed to one call of the stage
    # Autoscaling pool (instead of a fixed `workers`): Ray Data starts min_workers actors and adds more,
    # up to max_workers (null = what the cluster holds), while the stage's input queue grows; tasks run
    # at most max_workers at once. The run manifest's accounting shows how many each stage used.
    min_workers: int | None = Field(None, ge=1)
    max_workers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _pool(self) -> "Resources":
        from curation.stage import check_pool

        check_pool(self.workers, self.min_workers, self.max_workers)
        return self


class RayConfig(Strict):
    """Where the Ray cluster is."""

    address: str | None = None  # None: connect to RAY_ADDRESS (set by `ray job submit`) or start a local Ray
    num_cpus: int | None = Field(None, ge=1)  # CPUs of the embedded local Ray (None = all)
    progress: bool = True  # show Ray Data progress bars
    # A local-folder root on a cluster of several nodes is refused (each node would write to its own
    # disk); true declares the folder a shared filesystem mounted at the same path on every node.
    shared_root: bool = False


class ProbeConfig(Strict):
    """Probe stage: metadata of every input file."""

    count_frames: bool = True  # decode packets to count frames when the container has no frame count
    resources: Resources = Resources(num_cpus=1, batch_size=4)


class SplitConfig(Strict):
    """Split stage: scene detection, clip rules and frame-accurate cutting."""

    detector: Literal["content", "adaptive", "stride"] = "content"  # PySceneDetect detector, or fixed windows
    threshold: float = Field(27.0, gt=0)  # content: HSV-delta threshold (27 = PySceneDetect default); adaptive: ratio (3.0)
    min_scene_len: int = Field(15, ge=1)  # minimum scene length in frames for the detector
    detect_width: int = Field(256, ge=16)  # frames are downscaled to this width for detection (speed)
    stride_s: float = Field(10.0, gt=0)  # window length for the "stride" detector
    min_clip_s: float = Field(2.0, gt=0)  # pieces shorter than this (after trimming) are dropped with a reason
    max_clip_s: float = Field(60.0, gt=0)  # longer scenes are cut into windows of at most this length
    trim_frames: int = Field(0, ge=0)  # frames dropped next to each detected cut (transition frames)
    max_height: int = Field(720, ge=16)  # clips are downscaled (never upscaled) to fit max_height x max_width
    max_width: int = Field(1280, ge=16)
    max_fps: float | None = Field(None, gt=0)  # frames are dropped to reach at most this fps; None keeps the source rate
    crf: int = Field(20, ge=0, le=51)  # libx264 quality of the re-encoded clips
    preset: str = "veryfast"  # libx264 preset (PySceneDetect's split-video uses veryfast)
    resources: Resources = Resources(num_cpus=1, batch_size=1)

    @model_validator(mode="after")
    def _lengths(self) -> "SplitConfig":
        if self.max_clip_s < self.min_clip_s:
            raise ValueError(f"max_clip_s ({self.max_clip_s}) must be >= min_clip_s ({self.min_clip_s})")
        return self


class PipelineConfig(Strict):
    """The whole of pipelines.yaml."""

    root: str  # dataset root: local folder or object-store URI (s3://..., gs://...)
    inputs: list[str] = Field(min_length=1)  # globs of local paths or object-store URIs of raw videos
    ray: RayConfig = RayConfig()
    probe: ProbeConfig = ProbeConfig()
    split: SplitConfig = SplitConfig()
    filter: FilterConfig = FilterConfig()
    caption: CaptionConfig = CaptionConfig()
    shard: ShardConfig = ShardConfig()
    training: TrainingConfig = TrainingConfig()


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = _loc(e["loc"]) or "<top level>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides; values are parsed as YAML (so 3, true, [a, b] work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str, overrides: list[str] | None = None, check_inputs: bool = True) -> PipelineConfig:
    """Read, override and validate pipelines.yaml. Raises ConfigError naming each bad key."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(open(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    # Relative local paths in the file are relative to the file, so the file can move with its data.
    base = os.path.dirname(os.path.abspath(path))
    if isinstance(data.get("root"), str) and "://" not in data["root"]:
        data["root"] = os.path.join(base, os.path.expanduser(data["root"]))
    if isinstance(data.get("inputs"), list):
        data["inputs"] = [i if not isinstance(i, str) or "://" in i else os.path.join(base, os.path.expanduser(i))
                          for i in data["inputs"]]
    try:
        cfg = PipelineConfig.model_validate(data, context={"base_dir": base})  # sections resolve relative paths
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid configuration\n{_format(e)}") from None
    if check_inputs:
        from curation.storage import expand_inputs
        missing = [p for p in cfg.inputs if not expand_inputs([p])]
        if missing:
            raise ConfigError(f"{path}: inputs: no file matches {', '.join(missing)}")
    return cfg
