"""Sampling and export from training checkpoints.

    python -m training sample --checkpoint <run dir | checkpoint dir> --prompt "..." [--prompt ...] [--out dir]
    python -m training export --checkpoint <run dir | checkpoint dir> --out <folder>

Sampling rebuilds the transformer from the checkpoint's meta.json (its config and the training
section), loads its weights (the EMA when the run kept one) through DCP in this single process, runs
DDIM (or DPM) with classifier-free guidance, decodes with the frozen VAE and writes one mp4 per prompt.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch


def write_mp4(video: torch.Tensor, path: str, fps: int = 8) -> str:
    """video [F, C, H, W] in [-1, 1] -> H.264 mp4 (even sizes are padded: yuv420p needs them)."""
    import av

    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w = frames.shape[1:3]
    ph, pw = h + h % 2, w + w % 2
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            if (ph, pw) != (h, w):
                f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@torch.no_grad()
def sample_latents(transformer: torch.nn.Module, text_emb: torch.Tensor, schedule: Any, shape: tuple[int, ...],
                   sample_cfg: Any, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [B, f, C, h, w] by DDIM/DPM with guidance (zeroed text as the unconditional branch)."""
    from model.diffusion import ddim_sample, dpm_sample, transformer_fn

    fn = transformer_fn(transformer, text_emb, guidance_scale=sample_cfg.guidance)
    sampler = ddim_sample if sample_cfg.sampler == "ddim" else dpm_sample
    gen = generator or torch.Generator().manual_seed(sample_cfg.seed)
    return sampler(fn, shape, schedule, num_steps=sample_cfg.steps, guidance_scale=sample_cfg.guidance,
                   dynamic_guidance=sample_cfg.dynamic_guidance, generator=gen, device=device, dtype=torch.float32)


@torch.no_grad()
def generate(transformer: torch.nn.Module, vae: torch.nn.Module, text: torch.nn.Module, schedule: Any,
             prompts: list[str], frames: int, height: int, width: int, sample_cfg: Any,
             device: torch.device) -> torch.Tensor:
    """Videos [B, F, C, H, W] in [-1, 1] for `prompts`."""
    s = vae.config.spatial_compression
    shape = (len(prompts), (frames - 1) // vae.config.temporal_compression + 1, vae.config.latent_channels,
             height // s, width // s)
    emb = text.encode(list(prompts)).float().to(device)
    z = sample_latents(transformer, emb, schedule, shape, sample_cfg, device)
    dtype = next(vae.parameters()).dtype
    video = vae.decode((z / vae.scaling_factor).transpose(1, 2).to(dtype))  # [B, C, F, H, W]
    return video.float().transpose(1, 2).clamp(-1, 1)


def load_run(checkpoint: str, device: torch.device, ema: bool | None = None) -> dict[str, Any]:
    """Models of a transformer checkpoint for sampling: transformer (weights or EMA), frozen VAE, T5."""
    from training.checkpoint import load_weights, read_meta, resolve_checkpoint
    from training.config import TrainingConfig
    from training.tasks.transformer import (build_frozen_vae, build_schedule, build_text_encoder,
                                            build_transformer)

    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    if meta.get("task") != "transformer":
        raise ValueError(f"{path} is a {meta.get('task')!r} checkpoint: sampling needs a --task transformer run")
    cfg = TrainingConfig.model_validate(meta["config"])
    text = build_text_encoder(cfg, device)
    vae = build_frozen_vae(cfg, device)
    model = build_transformer(cfg, text.dim, vae.config.latent_channels, meta["model_config"])
    use_ema = meta.get("ema", False) if ema is None else ema
    load_weights(path, "transformer", model, ema=use_ema)
    return {"path": path, "cfg": cfg, "transformer": model.to(device).eval(), "vae": vae, "text": text,
            "schedule": build_schedule(cfg), "ema": use_ema}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training sample", description="Write mp4 samples from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir, its checkpoints/ folder or one step_X folder")
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable: one video each)")
    p.add_argument("--out", help="output folder (default: <run>/samples/cli)")
    p.add_argument("--steps", type=int, help="sampler steps (default: training.sample.steps)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: training.sample.guidance)")
    p.add_argument("--sampler", choices=["ddim", "dpm"], help="default: training.sample.sampler")
    p.add_argument("--frames", type=int, help="frames (default: training.sample.frames or data.frames)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--enhance-prompt", nargs="?", const="pipelines.yaml", metavar="CONFIG",
                   help="expand each prompt with the caption.enhance LM of CONFIG (default pipelines.yaml) first")
    a = p.parse_args(argv)
    original = list(a.prompt)
    if a.enhance_prompt:  # CogVideoX's prompt optimisation: short prompt -> the long style of training captions
        from captioning.enhance import expand_prompts

        try:
            a.prompt = expand_prompts(a.prompt, a.enhance_prompt)
        except ValueError as e:  # a bad config or an LM that gave no expansion
            print(f"[training sample] error: {e}", flush=True)
            return 2
    from training.parallelize import pick_device

    device = pick_device(a.device, 0)
    try:
        run = load_run(a.checkpoint, device, ema=False if a.no_ema else None)
    except (FileNotFoundError, ValueError) as e:
        print(f"[training sample] error: {e}", flush=True)
        return 2
    cfg = run["cfg"]
    s = cfg.sample.model_copy(update={k: v for k, v in (("steps", a.steps), ("guidance", a.guidance),
                                                        ("sampler", a.sampler), ("seed", a.seed)) if v is not None})
    frames = a.frames or s.frames or cfg.data.frames
    height, width = a.height or cfg.data.height, a.width or cfg.data.width
    video = generate(run["transformer"], run["vae"], run["text"], run["schedule"], a.prompt, frames, height, width,
                     s, device)
    out = a.out or os.path.join(os.path.dirname(os.path.dirname(run["path"])), "samples", "cli")
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
    from model.convert import save_diffusers

    from training.checkpoint import load_weights, read_meta, resolve_checkpoint

    path = resolve_checkpoint(a.checkpoint)
    meta = read_meta(path)
    if meta["task"] == "transformer":
        run = load_run(path, torch.device("cpu"), ema=False if a.no_ema else None)
        print(save_diffusers(run["transformer"], os.path.join(a.out, "transformer")))
        return 0
    from model.vae import CausalVAE, VAEConfig

    mc = dict(meta["model_config"])
    mc["block_out_channels"] = tuple(mc["block_out_channels"])
    vae = load_weights(path, "vae", CausalVAE(VAEConfig(**mc)))
    print(save_diffusers(vae, os.path.join(a.out, "vae")))
    return 0
