"""Builders shared by the model tests: diffusers reference models with random weights."""
from __future__ import annotations

import torch

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


# -- peak memory on CPU ----------------------------------------------------------------------------------
# A child process per measurement: glibc is told to serve every allocation above 64 KiB with mmap (and
# to never adapt that threshold), so freed tensors go back to the OS at once and the kernel's resident
# high-water mark (VmHWM) tracks live tensor bytes. VmHWM is reset (/proc/self/clear_refs 5) right
# before the measured call; the result is VmHWM - VmRSS at that moment.
PEAK_PRELUDE = r'''
import json, re, sys, time
import torch
torch.set_num_threads(1)
def _status():
    s = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", s).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
def measure(fn):
    base = _status()["VmRSS"]
    open("/proc/self/clear_refs", "w").write("5")
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    return out, _status()["VmHWM"] - base, dt
'''


def run_peak(script: str, timeout: float = 600) -> dict:
    """Run PEAK_PRELUDE + script in a fresh interpreter; the script prints one JSON line, returned parsed."""
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1",
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", PEAK_PRELUDE + script], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=repo)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def peak_supported() -> bool:
    import os

    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)
