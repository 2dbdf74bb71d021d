"""Sampling and export: from training checkpoints, or from any CogVideoX diffusers pipeline.

    python -m training sample --checkpoint <run dir | checkpoint dir> --prompt "..." [--prompt ...] [--out dir]
    python -m training sample --pipeline <folder | hub name> [--lora pytorch_lora_weights.safetensors] --prompt "..."
    ... --image first_frame.png        image-to-video models (5b-I2V, 1.5-I2V layouts): the conditioning image
    python -m training export --checkpoint <run dir | checkpoint dir> --out <folder>

From a checkpoint: the transformer is rebuilt from meta.json (its config and the training section),
its weights (the EMA when the run kept one; a LoRA run's adapters merged) loaded through DCP in this
single process. From a pipeline (published, exported by a run, plus optionally a LoRA file): our
modules are converted from its folders, and frames/height/width default to its own sample size. Then
DDIM (or DPM) with classifier-free guidance (zeroed text as the unconditional branch, as CogVideoX),
VAE decode, one mp4 per prompt.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from captioning.enhance import expand_prompts
from model.convert import save_diffusers
from model.i2v import is_image_to_video
from model.transformer import ExpertTransformer
from model.vae import CausalVAE, VAEConfig
from training.checkpoint import load_weights, read_meta, resolve_checkpoint
from training.config import SampleConfig, TrainingConfig
from training.generate import generate, load_images, sample_latents, write_mp4  # noqa: F401 (re-exported: their old home)
from training.lora import apply_lora, merge_lora_file, merged_state
from training.parallelize import pick_device
from training.pipeline import load_pipeline_models
from training.tasks.transformer import build_frozen_vae, build_schedule, build_text_encoder, build_transformer


def load_pipeline(name: str, device: torch.device, lora: str | None = None, lora_scale: float = 1.0) -> dict[str, Any]:
    """Models of a CogVideoX diffusers pipeline (folder or hub name), with a LoRA file merged when given."""
    run = load_pipeline_models(name, device)
    if lora:
        merge_lora_file(run["transformer"], lora, lora_scale)
    return run


def pipeline_size(run: dict[str, Any]) -> tuple[int, int, int]:
    """(frames, height, width) a pipeline generates by default: its transformer's sample size."""
    c, s = run["transformer"].config, run["vae"].config.spatial_compression
    return c.sample_frames, c.sample_height * s, c.sample_width * s


