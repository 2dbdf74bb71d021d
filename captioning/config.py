"""The `caption` section of pipelines.yaml.

Plain pydantic (no torch, no vllm: curation.config imports this to validate the whole file before any
work). Every knob of the caption stage and of `python -m captioning recaption` lives here.
"""
from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, RootModel, ValidationInfo, field_validator, model_validator

from captioning.prompts import check_placeholders
from curation.config import ConfigError, apply_overrides
from curation.schema import Resources, Step, Strict as _Strict, deprecated, move_key, warnings_at


def local_model(value: str, info: ValidationInfo) -> str:
    """A model value that names a folder relative to pipelines.yaml becomes that folder's absolute path:
    when the folder exists there, or lies under demo.models (where the demo builds it). Anything else stays
    as written: a hub name (org/name), packaged:<name>, an absolute path, an OpenAI-served model name. So a
    copied pipelines.yaml finds its models whatever the working directory. A relative path with two or more slashes
    (it cannot be a hub name) is taken as a folder of the file's even when it is missing."""
    ctx = info.context or {}
    base = ctx.get("base_dir")
    if (not base or not value or info.data.get("engine") == "openai" or os.path.isabs(value)
            or "://" in value or ":" in value.split("/", 1)[0]):
        return value
    local = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if os.path.exists(local) or _under_demo_models(local, ctx.get("file") or {}, base):
        return local
    # two or more slashes cannot be a hub name (org/name): the file's folder even while missing (built
    # later, or on worker nodes only); runs of other stages are not refused over it
    return local if value.count("/") >= 2 else value


def _demo_folder(whole: dict, base: str) -> str | None:
    """The file's `demo.models` folder resolved against the file's folder (a URI as written; None: off)."""
    demo = whole.get("demo") if isinstance(whole, dict) else None
    folder = demo.get("models") if isinstance(demo, dict) else None
    if not isinstance(folder, str) or "://" in folder:
        return folder if isinstance(folder, str) else None
    return os.path.join(base, os.path.expanduser(folder))


def _under_demo_models(path: str, whole: dict, base: str) -> bool:
    folder = _demo_folder(whole, base)
    return bool(folder) and "://" not in folder and path.startswith(os.path.normpath(folder) + os.sep)

class OpenAIEngineConfig(_Strict):
    """Any OpenAI-compatible chat endpoint (`vllm serve`, `transformers serve`, a hosted API)."""

    base_url: str = "http://127.0.0.1:8000/v1"  # the server's /v1 root
    api_key_env: str | None = "OPENAI_API_KEY"  # env var holding the key (sent as Bearer; never logged); on a
    # cluster the workers need it too: `ray job submit --runtime-env-json '{"env_vars": {...}}'`
    concurrency: int = Field(8, ge=1)  # requests in flight per worker (the server batches them)
    timeout_s: float = Field(300.0, gt=0)  # per request, connect + generate
    max_retries: int = Field(3, ge=0)  # re-sends after a connection error, timeout, 429 or 5xx
    backoff_s: float = Field(1.0, ge=0)  # first retry delay; doubles each retry (with jitter)
    video_as: Literal["frames", "video_url"] = "frames"  # sampled JPEG frames as images, or the clip mp4 as a video_url
    # How a JSON schema (caption.fields) is sent: OpenAI's standard response_format, or vLLM's own
    # structured_outputs with compact JSON (no free whitespace: a weak model cannot stall in blank space)
    structured: Literal["response_format", "vllm"] = "response_format"


class VLLMEngineConfig(_Strict):
    """vLLM's offline engine (`vllm.LLM`), one per Ray actor."""

    tensor_parallel_size: int = Field(1, ge=1)  # GPUs one model is split over (the actor reserves as many)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of each GPU vLLM may take (weights + KV cache)
    max_model_len: int | None = Field(None, ge=256)  # context length; None = the model's own
    dtype: str = "auto"  # "auto", "bfloat16", "float16", "float32" (CPU)
    enforce_eager: bool = False  # skip CUDA graphs (faster start, slower steps)
    max_num_seqs: int | None = Field(None, ge=1)  # concurrent sequences in the engine; None = vLLM's default
    seed: int = 0  # sampling seed of the engine
    load_format: Literal["auto", "dummy"] = "auto"  # "dummy": random weights of the model's shape (throughput checks without a download, bench/gpu.py)


