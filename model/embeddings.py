"""Position and timestep embeddings of CogVideoX: sinusoidal timesteps, 3D sin-cos positions (2b) and
3D rotary positions (5b, 1.5).

Each function reproduces the numerics of the published models (diffusers' implementation is the
oracle in tests/model): same frequency layout, same dtype of the intermediate maths.
"""
from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t: [B] -> [B, dim] float32.

    Layout [cos | sin] when flip_sin_to_cos (CogVideoX), frequencies exp(-ln(max_period) i / (half - shift)).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)],
                    dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin | cos] of positions pos [M] at dim/2 frequencies 1/10000^(2i/dim); computed in float64."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_3d(dim: int, frames: int, height: int, width: int, spatial_scale: float = 1.875,
              temporal_scale: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
    """3D sin-cos position embedding for a (frames, height, width) token grid: [frames * height * width, dim].

    dim/4 channels encode time, 3*dim/4 encode space (half the spatial part from the column index, half
    from the row index); positions are divided by the interpolation scales. Tokens are ordered frame by
    frame, row-major inside a frame. Returned in float64; callers cast.
    """
    if dim % 16:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 16, got {dim}")
    d_space, d_time = 3 * dim // 4, dim // 4
    rows = torch.arange(height, dtype=torch.float32, device=device) / spatial_scale
    cols = torch.arange(width, dtype=torch.float32, device=device) / spatial_scale
    col_grid = cols[None, :].expand(height, width)
    row_grid = rows[:, None].expand(height, width)
    space = torch.cat([_sincos_1d(d_space // 2, col_grid), _sincos_1d(d_space // 2, row_grid)], dim=1)  # [H*W, 3D/4]
    t = torch.arange(frames, dtype=torch.float32, device=device) / temporal_scale
    time = _sincos_1d(d_time, t)  # [F, D/4]
    emb = torch.cat([time[:, None, :].expand(frames, height * width, d_time),
                     space[None].expand(frames, height * width, d_space)], dim=-1)
    return emb.reshape(frames * height * width, dim)


def _rope_1d(dim: int, pos: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [len(pos), dim] with each frequency repeated twice (interleaved pairs)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))
    angles = torch.outer(pos, freqs)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


def crop_region_for_grid(grid_h: int, grid_w: int, base_h: int, base_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a (grid_h, grid_w) token grid sits once resized (aspect kept) and centred in the base grid:
    ((top, left), (bottom, right)). CogVideoX 1.0 spreads RoPE positions over this region."""
    if grid_h / grid_w > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
    else:
        resize_w, resize_h = base_w, int(round(base_w / grid_w * grid_h))
    top = int(round((base_h - resize_h) / 2.0))
    left = int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def rope_3d(head_dim: int, frames: int, height: int, width: int, base_size: tuple[int, int] | None = None,
            theta: float = 10000.0, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """3D rotary embedding (cos, sin), each [frames * height * width, head_dim], float32.

    head_dim is split 1/4 time, 3/8 rows, 3/8 columns. With base_size=(base_h, base_w) (CogVideoX 1.0)
    the row/column positions are spread linearly over the grid's crop region inside the base grid, as
    the published pipelines do; with None (CogVideoX 1.5) positions are plain integer indices.
    """
    d_t, d_h = head_dim // 4, head_dim // 8 * 3
    d_w = d_h
    if d_t % 2 or d_h % 2:
        raise ValueError(f"RoPE needs head_dim divisible by 16, got {head_dim}")
    if base_size is not None:
        (top, left), (bottom, right) = crop_region_for_grid(height, width, *base_size)
        pos_h = torch.linspace(top, bottom * (height - 1) / height, height, device=device, dtype=torch.float32)
        pos_w = torch.linspace(left, right * (width - 1) / width, width, device=device, dtype=torch.float32)
        pos_t = torch.linspace(0, frames * (frames - 1) / frames, frames, device=device, dtype=torch.float32)
    else:
        pos_h = torch.arange(height, device=device, dtype=torch.float32)
        pos_w = torch.arange(width, device=device, dtype=torch.float32)
        pos_t = torch.arange(frames, device=device, dtype=torch.float32)
    per_axis = [_rope_1d(d_t, pos_t, theta), _rope_1d(d_h, pos_h, theta), _rope_1d(d_w, pos_w, theta)]

    def grid(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:, None, None, :].expand(frames, height, width, d_t),
                          h[None, :, None, :].expand(frames, height, width, d_h),
                          w[None, None, :, :].expand(frames, height, width, d_w)], dim=-1).reshape(-1, head_dim)

    cos = grid(*(c for c, _ in per_axis))
    sin = grid(*(s for _, s in per_axis))
    return cos, sin


def rope_complex(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(cos, sin) [S, D] with each angle repeated per pair -> unit complex rotations [S, 1, D/2] (complex64),
    shaped to broadcast over heads of a [B, S, H, D/2] view."""
    return torch.complex(cos[:, 0::2].float(), sin[:, 0::2].float())[:, None, :]


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1) of the last dim of x [B, S, H, D] by rot [S, 1, D/2] (complex):
    (x0 cos - x1 sin, x1 cos + x0 sin). Computed in float32, returned in x's dtype."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)