def load_run(checkpoint: str, device: torch.device, ema: bool | None = None) -> dict[str, Any]:
    """Models of a transformer checkpoint for sampling: transformer (weights or EMA), frozen VAE, T5."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    if meta.get("task") != "transformer":
        raise ValueError(f"{path} is a {meta.get('task')!r} checkpoint: sampling needs a --task transformer run")
    cfg = TrainingConfig.model_validate(meta["config"])
    text = build_text_encoder(cfg, device)
    vae = build_frozen_vae(cfg, device)
    model = build_transformer(cfg, text.dim, vae.config.latent_channels, meta["model_config"])
    use_ema = meta.get("ema", False) if ema is None else ema
    lora = cfg.transformer.lora
    if lora:  # a LoRA run: load base + adapters as trained, then sample with the adapters merged
        apply_lora(model, lora)
        load_weights(path, "transformer", model)
        merged = ExpertTransformer(model.config)
        merged.load_state_dict(merged_state(model.state_dict(), lora))
        model = merged
    else:
        load_weights(path, "transformer", model, ema=use_ema)
    return {"path": path, "cfg": cfg, "transformer": model.to(device).eval(), "vae": vae, "text": text,
            "schedule": build_schedule(cfg), "ema": use_ema}


def parser() -> argparse.ArgumentParser:
    """The `training sample` command line (other options plug in here)."""
    p = argparse.ArgumentParser(prog="python -m training sample",
                                description="Write mp4 samples from a training checkpoint or a CogVideoX pipeline.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run's out_dir, its checkpoints/ folder or one step_X folder")
    src.add_argument("--pipeline", help="a CogVideoX diffusers pipeline: folder (published, or a run's export/pipeline) or hub name")
    p.add_argument("--lora", help="with --pipeline: a CogVideoX LoRA file (pytorch_lora_weights.safetensors)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="multiplier of the LoRA update (default 1)")
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable: one video each)")
    p.add_argument("--out", help="output folder (default: <run>/samples/cli, or ./samples with --pipeline)")
    p.add_argument("--steps", type=int, help="sampler steps (default: training.sample.steps, 50 with --pipeline)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: training.sample.guidance, 6)")
    p.add_argument("--sampler", choices=["ddim", "dpm"], help="default: training.sample.sampler (ddim)")
    p.add_argument("--frames", type=int, help="frames (default: training.sample.frames or data.frames; the pipeline's)")
    p.add_argument("--height", type=int, help="default: data.height, or the pipeline's sample height")
    p.add_argument("--width", type=int, help="default: data.width, or the pipeline's sample width")
    p.add_argument("--seed", type=int)
    p.add_argument("--image", action="append", help="image-to-video: the conditioning image (once, or once per prompt; "
                                                    "default with --checkpoint: training.sample.images)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--enhance-prompt", nargs="?", const="pipelines.yaml", metavar="CONFIG",
                   help="expand each prompt with the caption.enhance LM of CONFIG (default pipelines.yaml) first")
    return p


def load_for_sampling(a: argparse.Namespace, device: torch.device) -> tuple[dict[str, Any], Any, tuple, str]:
    """(models, sample settings, (frames, height, width), default output folder) for parsed arguments."""
    if a.lora and not a.pipeline:
        raise ValueError("--lora goes with --pipeline (a LoRA run's checkpoint already holds its adapters)")
    if a.pipeline:
        run = load_pipeline(a.pipeline, device, a.lora, a.lora_scale)
        s, size, out = SampleConfig(), pipeline_size(run), os.path.join(os.getcwd(), "samples")
    else:
        run = load_run(a.checkpoint, device, ema=False if a.no_ema else None)
        cfg = run["cfg"]
        s = cfg.sample
        size = (s.frames or cfg.data.frames, cfg.data.height, cfg.data.width)
        out = os.path.join(os.path.dirname(os.path.dirname(run["path"])), "samples", "cli")
    s = s.model_copy(update={k: v for k, v in (("steps", a.steps), ("guidance", a.guidance),
                                               ("sampler", a.sampler), ("seed", a.seed)) if v is not None})
    size = (a.frames or size[0], a.height or size[1], a.width or size[2])
    return run, s, size, a.out or out


def conditioning_images(a: argparse.Namespace, run: dict[str, Any], s: Any, height: int,
                        width: int) -> torch.Tensor | None:
    """--image files (or a checkpoint's training.sample.images) for an image-to-video model; None for text-to-video."""
    c = run["transformer"].config
    if not is_image_to_video(c.in_channels, c.out_channels):
        if a.image:
            raise ValueError("--image: this is a text-to-video model (it takes no conditioning image)")
        return None
    from_run = a.checkpoint and not a.image  # a checkpoint's own validation images
    return load_images(a.image or (s.images if from_run else []), height, width,
                       "training.sample.images" if from_run else "--image")


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    original = list(a.prompt)
    if a.enhance_prompt:  # CogVideoX's prompt optimisation: short prompt -> the long style of training captions
        try:
            a.prompt = expand_prompts(a.prompt, a.enhance_prompt)
        except ValueError as e:  # a bad config or an LM that gave no expansion
            print(f"[training sample] error: {e}", file=sys.stderr, flush=True)
            return 2

    device = pick_device(a.device, 0)
    try:
        run, s, (frames, height, width), out = load_for_sampling(a, device)
    except (FileNotFoundError, ValueError) as e:
        print(f"[training sample] error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        images = conditioning_images(a, run, s, height, width)
    except (FileNotFoundError, ValueError) as e:
        print(f"[training sample] error: {e}", file=sys.stderr, flush=True)
        return 2
    video = generate(run["transformer"], run["vae"], run["text"], run["schedule"], a.prompt, frames, height, width,
                     s, device, progress=True, images=images)
    for i, v in enumerate(video):
        path = write_mp4(v, os.path.join(out, f"sample_{i:03d}.mp4"), s.fps)
        if a.enhance_prompt:  # the prompt the video was made from, next to it
            with open(path[:-4] + ".txt", "w") as f:
                f.write(f"{original[i]}\n\n{a.prompt[i]}\n")
        print(f"[training sample] {a.prompt[i]!r} -> {path}", flush=True)
    return 0


def export_main(argv: list[str]) -> int:
    """Export a checkpoint's trained model to a diffusers folder (single process)."""
    p = argparse.ArgumentParser(prog="python -m training export", description="Checkpoint -> diffusers folder.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true")
    a = p.parse_args(argv)

    path = resolve_checkpoint(a.checkpoint)
    meta = read_meta(path)
    if meta["task"] == "transformer":
        run = load_run(path, torch.device("cpu"), ema=False if a.no_ema else None)
        print(save_diffusers(run["transformer"], os.path.join(a.out, "transformer")))
        return 0

    mc = dict(meta["model_config"])
    mc["block_out_channels"] = tuple(mc["block_out_channels"])
    vae = load_weights(path, "vae", CausalVAE(VAEConfig(**mc)))
    print(save_diffusers(vae, os.path.join(a.out, "vae")))
    return 0