class TransformersEngineConfig(_Strict):
    """transformers in this process: small models, and the default when no server or GPU is set up."""

    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda:0", ...
    dtype: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bfloat16", "float16", "float32"
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"; None = transformers' choice


ENGINE_KINDS = ("transformers", "vllm", "openai")


class EngineConfig(_Strict):
    """One entry of the top-level `engines:` table: a language model and how it runs. The caption steps
    (caption, caption.summary, caption.enhance) name an entry as their `engine` instead of repeating it."""

    engine: Literal["transformers", "vllm", "openai"] = "transformers"  # which engine runs the model
    model: str  # local folder, hub name or packaged:<name> (openai: the served model name)
    openai: OpenAIEngineConfig = OpenAIEngineConfig()  # engine openai: the server
    vllm: VLLMEngineConfig = VLLMEngineConfig()  # engine vllm: vllm.LLM settings
    transformers: TransformersEngineConfig = TransformersEngineConfig()  # engine transformers: device, dtype

    _model = field_validator("model")(local_model)


class EnginesConfig(RootModel[dict[str, EngineConfig]]):
    """The `engines:` section: name -> EngineConfig (empty by default: every step gives its engine inline)."""

    root: dict[str, EngineConfig] = {}


def named_engine(data: object, key: str, info: ValidationInfo) -> object:
    """Before validation of a step with an engine: `engine: <name>` of the `engines:` table replaced by that
    entry's keys (engine kind, model, openai/vllm/transformers). The step setting one of them too is an
    error naming both keys; an unknown name is an error listing the names."""
    if not isinstance(data, dict) or data.get("engine") is None or data["engine"] in ENGINE_KINDS:
        return data
    name = data["engine"]
    table = ((info.context or {}).get("file") or {}).get("engines") or {}
    if not isinstance(table, dict) or name not in table:
        raise ValueError(f"{key}.engine: {name!r} is neither an engine kind ({', '.join(ENGINE_KINDS)}) nor a name "
                         f"in engines ({', '.join(map(str, table)) if isinstance(table, dict) and table else 'none'})")
    entry = table[name]
    if not isinstance(entry, dict):
        return data  # the engines section's own validation names the bad entry
    both = sorted(set(entry) & (set(data) - {"engine"}))
    if both:
        raise ValueError(f"{key}.{both[0]} is set by engines.{name} ({key}.engine: {name}): set it there only")
    return {**data, **entry, "engine": entry.get("engine", "transformers")}


class TextLMConfig(_Strict):
    """A text-only language model (the summary of frame captions, caption enhancement, prompt expansion)."""

    # which engine generates: a name in the `engines:` table (its model and settings), or a kind with the
    # model and the kind's settings given here
    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = "Qwen/Qwen2.5-7B-Instruct"  # local folder or hub name (openai: the served model name)
    KEY: ClassVar[str] = "caption.summary"  # its key in pipelines.yaml (messages)
    # Deprecated (use demo.models): build the tiny random text LM at `model` when that folder is missing.
    demo_model: bool = False
    prompt: str = "summary-v1"  # name of a versioned template in captioning/prompts.py
    prompt_text: str | None = None  # a custom template instead (same placeholders as the named one)
    max_tokens: int = Field(512, ge=1)  # new tokens per output
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling when temperature > 0
    openai: OpenAIEngineConfig = OpenAIEngineConfig()
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    transformers: TransformersEngineConfig = TransformersEngineConfig()
    # Its own Ray actors. Keep num_cpus apart from the caption step's: Ray Data would otherwise be free to
    # fuse the two model steps into one worker.
    resources: Resources = Resources(num_cpus=0.25, workers=1, batch_size=8)

    @field_validator("prompt_text")
    @classmethod
    def _known_placeholders(cls, v: str | None, info: "object") -> str | None:
        if v is not None:
            check_placeholders(v, info.data.get("prompt", "summary-v1"))
        return v

    _model = field_validator("model")(local_model)

    @model_validator(mode="before")
    @classmethod
    def _named_engine(cls, data: object, info: ValidationInfo) -> object:
        return named_engine(data, cls.KEY, info)

    @field_validator("demo_model")
    @classmethod
    def _old_demo_switch(cls, v: bool) -> bool:
        if v:
            deprecated(f"{cls.KEY}.demo_model", "demo.models (the folder the tiny random models are built in)")
        return v


