"""The `training:` section of pipelines.yaml: typed, validated, pure pydantic (no torch import here).

One section drives both tasks (`--task vae|transformer` on the command line picks one). Defaults run
the embedded demo on a CPU in minutes with tiny models; the comments say what to change for real runs.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from curation.schema import Strict
from shards.config import Bucket
from shards.weights import SampleWeights


TINY_RANDOM = "tiny-random"  # the value of a model key that asks for a tiny random model (demo and tests only)


class DataConfig(Strict):
    """Where training clips come from and how they are batched."""

    source: Literal["shards", "synthetic", "latents", "cache"] = "shards"  # shards: the shard section's WebDataset loader; synthetic: generated moving patterns (benchmarks, smoke tests); latents: precomputed by `python -m training latents`
    # With source=shards, batch size and clip shapes come from shard.loader (batch_size, buckets, fps).
    batch_size: int = Field(1, ge=1)  # synthetic/latents: clips per rank per step (global batch = x world size)
    frames: int = Field(9, ge=1)  # synthetic: frames per clip; 8N+1 for the VAE task (9 -> 3 latent frames -> 9)
    height: int = Field(64, ge=8)  # synthetic: pixel height (multiple of 16 for the 2x2-patch transformer)
    width: int = Field(64, ge=8)  # synthetic: pixel width (same rule)
    image_ratio: float = Field(0.0, ge=0, le=1)  # share of steps trained on single frames (images as 1-frame videos)
    latents_dir: str | None = None  # source=latents: folder written by `python -m training latents` (None = <out_dir>/latents)
    synthetic_clips: int = Field(64, ge=1)  # source=synthetic: distinct clips before the stream repeats
    synthetic_seed: int = 0  # source=synthetic: seed of the generated patterns (held-out clips use another seed)
    cache_dir: str | None = None  # source=cache: the per-clip latent/text cache of `python -m training cache` (None = <root>/cache/latents)
    weights: SampleWeights = SampleWeights()  # source=shards: per-clip copies per epoch from scores, score-to-text captions (shards/weights.py)

    @model_validator(mode="after")
    def _sizes(self) -> "DataConfig":
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8 (got {self.height}x{self.width})")
        return self


class OptimConfig(Strict):
    """AdamW with linear warm-up then cosine decay (CogVideoX recipe: betas 0.9/0.95, wd 1e-4, clip 1.0)."""

    lr: float = Field(1e-4, gt=0)  # peak learning rate (fine-tuning 2b/5b: 1e-5)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = Field(1e-8, gt=0)  # AdamW epsilon
    weight_decay: float = Field(1e-4, ge=0)  # decoupled weight decay
    warmup_steps: int = Field(100, ge=0)  # linear warm-up from 0 to lr
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine ends at lr x this
    grad_clip: float = Field(1.0, gt=0)  # max global gradient norm per trained model
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimiser step (gradients averaged): effective batch = batch x grad_accum x ranks


class ParallelConfig(Strict):
    """FSDP2 layout and per-block tricks."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPU, gloo on CPU
    shard_size: int | None = Field(None, ge=1)  # ranks that shard one model copy; None = all ranks (FSDP); GPUs per node = hybrid sharding (HSDP) across nodes
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 compute with fp32 reductions on GPU, fp32 on CPU
    activation_checkpointing: bool = False  # recompute each block in backward (less memory, ~30% more compute)
    compile: bool = False  # torch.compile each block (GPU; first steps are slow while compiling)
    reshard_after_forward: bool = True  # free gathered block weights after forward (ZeRO-3); False keeps them (ZeRO-2, faster, more memory)
    cp_size: int = Field(1, ge=1)  # context parallelism: ranks that split one sample (transformer: its video tokens; vae: its frames); divides shard_size (or the world); they all get the same batch, so data-parallel size = world / cp_size
    cp_attention: Literal["auto", "ulysses", "allgather"] = "auto"  # exact attention over split tokens: ulysses (all-to-all, needs num_heads % cp_size == 0), allgather (gather K/V, any cp_size); auto = ulysses when the heads divide, else allgather


class CheckpointConfig(Strict):
    """torch.distributed.checkpoint snapshots under <out_dir>/checkpoints/step_XXXXXXXX."""

    every: int = Field(500, ge=1)  # save every N steps (and at the end of the run)
    keep: int = Field(3, ge=1)  # keep the last k checkpoints, delete older ones
    resume: bool = True  # continue from the latest checkpoint in out_dir when one exists
    export_diffusers: bool = True  # at the end, write safetensors in diffusers format to <out_dir>/export


