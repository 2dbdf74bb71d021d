"""Image-to-video conditioning of CogVideoX (5b-I2V, 1.5-5B-I2V), as the published pipelines lay it out.

The image (a clip's first frame) is encoded alone by the VAE to one latent frame, scaled, padded with
zero latent frames to the video's length and concatenated to the noisy video latents on channels, so
the transformer sees 2C channels in and predicts C. Training adds noise to the image in pixel space
first (sigma = exp(N(-3, 0.5)) per sample, the CogVideoX recipe and diffusers' I2V training script),
so the model does not copy the conditioning frame's exact pixels. 1.5 models patch pairs of latent
frames: sampling pads the video latents by one frame at the front when their count is odd (dropped
after sampling), exactly as `CogVideoXImageToVideoPipeline` does.
"""
from __future__ import annotations

import torch

OFS = 2.0  # the value of 1.5-I2V's "ofs" input in the published pipeline (fixed at sampling and training)


def is_image_to_video(in_channels: int, out_channels: int) -> bool:
    """An I2V transformer takes the image latents as extra input channels."""
    return in_channels == 2 * out_channels


def image_scale(scaling_factor: float, invert_scale_latents: bool) -> float:
    """Factor of the image latents: the VAE's scaling factor (5b-I2V), or its inverse for 1.5's VAE
    (invert_scale_latents: how the 1.5 model was trained, which its pipeline reproduces)."""
    return 1.0 / scaling_factor if invert_scale_latents else scaling_factor


def noise_images(images: torch.Tensor, generator: torch.Generator | None, mean: float = -3.0,
                 std: float = 0.5) -> torch.Tensor:
    """images [B, C, H, W] in [-1, 1] + sigma * N(0, 1), sigma = exp(N(mean, std)) per image; draws on CPU."""
    sigma = torch.exp(torch.randn(images.shape[0], generator=generator) * std + mean)
    noise = torch.randn(images.shape, generator=generator)
    return images + (sigma.view(-1, 1, 1, 1) * noise).to(images)


def condition(image_latents: torch.Tensor, frames: int) -> torch.Tensor:
    """Image latents [B, 1, C, h, w] -> [B, frames, C, h, w]: the image frame, then zeros."""
    pad = image_latents.new_zeros(image_latents.shape[0], frames - 1, *image_latents.shape[2:])
    return torch.cat([image_latents, pad], dim=1)


def front_padding(latent_frames: int, patch_size_t: int | None) -> int:
    """Latent frames a 1.5 pipeline adds in front so the count divides the temporal patch (dropped after)."""
    return (-latent_frames) % patch_size_t if patch_size_t else 0