class SummaryConfig(TextLMConfig):
    """mode frames_then_summary: key frames captioned one by one, then summarised by a text LM."""

    KEY: ClassVar[str] = "caption.summary"

    keyframe_every_s: float = Field(2.0, gt=0)  # one key frame per this many seconds of clip (from t=0)
    max_keyframes: int = Field(16, ge=1)  # cap; longer clips get this many, evenly spread
    frame_prompt: str = "frame-v1"  # template of the image caption of one key frame
    video_prompt: str | None = None  # also caption the whole clip with this template (e.g. short-v1) and
    # give that short video caption to the summary; None = frame captions only


class EnhanceConfig(TextLMConfig):
    """A text-LM rewrite of every caption of one run, written as a new run (the source run stays)."""

    KEY: ClassVar[str] = "caption.enhance"

    enabled: bool = False  # run it after the caption stage (`python -m captioning enhance` runs it any time)
    source_run: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")  # run to rewrite; None = caption.run
    run: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")  # output run; None = <source_run>-enhanced
    prompt: str = "enhance-v1"  # template; placeholders {caption}, {target_words}, {style}, {camera}
    target_words: int = Field(120, ge=5)  # length the rewrite aims at
    style: str = "one fluent paragraph in the present tense, concrete and visual"  # wording of the style
    require_camera_motion: bool = True  # with the scores table's motion_camera_type: the rewrite must name it
    # (checked; a rewrite that does not is retried once, then flagged `no_camera_motion`)
    expand_prompt: str = "expand-v1"  # template of `python -m training sample --enhance-prompt`


# MiraData's structured caption fields (name -> what the field holds; the model is told both).
MIRADATA_FIELDS = {
    "short": "one sentence: the main subject, the action and the setting",
    "dense": "a detailed paragraph: subjects, actions in order, setting, lighting, colors, camera",
    "main_object": "the main subject or object and its appearance",
    "background": "the setting and background",
    "style": "the visual style (e.g. realistic footage, animation, screen recording), lighting and colors",
    "camera_movement": "how the camera moves: static, pan, tilt, zoom, tracking, handheld",
}