class SampleConfig(Strict):
    """Sampling (DDIM + classifier-free guidance): validation videos during training and `training sample`."""

    every: int = Field(0, ge=0)  # write validation samples every N steps (0 = only with `training sample`)
    prompts: list[str] = ["a bright square moving to the right"]  # validation prompts
    steps: int = Field(50, ge=1)  # sampler steps
    guidance: float = Field(6.0, ge=1)  # classifier-free guidance scale (1 = no guidance)
    dynamic_guidance: bool = False  # cosine-growing guidance over the steps (CogVideoX option)
    sampler: Literal["ddim", "dpm"] = "ddim"  # DDIM, or the 2nd-order DPM variant
    frames: int | None = Field(None, ge=1)  # frames of sampled videos (None = data.frames)
    fps: int = Field(8, ge=1)  # frame rate written into the mp4
    seed: int = 0  # noise seed of validation samples
    images: list[str] = []  # image-to-video: conditioning image file per prompt (one file: used for every prompt)


class VAETaskConfig(Strict):
    """--task vae: the 3D causal VAE with L1 + KL + LPIPS + a 3D patch-discriminator GAN loss."""

    size: Literal["tiny", "2b", "5b"] = "tiny"  # model config: tiny (tests, demo) or the published CogVideoX VAE layout
    init_from: str | None = None  # diffusers AutoencoderKLCogVideoX folder to start from (None = random init)
    channels: list[int] | None = None  # override block_out_channels of `size` (e.g. [32, 32, 64, 64]); None = as published
    latent_channels: int | None = Field(None, ge=1)  # override latent channels of `size` (published: 16; tiny: 4)
    l1_weight: float = Field(1.0, ge=0)  # weight of the L1 reconstruction loss
    kl_weight: float = Field(1e-6, ge=0)  # weight of the KL term of the posterior
    lpips_weight: float = Field(0.1, ge=0)  # weight of LPIPS (used only when lpips_backbone and lpips_linear are given)
    lpips_backbone: str | None = None  # torchvision vgg16 state dict (.pth/.safetensors); None = no LPIPS
    lpips_linear: str | None = None  # LPIPS linear heads (the `lpips` package's weights/v0.1/vgg.pth)
    gan_start_step: int = Field(2000, ge=0)  # the discriminator and the GAN loss switch on at this step
    gan_weight: float = Field(0.5, ge=0)  # scale of the adaptive GAN weight (0 = no GAN)
    disc_channels: int = Field(32, ge=4)  # width of the first 3D patch-discriminator layer
    disc_layers: int = Field(3, ge=1)  # strided 3D conv layers of the discriminator
    disc_lr: float = Field(1e-4, gt=0)  # discriminator learning rate (same schedule shape as the VAE)



class LoraConfig(Strict):
    """LoRA adapters (peft) on the transformer's linear layers; only they train, the base stays frozen."""

    rank: int = Field(64, ge=1)  # r: inner dimension of each adapter (finetrainers/CogVideo scripts: 64-128)
    alpha: float = Field(64.0, gt=0)  # adapter output is scaled by alpha / rank (the scale is stored in the export)
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapter input during training
    targets: list[Literal["to_q", "to_k", "to_v", "to_out", "ff"]] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out"], min_length=1)  # attention projections; "ff" adds both feed-forward layers
    export_merged: bool = False  # at the end also write the merged full transformer (base + adapters) to <run>/export/transformer_merged


