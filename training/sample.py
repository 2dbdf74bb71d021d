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
                   sample_cfg: Any, device: torch.device, generator: torch.Generator | None = None,
                   progress: bool = False, image_latents: torch.Tensor | None = None,
                   ofs: torch.Tensor | None = None) -> torch.Tensor:
    """Latents [B, f, C, h, w] by DDIM/DPM with guidance (zeroed text as the unconditional branch);
    image-to-video: `image_latents` [B, f, C, h, w] concatenated on channels at every step."""
    from tqdm import tqdm

    from model.diffusion import ddim_sample, dpm_sample, transformer_fn

    fn = transformer_fn(transformer, text_emb, guidance_scale=sample_cfg.guidance, image_latents=image_latents, ofs=ofs)
    sampler = ddim_sample if sample_cfg.sampler == "ddim" else dpm_sample
    gen = generator or torch.Generator().manual_seed(sample_cfg.seed)
    with tqdm(total=sample_cfg.steps, desc="sample", disable=not progress, dynamic_ncols=True) as bar:
        return sampler(fn, shape, schedule, num_steps=sample_cfg.steps, guidance_scale=sample_cfg.guidance,
                       dynamic_guidance=sample_cfg.dynamic_guidance, generator=gen, device=device,
                       dtype=torch.float32, callback=lambda *_: bar.update(1))


def load_images(paths: list[str], height: int, width: int, key: str = "--image") -> torch.Tensor:
    """Image files -> [N, 3, H, W] in [-1, 1], resized (Lanczos) to height x width as diffusers' I2V pipeline does."""
    from PIL import Image

    if not paths:
        raise ValueError(f"{key}: an image-to-video model needs a conditioning image")
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{key} {path!r}: no such file")
        img = Image.open(path).convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) * 2 - 1)
    return torch.stack(out)


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: torch.Tensor, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Images [B, 3, H, W] -> scaled image latents [B, 1, C, h, w], a posterior sample per image drawn
    from `generator` one image after the other (the order of CogVideoXImageToVideoPipeline)."""
    from model.i2v import image_scale

    dtype = next(vae.parameters()).dtype
    z = torch.cat([vae.encode(img[None, :, None].to(device, dtype)).sample(generator) for img in images])
    return (z.float() * image_scale(vae.scaling_factor, vae.config.invert_scale_latents)).transpose(1, 2)


def _image_inputs(transformer: torch.nn.Module, vae: torch.nn.Module, images: torch.Tensor | None, batch: int,
                  latent_frames: int, generator: torch.Generator, device: torch.device):
    """(conditioning latents, ofs, front padding) of an image-to-video model; (None, None, 0) otherwise."""
    from model.i2v import OFS, condition, front_padding, is_image_to_video

    c = transformer.config
    if not is_image_to_video(c.in_channels, c.out_channels):
        return None, None, 0
    if images is None:
        raise ValueError("--image: this is an image-to-video model; give the conditioning image")
    images = images.expand(batch, *images.shape[1:]) if images.shape[0] == 1 else images
    if images.shape[0] != batch:
        raise ValueError(f"--image: {images.shape[0]} images for {batch} prompts (give one, or one per prompt)")
    pad = front_padding(latent_frames, c.patch_size_t)
    cond = condition(encode_images(vae, images, generator, device), latent_frames + pad)
    ofs = torch.full((1,), OFS, device=device) if c.ofs_embed_dim else None
    return cond, ofs, pad


@torch.no_grad()
def generate(transformer: torch.nn.Module, vae: torch.nn.Module, text: torch.nn.Module, schedule: Any,
             prompts: list[str], frames: int, height: int, width: int, sample_cfg: Any,
             device: torch.device, text_emb: torch.Tensor | None = None, progress: bool = False,
             images: torch.Tensor | None = None) -> torch.Tensor:
    """Videos [B, F, C, H, W] in [-1, 1] for `prompts` (or for given T5 embeddings `text_emb` [B, L, D]);
    image-to-video models take `images` [1 or B, 3, H, W] in [-1, 1] (load_images)."""
    s = vae.config.spatial_compression
    emb = text.encode(list(prompts)).float() if text_emb is None else text_emb.float()
    f = (frames - 1) // vae.config.temporal_compression + 1
    gen = torch.Generator().manual_seed(sample_cfg.seed)  # image posteriors first, then the initial noise
    cond, ofs, pad = _image_inputs(transformer, vae, images, emb.shape[0], f, gen, device)
    shape = (emb.shape[0], f + pad, vae.config.latent_channels, height // s, width // s)
    z = sample_latents(transformer, emb.to(device), schedule, shape, sample_cfg, device, generator=gen,
                       progress=progress, image_latents=cond, ofs=ofs)[:, pad:]
    dtype = next(vae.parameters()).dtype
    video = vae.decode((z / vae.scaling_factor).transpose(1, 2).to(dtype))  # [B, C, F, H, W]
    return video.float().transpose(1, 2).clamp(-1, 1)


def load_pipeline(name: str, device: torch.device, lora: str | None = None, lora_scale: float = 1.0) -> dict[str, Any]:
    """Models of a CogVideoX diffusers pipeline (folder or hub name), with a LoRA file merged when given."""
    from training.lora import merge_lora_file
    from training.pipeline import load_pipeline_models

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
    lora = cfg.transformer.lora
    if lora:  # a LoRA run: load base + adapters as trained, then sample with the adapters merged
        from model.transformer import ExpertTransformer

        from training.lora import apply_lora, merged_state

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
    from training.config import SampleConfig

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
    from model.i2v import is_image_to_video

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
        from captioning.enhance import expand_prompts

        try:
            a.prompt = expand_prompts(a.prompt, a.enhance_prompt)
        except ValueError as e:  # a bad config or an LM that gave no expansion
            print(f"[training sample] error: {e}", file=sys.stderr, flush=True)
            return 2
    from training.parallelize import pick_device

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