class FieldsConfig(_Strict):
    """caption.fields: a structured caption per clip, JSON fields checked against a schema, stored as
    `field_<name>` columns of the captions table (and carried into the shards' metadata)."""

    enabled: bool = False  # ask for the fields after the caption, in the same engine batch
    names: dict[str, str] = Field(default_factory=lambda: dict(MIRADATA_FIELDS))  # field -> what it holds
    max_tokens: int = Field(384, ge=16)  # new tokens of the JSON answer
    max_chars: int = Field(1500, ge=8)  # longest value of one field (the schema's maxLength: a constrained
    # decoder must close every string in time, so the answer fits max_tokens)
    retry_bad: int = Field(1, ge=0)  # re-generations of an answer that fails the schema (then flagged
    # `fields_invalid`, columns null)

    @field_validator("names")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        if not v:
            raise ValueError("at least one field is needed")
        bad = [k for k in v if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", k)]
        if bad:
            raise ValueError(f"field names must be lower_snake_case identifiers (column field_<name>): {bad}")
        return v


# Cosmos-Curate's VLM rejection criteria as yes/no questions ("yes" = the clip has the problem).
COSMOS_CHECKS = {
    "slideshow": "Is this video a slideshow of still images rather than continuous footage?",
    "synthetic": "Is this video synthetic: computer graphics, a game, or a screen recording?",
    "video_in_video": "Does this video show another video playing inside it (a screen, a picture-in-picture)?",
    "overlay_text": "Does this video have text added in post-production (subtitles, titles, watermarks)?",
    "rotated": "Is the view of this video rotated or upside down?",
    "low_resolution": "Is this video of very low resolution or heavily pixelated?",
    "blurred_region": "Does this video have a blurred-out region (a face or a plate blurred on purpose)?",
    "abrupt_camera": "Does the camera move abruptly or shake strongly in this video?",
    "fast_zoom": "Does this video zoom in or out very fast?",
    "unnatural_speed": "Does this video play at an unnatural speed (sped up, slowed down or reversed)?",
}


class ChecksConfig(_Strict):
    """caption.checks: yes/no questions the VLM answers about each clip right after its caption (same frames:
    a prefix-caching engine reuses them), stored as check_<name> = P(yes) and check_<name>_yes columns."""

    enabled: bool = False  # ask the questions (one engine batch for every clip x question)
    questions: dict[str, str] = Field(default_factory=lambda: dict(COSMOS_CHECKS))  # name -> yes/no question
    threshold: float = Field(0.5, gt=0, lt=1)  # check_<name>_yes = P(yes) >= this
    logprobs: int = Field(20, ge=2, le=20)  # first-token candidates read for "yes"/"no" (OpenAI allows <= 20)

    @field_validator("questions")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        bad = [k for k in v if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", k) or k.endswith("_yes")]
        if bad:
            raise ValueError(f"check names must be lower_snake_case, not ending in _yes (column check_<name>): {bad}")
        return v


class WindowsConfig(_Strict):
    """caption.windows: long clips captioned in overlapping windows (Cosmos-Curate: 256-frame windows), each
    window sampled like a clip (sample_fps, max_frames), then merged into one caption (mode video)."""

    window_s: float | None = Field(None, gt=0)  # window length in seconds; None = one request per clip; a clip
    # no longer than this is one request as before
    overlap_s: float = Field(0.0, ge=0)  # seconds each window shares with the previous one (context across cuts)

    @model_validator(mode="after")
    def _overlap(self) -> "WindowsConfig":
        if self.window_s is not None and self.overlap_s >= self.window_s:
            raise ValueError(f"caption.windows.overlap_s ({self.overlap_s}) must be < window_s ({self.window_s})")
        return self


class CaptionConfig(_Strict):
    """Caption stage: which engine/model/prompt captions which clips, into which captions run."""

    run: str = Field("default", pattern=r"^[A-Za-z0-9._-]+$")  # run name: rows go to <root>/captions/<run>/
    mode: Literal["video", "frames_then_summary"] = "video"  # one VLM call per clip, or CogVideoX's recipe:
    # key-frame image captions with their times, then a text LM (`summary`) writes the dense caption
    # which engine captions: a kind (model and the kind's settings below), or a name in `engines:`
    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # local folder or hub name (openai: the served model name)
    # Deprecated (use demo.models): build the tiny random Qwen2.5-VL at `model` when that folder is missing.
    demo_model: bool = False
    prompt: str = "dense-v1"  # name of a versioned template in captioning/prompts.py
    prompt_text: str | None = None  # a custom prompt instead of the template (its hash is stored the same way)
    video_input: Literal["video", "frames"] = "video"  # frames go in as one video (with fps metadata) or as images
    sample_fps: float = Field(1.0, gt=0)  # frames sampled per second of clip (CogVLM2-Caption: ~1 fps)
    max_frames: int = Field(24, ge=1)  # cap; longer clips are sampled uniformly down to this many
    min_frames: int = Field(2, ge=1)  # floor for very short clips (Qwen-VL videos need >= 2)
    max_side: int = Field(448, ge=28)  # frames are downscaled so the longer side is at most this (pixels)
    jpeg_quality: int = Field(90, ge=1, le=100)  # JPEG quality of the encoded frames
    max_tokens: int = Field(512, ge=1)  # new tokens per caption (CogVLM2-Caption allows up to 2048)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy (CogVLM2-Caption decodes near-greedy)
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling when temperature > 0
    retry_bad: int = Field(1, ge=0)  # re-generations of an empty/truncated/looping caption before flagging it
    only_kept: bool = True  # caption only kept clips: passed, not a duplicate, selected (curation/kept.py; no scores table: all ok clips)
    sink_every: int = Field(8, ge=1)  # caption rows per written Parquet part (smaller = less lost on a kill)
    openai: OpenAIEngineConfig = OpenAIEngineConfig()
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    transformers: TransformersEngineConfig = TransformersEngineConfig()
    frames: Step = Step(resources=Resources(num_cpus=1, batch_size=4))  # CPU step: decode + JPEG (Ray tasks)
    # Engine step. Its CPU share differs from frames.resources on purpose: Ray Data fuses consecutive steps
    # with equal resources into one worker, which would put frame decoding back inside the engine actor.
    resources: Resources = Resources(num_cpus=0.5, workers=1, batch_size=8)
    summary: SummaryConfig = SummaryConfig()  # the text LM of mode frames_then_summary
    enhance: EnhanceConfig = EnhanceConfig()  # the optional rewrite pass into a new run
    fields: FieldsConfig = FieldsConfig()  # structured caption fields (JSON, schema-checked, columns field_*)
    windows: WindowsConfig = WindowsConfig()  # long clips in windows, merged (window_captions column)
    checks: ChecksConfig = ChecksConfig()  # yes/no VLM questions per clip (columns check_<name>, check_<name>_yes)

    _model = field_validator("model")(local_model)

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: object, info: ValidationInfo) -> object:
        data = named_engine(data, "caption", info)  # engine: <a name in engines>
        return move_key(data, "caption", "frames_resources", "frames.resources")  # the previous release's key

    @field_validator("demo_model")
    @classmethod
    def _old_demo_switch(cls, v: bool) -> bool:
        if v:
            deprecated("caption.demo_model", "demo.models (the folder the tiny random models are built in)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "CaptionConfig":
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})")
        if self.windows.window_s is not None and self.mode != "video":
            raise ValueError("caption.windows.window_s: windows apply to mode video only")
        if self.checks.enabled and self.mode != "video":
            raise ValueError("caption.checks.enabled: checks are asked in mode video only")
        if self.fields.enabled and self.mode != "video":
            raise ValueError("caption.fields.enabled: structured fields are asked in mode video only")
        if self.engine == "vllm" and self.resources.num_gpus and \
                self.resources.num_gpus < self.vllm.tensor_parallel_size:
            raise ValueError(f"resources.num_gpus ({self.resources.num_gpus}) must be >= "
                             f"vllm.tensor_parallel_size ({self.vllm.tensor_parallel_size})")
        return self