class TransformerTaskConfig(Strict):
    """--task transformer: v-prediction training of the expert transformer on frozen VAE latents and T5 text."""

    size: Literal["tiny", "2b", "5b", "1.5-5b"] = "tiny"  # model config: tiny (tests, demo) or a published CogVideoX size
    init_from: str | None = None  # a CogVideoX pipeline folder or hub name (transformer + VAE + T5 + schedule from it), or a CogVideoXTransformer3DModel folder; None = random init
    vae: str | None = None  # VAE weights: a diffusers AutoencoderKLCogVideoX folder or a `--task vae` run's export; None = init_from's pipeline vae/, else an error; "tiny-random" = fixed-seed random tiny VAE (demo, tests)
    text_encoder: str | None = None  # T5 folder (google/t5-v1_1-xxl layout) or hub name; None = init_from's pipeline text_encoder/, else an error; "tiny-random" = tiny random T5 (demo, tests)
    snr_shift_scale: float | None = Field(None, gt=0)  # schedule SNR shift (2b: 3.0, 5b: 1.0); None = init_from's scheduler, else by size
    zero_terminal_snr: bool | None = None  # rescale the schedule to zero terminal SNR; None = init_from's scheduler, else true
    lora: LoraConfig | None = None  # train LoRA adapters instead of every weight (None = full fine-tuning)
    max_text_len: int = Field(226, ge=1)  # T5 tokens per prompt (CogVideoX: 226)
    text_dropout: float = Field(0.1, ge=0, le=1)  # captions dropped to empty for classifier-free guidance
    ema_decay: float | None = Field(None, gt=0, lt=1)  # keep an EMA of the weights (e.g. 0.9999); None = off
    image_to_video: bool = False  # random init: build an image-to-video transformer (2x latent channels in; 1.5-5b: + ofs embedding); with init_from the model's own layout decides (true with a text-to-video model is an error)
    image_noise_mean: float = -3.0  # image-to-video: the first frame gets noise of sigma = exp(N(mean, std)) before encoding (CogVideoX: -3.0)
    image_noise_std: float = Field(0.5, ge=0)  # image-to-video: std of that log-sigma (CogVideoX: 0.5)

    @model_validator(mode="after")
    def _lora_ema(self) -> "TransformerTaskConfig":
        if self.lora is not None and self.ema_decay is not None:
            raise ValueError("ema_decay with lora: an EMA of the adapters is not supported (set one of them)")
        return self


class StageConfig(Strict):
    """One stage of progressive training (CogVideoX: low resolution and short clips first)."""

    until_step: int = Field(ge=1)  # this stage runs while the optimiser step is below this value
    buckets: list[Bucket] = Field(min_length=1)  # shard.loader buckets of this stage ({frames, height, width, batch_size?}); synthetic data: one bucket
    batch_size: int | None = Field(None, ge=1)  # samples per batch in this stage (None = shard.loader.batch_size / data.batch_size)
    lr: float | None = Field(None, gt=0)  # peak LR of this stage (the warm-up/cosine shape is kept); None = optim.lr


class TrainingConfig(Strict):
    """The whole `training:` section."""

    task: Literal["vae", "transformer"] = "transformer"  # default task; `--task` on the command line overrides
    out_dir: str = "training"  # run folder (checkpoints, logs, samples, export); relative = inside the dataset root
    steps: int = Field(200, ge=1)  # total optimiser steps: the LR schedule spans this many
    stop_at: int | None = Field(None, ge=1)  # stop (with a checkpoint) at this step without changing the schedule
    seed: int = 0  # base seed; each rank derives its own
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    log_every: int = Field(10, ge=1)  # log to console/TensorBoard every N steps
    nan_policy: Literal["skip", "stop"] = "skip"  # non-finite loss or gradient: skip the update, or stop with a message
    max_nan_skips: int = Field(5, ge=1)  # consecutive skipped steps before the run stops anyway
    measure_flops: bool | None = None  # count FLOPs of one step for MFU (None = on GPU only)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sample: SampleConfig = SampleConfig()
    vae: VAETaskConfig = VAETaskConfig()
    transformer: TransformerTaskConfig = TransformerTaskConfig()
    stages: list[StageConfig] = []  # progressive training: loader buckets (and LR) switch at step boundaries; [] = one stage

    @model_validator(mode="after")
    def _stop(self) -> "TrainingConfig":
        if self.stop_at is not None and self.stop_at > self.steps:
            raise ValueError(f"stop_at ({self.stop_at}) must be <= steps ({self.steps})")
        ends = [s.until_step for s in self.stages]
        if ends != sorted(set(ends)):
            raise ValueError(f"stages: until_step must increase from stage to stage (got {ends})")
        return self

    def stage_at(self, step: int) -> int:
        """Index of the stage that optimiser step `step` (0-based) trains in; the last stage runs on to the end."""
        for i, s in enumerate(self.stages):
            if step < s.until_step:
                return i
        return max(0, len(self.stages) - 1)


def resolve_out_dir(root: str, out_dir: str, task: str) -> str:
    """<root>/<out_dir>/<task> for a relative out_dir, <out_dir>/<task> for an absolute one."""
    if "://" in out_dir:
        raise ValueError(f"training.out_dir {out_dir!r}: checkpoints need a local or mounted shared folder")
    base = out_dir if os.path.isabs(out_dir) else os.path.join(root, out_dir)
    return os.path.join(base, task)
