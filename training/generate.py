"""Videos from a transformer, a VAE and a text encoder: the sampling loop and mp4 writing.

One floor below the tasks (validation samples during training) and `training sample` (the command
line), which both use it; it imports neither.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from model.diffusion import ddim_sample, dpm_sample, transformer_fn
from model.i2v import OFS, condition, front_padding, image_scale, is_image_to_video


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
    dtype = next(vae.parameters()).dtype
    z = torch.cat([vae.encode(img[None, :, None].to(device, dtype)).sample(generator) for img in images])
    return (z.float() * image_scale(vae.scaling_factor, vae.config.invert_scale_latents)).transpose(1, 2)


def _image_inputs(transformer: torch.nn.Module, vae: torch.nn.Module, images: torch.Tensor | None, batch: int,
                  latent_frames: int, generator: torch.Generator, device: torch.device):
    """(conditioning latents, ofs, front padding) of an image-to-video model; (None, None, 0) otherwise."""
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