def load_caption_config(path: str | None, overrides: list[str], run: str | None) -> "object":
    """The `caption` section of pipelines.yaml (defaults without a file), with overrides; exits on errors."""
    import os

    import yaml
    from pydantic import ValidationError

    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path) as f:
            whole = yaml.safe_load(f) or {}
    else:
        whole = {}
    data = apply_overrides(whole.get("caption") or {}, overrides)
    if run:
        data["run"] = run
    try:
        with warnings_at(path or "pipelines.yaml"):
            # file: the `engines:` table and demo.models; base_dir: relative model folders are the file's
            base = os.path.dirname(os.path.abspath(path)) if path else None
            return CaptionConfig.model_validate(data, context={"file": whole, "base_dir": base})
    except ValidationError as e:
        lines = [f"  caption.{'.'.join(map(str, err['loc']))}: "
                 f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}" for err in e.errors()]
        raise ConfigError("invalid caption configuration\n" + "\n".join(lines)) from None


def demo_models_of(path: str | None) -> str | None:
    """The file's `demo.models` folder (relative to the file), for the captioning commands that read only the
    caption section (recaption, enhance, prompt expansion); None without a file or the switch."""
    import yaml

    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        whole = yaml.safe_load(f) or {}
    return _demo_folder(whole, os.path.dirname(os.path.abspath(path)))
