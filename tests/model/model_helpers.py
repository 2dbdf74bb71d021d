"""Builders shared by the model tests: diffusers reference models with random weights."""
from __future__ import annotations

import torch

from model.profiling import cpu_peak_bytes  # noqa: F401  (re-exported for the tests; shared with bench)

TINY_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                        text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                        temporal_compression_ratio=4, max_text_seq_length=8)
# Real head dim (64), a couple of layers.
HEAD64 = dict(TINY_TRANSFORMER, num_attention_heads=2, attention_head_dim=64, time_embed_dim=32, text_embed_dim=32,
              num_layers=2)
ROPE = dict(use_rotary_positional_embeddings=True)
V15 = dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False)

TRANSFORMER_VARIANTS = {
    # name: (diffusers kwargs, latent frames)
    "tiny-sincos": (TINY_TRANSFORMER, 2),
    # head dim 8 cannot carry 3D RoPE (2/8 + 3/8 + 3/8 splits need head_dim % 16 == 0): 16 is the tiniest
    "tiny-rope": (dict(TINY_TRANSFORMER, attention_head_dim=16, **ROPE), 2),
    "tiny-1.5": (dict(TINY_TRANSFORMER, attention_head_dim=16, **V15), 4),
    "head64-sincos": (HEAD64, 3),
    "head64-rope": (dict(HEAD64, **ROPE), 3),
    "head64-1.5": (dict(HEAD64, **V15), 4),
}

TINY_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                norm_num_groups=2, temporal_compression_ratio=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
                up_block_types=("CogVideoXUpBlock3D",) * 4, sample_height=16, sample_width=16)


def perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every norm weight and bias (initialised to ones/zeros) so they are exercised too;
    matrices keep their default random init, which keeps activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def diffusers_transformer(kwargs: dict, seed: int = 0):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return perturb_(CogVideoXTransformer3DModel(**kwargs), seed=seed).eval()


def diffusers_vae(kwargs: dict = TINY_VAE, seed: int = 0):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return perturb_(AutoencoderKLCogVideoX(**kwargs), seed=seed).eval()


def diffusers_rope(config, frames: int, height: int, width: int):
    """The rotary embedding diffusers' CogVideoX pipelines compute outside the transformer."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, pt = config.patch_size, config.patch_size_t
    gh, gw = height // p, width // p
    bw, bh = config.sample_width // p, config.sample_height // p
    if pt is None:
        crops = get_resize_crop_region_for_grid((gh, gw), bw, bh)
        return get_3d_rotary_pos_embed(config.attention_head_dim, crops, (gh, gw), frames)
    return get_3d_rotary_pos_embed(config.attention_head_dim, None, (gh, gw), (frames + pt - 1) // pt,
                                   grid_type="slice", max_size=(bh, bw))


def diffusers_forward(ref, latents, text, t):
    rope = None
    if ref.config.use_rotary_positional_embeddings:
        rope = diffusers_rope(ref.config, latents.shape[1], latents.shape[3], latents.shape[4])
    return ref(latents, text, t, image_rotary_emb=rope, return_dict=False)[0]

