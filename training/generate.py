"""Videos from a transformer, a VAE and a text encoder: the sampling loop and mp4 writing.

One floor below the tasks (validation samples during training) and `training sample` (the command
line), which both use it; it imports neither.
"""
from __future__ import annotations

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
                   progress: bool = False) -> torch.Tensor:
    """Latents [B, f, C, h, w] by DDIM/DPM with guidance (zeroed text as the unconditional branch)."""
    from tqdm import tqdm

    from model.diffusion import ddim_sample, dpm_sample, transformer_fn

    fn = transformer_fn(transformer, text_emb, guidance_scale=sample_cfg.guidance)
    sampler = ddim_sample if sample_cfg.sampler == "ddim" else dpm_sample
    gen = generator or torch.Generator().manual_seed(sample_cfg.seed)
    with tqdm(total=sample_cfg.steps, desc="sample", disable=not progress, dynamic_ncols=True) as bar:
        return sampler(fn, shape, schedule, num_steps=sample_cfg.steps, guidance_scale=sample_cfg.guidance,
                       dynamic_guidance=sample_cfg.dynamic_guidance, generator=gen, device=device,
                       dtype=torch.float32, callback=lambda *_: bar.update(1))


@torch.no_grad()
def generate(transformer: torch.nn.Module, vae: torch.nn.Module, text: torch.nn.Module, schedule: Any,
             prompts: list[str], frames: int, height: int, width: int, sample_cfg: Any,
             device: torch.device, text_emb: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Videos [B, F, C, H, W] in [-1, 1] for `prompts` (or for given T5 embeddings `text_emb` [B, L, D])."""
    s = vae.config.spatial_compression
    emb = text.encode(list(prompts)).float() if text_emb is None else text_emb.float()
    shape = (emb.shape[0], (frames - 1) // vae.config.temporal_compression + 1, vae.config.latent_channels,
             height // s, width // s)
    z = sample_latents(transformer, emb.to(device), schedule, shape, sample_cfg, device, progress=progress)
    dtype = next(vae.parameters()).dtype
    video = vae.decode((z / vae.scaling_factor).transpose(1, 2).to(dtype))  # [B, C, F, H, W]
    return video.float().transpose(1, 2).clamp(-1, 1)
