"""The `shard:` section of pipelines.yaml: the WebDataset writer and the training loader.

Pure pydantic (no torch): curation.config assembles it into PipelineConfig. The writer part is read by
`python -m vidcurate run pipelines.yaml --stage shard` (shards/writer.py), the loader part by
`shards.loader.ShardLoader` (the trainer builds it from the same file).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from curation.schema import Resources, Strict as _Strict


class WriterConfig(_Strict):
    """Which clips become samples, and how they are packed into tar files."""

    name: str = "default"  # shards land in <root>/shards/<name>/ (one folder per shard set)
    captions_run: str | None = None  # captions run under <root>/captions/<run>/; None = the latest one
    require_scores: bool = True  # True: a missing scores table is an error; False: every ok clip counts as passed
    # Captions with any of these quality flags (captioning.postprocess: empty, truncated, looping) are left
    # out; a truncated caption still describes its clip, so it is kept by default.
    drop_caption_flags: list[str] = ["empty", "looping"]
    # caption.checks whose "yes" leaves a clip out (e.g. [slideshow, overlay_text]): the captions row's
    # check_<name>_yes (P(yes) >= caption.checks.threshold); a clip without that answer is kept
    drop_caption_checks: list[str] = []
    target_shard_mb: float = Field(256.0, gt=0)  # a shard is closed before it would grow past this size
    max_samples_per_shard: int = Field(1000, ge=1)  # ... or once it holds this many samples
    seed: int = 0  # fixed seed of the shuffle across source videos (same inputs -> same shards)
    resources: Resources = Resources()  # one task per shard (it copies bytes: 1 CPU is plenty)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"shard set name {v!r} must be a plain folder name")
        return v


class Bucket(_Strict):
    """One batch shape: every sample of a batch is cropped/sampled to exactly this size."""

    frames: int = Field(ge=1)  # F = 4k+1 (1 = an image bucket); the VAE maps 4k+1 frames to k+1 latents
    height: int = Field(ge=8)  # pixels; a multiple of 8 (VAE downsampling)
    width: int = Field(ge=8)
    batch_size: int | None = Field(None, ge=1)  # per-bucket batch size (e.g. larger for images); None = loader.batch_size

    @model_validator(mode="after")
    def _shape(self) -> "Bucket":
        if (self.frames - 1) % 4:
            raise ValueError(f"frames={self.frames} must be 4k+1 (1, 5, 9, ..., 49)")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"{self.height}x{self.width} must be multiples of 8")
        return self


def _default_buckets() -> list[Bucket]:
    # Small shapes that the demo clips (>= 2 s, 96-128 px tall) fill; real runs list 480x720 etc.
    return [Bucket(frames=1, height=64, width=96), Bucket(frames=1, height=64, width=64),
            Bucket(frames=9, height=64, width=96), Bucket(frames=9, height=64, width=64),
            Bucket(frames=17, height=64, width=96), Bucket(frames=17, height=64, width=64)]


class LoaderConfig(_Strict):
    """The training loader (shards.loader.ShardLoader)."""

    shards: list[str] | None = None  # tar paths/URLs/globs/folders; None = <root>/shards/<writer.name>/
    fps: float = Field(8.0, gt=0)  # target frame rate of sampled clips (slower sources keep every frame)
    buckets: list[Bucket] = Field(default_factory=_default_buckets, min_length=1)  # allowed batch shapes
    batch_size: int = Field(2, ge=1)  # samples per batch (unless a bucket sets its own)
    shuffle_buffer: int = Field(64, ge=0)  # samples held for shuffling within a worker (0 = no shuffle)
    shuffle_shards: bool = True  # shard order reshuffled every epoch (seeded)
    random_start: bool = True  # clip window starts at a random (seeded) frame; False = from the first frame
    crop: Literal["center", "random"] = "center"  # where the bucket crop is taken after the aspect-keeping resize
    decoder: Literal["pyav", "decord"] = "pyav"  # mp4 decoder (decord is optional, x86_64 only)
    # Scorer whose black-border box (<name>_left/top/right/bottom in the sample's scores) is cropped away
    # before bucketing and resizing, so the model never sees letterbox/pillarbox bars; null keeps the bars.
    crop_borders: str | None = "borders"
    # Pixel type of batch["frames"]: uint8 (0..255, a quarter of the bytes; the trainer maps it to [-1, 1]
    # on its device with shards.pixels.unit_range) or float32 (already in [-1, 1], converted in the worker).
    frames_dtype: Literal["uint8", "float32"] = "uint8"
    decode_threads: int = Field(1, ge=0)  # codec threads per decode (0 = FFmpeg auto); workers already run in parallel
    num_workers: int = Field(2, ge=0)  # torch DataLoader worker processes per rank (0 = in the main process)
    prefetch_factor: int = Field(2, ge=1)  # batches each worker prepares ahead
    drop_last: bool = False  # False: partial bucket batches at the end of an epoch are emitted (every sample once)
    image_exts: list[str] = ["jpg", "jpeg", "png", "webp"]  # members treated as one-frame samples
    video_exts: list[str] = ["mp4", "webm", "mkv", "mov", "avi"]  # members decoded as videos

    @field_validator("shards")
    @classmethod
    def _shards(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("shards: give at least one path or URL, or null for the writer's output")
        return v


class ShardConfig(_Strict):
    """The `shard:` section: writer (stage) and loader (training input)."""

    writer: WriterConfig = WriterConfig()
    loader: LoaderConfig = LoaderConfig()
