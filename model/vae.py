"""CogVideoX 3D causal VAE: 8x8 spatial, 4x temporal compression, KL posterior.

Tensors are [B, C, F, H, W] with pixels in [-1, 1]. A clip of 4k+1 frames becomes k+1 latent frames:
frame 0 is encoded on its own (causal), so an image is a 1-frame video.

Chunking. Like the published model, encode runs over chunks of 8 pixel frames (the first chunk takes
the remainder: 49 = 9 + 5 x 8) and decode over chunks of 2 latent frames (13 = 3 + 5 x 2); each causal
conv carries the last k-1 frames of its input to the next chunk (the "conv cache"), and GroupNorm
statistics are per chunk. Results equal diffusers' chunked encode/decode.

Memory. Without autograd (inference, latent caching) every layer streams its chunk a few frames at a
time: GroupNorm statistics are gathered over the whole chunk first, then normalisation, the decoder's
spatial conditioning, SiLU and the causal conv run slice by slice into a preallocated output, and
residuals are added in place. Peak memory is about two activations of one chunk instead of six, and
the decoded video is written into one preallocated tensor. With autograd (VAE training) the plain
layer-by-layer path runs; both give the same numbers.

This is a single-process model. Context parallelism (a clip's frames split over ranks) is applied from
outside (training.parallelize.apply_vae_context_parallel) through three seams: GroupNorm statistics come
from `GroupNorm.stats` (a split-statistics subclass is swapped in), the frames in front of a causal conv's
input come from its `cache` argument (a pre-hook passes the previous rank's last frames), and Upsample's
`first_apart` argument says whether the input's frame 0 is the clip's first frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class VAEConfig:
    in_channels: int = 3  # pixel channels in
    out_channels: int = 3  # pixel channels out
    latent_channels: int = 16  # latent channels (the encoder outputs 2x: mean and log-variance)
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)  # width of each down block (reversed for up blocks)
    layers_per_block: int = 3  # resnets per down block (up blocks have one more)
    norm_num_groups: int = 32  # GroupNorm groups
    norm_eps: float = 1e-6  # GroupNorm eps
    temporal_compression: int = 4  # time compression (the first log2 of it down/up blocks halve/double time)
    sample_height: int = 480  # training resolution; tiling tiles are half of it
    sample_width: int = 720
    scaling_factor: float = 1.15258426  # latents are multiplied by this before diffusion (2b 1.15258426, 5b 0.7)
    invert_scale_latents: bool = False  # 1.5's VAE: image-to-video image latents are divided by scaling_factor, not multiplied
    encode_chunk_frames: int = 8  # pixel frames per encode chunk (the first chunk also takes the remainder)
    decode_chunk_latents: int = 2  # latent frames per decode chunk (first chunk takes the remainder)
    stream_frames: int = 2  # frames per slice when streaming a chunk without autograd (memory vs. call count)
    tile_overlap_height: float = 1 / 6  # tiling: fraction of a tile shared with its upper neighbour
    tile_overlap_width: float = 1 / 5  # tiling: fraction of a tile shared with its left neighbour

    @classmethod
    def tiny(cls, **kw) -> "VAEConfig":
        """diffusers' own test config: 4 blocks of width 8, 4 latent channels, 1 resnet per block."""
        base = dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                    sample_height=16, sample_width=16)
        base.update(kw)
        return cls(**base)

    @classmethod
    def cogvideox_2b(cls, **kw) -> "VAEConfig":
        return cls(**kw)

    @classmethod
    def cogvideox_5b(cls, **kw) -> "VAEConfig":
        base = dict(scaling_factor=0.7)
        base.update(kw)
        return cls(**base)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def _streaming() -> bool:
    """The memory-lean path applies when no graph is being recorded."""
    return not torch.is_grad_enabled()


# -- GroupNorm with statistics over a whole chunk ------------------------------------------------------
class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that also hands out its statistics, for the streaming path's per-slice normalisation
    (one place to compute them, so a subclass can take them over more than x, e.g. every rank's frames)."""

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, rstd) [B, G] of x [B, C, ...] in float32."""
        var, mean = torch.var_mean(x.reshape(x.shape[0], self.num_groups, -1).float(), dim=2, correction=0)
        return mean, torch.rsqrt(var + self.eps)


def _group_affine(x: torch.Tensor, norm: GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(batch, channel) scale and shift so that norm(x) == x * scale + shift (norm.stats of x)."""
    b, c = x.shape[:2]
    g = norm.num_groups
    mean, rstd = norm.stats(x)
    rstd = rstd.repeat_interleave(c // g, dim=1)
    mean = mean.repeat_interleave(c // g, dim=1)
    scale = rstd * norm.weight.float()[None]
    shift = norm.bias.float()[None] - mean * scale
    shape = (b, c) + (1,) * (x.dim() - 2)
    return scale.to(x.dtype).view(shape), shift.to(x.dtype).view(shape)


# -- nearest resize of the latent to a feature map, as broadcastable views ----------------------------
def _nearest_index(out_len: int, in_len: int, device) -> torch.Tensor:
    """Source indices of PyTorch's 'nearest' resize from in_len to out_len."""
    scale = in_len / out_len
    return torch.clamp((torch.arange(out_len, device=device, dtype=torch.float32) * scale).floor().long(),
                       max=in_len - 1)


def _latent_frame_index(frames: int, z_frames: int, device) -> torch.Tensor:
    """Which latent frame conditions each of `frames` feature frames (frame 0 kept apart when odd)."""
    if frames > 1 and frames % 2 == 1:
        rest = _nearest_index(frames - 1, z_frames - 1, device) + 1
        return torch.cat([torch.zeros(1, dtype=torch.long, device=device), rest])
    return _nearest_index(frames, z_frames, device)


def _mul_add_upsampled(h: torch.Tensor, y: torch.Tensor, b: torch.Tensor, inplace: bool) -> torch.Tensor:
    """h * up(y) + up(b) where up is nearest spatial resize of y, b [B, C, T, h, w] to h's [.., H, W],
    without materialising up(y) when the ratio is an integer."""
    bsz, c, t, hh, ww = h.shape
    yh, yw = y.shape[-2:]
    if hh % yh == 0 and ww % yw == 0:
        sh, sw = hh // yh, ww // yw
        hv = h.view(bsz, c, t, yh, sh, yw, sw)
        yv, bv = y[:, :, :, :, None, :, None], b[:, :, :, :, None, :, None]
        if inplace:
            hv.mul_(yv).add_(bv)
            return h
        return (hv * yv + bv).view(bsz, c, t, hh, ww)
    y = F.interpolate(y, size=(t, hh, ww))
    b = F.interpolate(b, size=(t, hh, ww))
    return h.mul_(y).add_(b) if inplace else h * y + b


# -- layers ---------------------------------------------------------------------------------------------
@dataclass
class Slices:
    """A conv input made slice by slice (the streaming path): produce(a, b) returns frames [a, b)."""

    frames: int  # input frames in all
    produce: Callable[[int, int], torch.Tensor]


class CausalConv3d(nn.Conv3d):
    """3D conv, zero padding in space, causal in time: k-1 frames in front come from the previous chunk
    (cache) or, at the clip start, repeat frame 0."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))
        self.time_pad = kernel - 1

    def pad(self, x: torch.Tensor, cache: torch.Tensor | None) -> torch.Tensor:
        if self.time_pad == 0:
            return x
        front = cache if cache is not None else x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        return torch.cat([front, x], dim=2)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution on an already time-padded input. On CPU without autograd this calls oneDNN
        directly: PyTorch's heuristic sends batch-1 inputs with few frames (N*C*T*H <= 20480, the usual
        case for a chunk) to its vol2col path, which is ~5x slower and allocates a 27x-input buffer."""
        if x.device.type == "cpu" and x.dtype == torch.float32 and _streaming() and _MKLDNN:
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)

    def forward(self, x: torch.Tensor | Slices, cache: torch.Tensor | None = None, step: int = 2,
                out: torch.Tensor | None = None, accumulate: bool = False):
        """Returns (output, new cache). `cache`: the k-1 input frames in front of x's first (None: the
        clip start). A Slices input is streamed `step` frames at a time into (or, with accumulate, added
        onto) `out` if given."""
        if isinstance(x, Slices):
            return self._stream(x.frames, x.produce, cache, step, out, accumulate)
        x = self.pad(x, cache)
        new_cache = x[:, :, x.shape[2] - self.time_pad:].clone() if self.time_pad else None
        return self.conv(x), new_cache

    def _stream(self, frames: int, produce, cache: torch.Tensor | None, step: int, out: torch.Tensor | None,
                accumulate: bool):
        prev = cache
        for a in range(0, frames, step):
            b = min(frames, a + step)
            cur = produce(a, b)
            if self.time_pad:
                if prev is None:
                    prev = cur[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
                inp = torch.cat([prev, cur], dim=2)
                prev = inp[:, :, inp.shape[2] - self.time_pad:]
            else:
                inp = cur
            y = self.conv(inp)
            del cur, inp
            if out is None:
                out = y.new_empty(y.shape[:2] + (frames,) + y.shape[3:])
            if accumulate:
                out[:, :, a:b].add_(y)
            else:
                out[:, :, a:b].copy_(y)
            del y
        new_cache = prev.clone() if self.time_pad else None
        return out, new_cache


class SpatialNorm(nn.Module):
    """Decoder norm conditioned on the latent z: GroupNorm(f) * conv_y(z) + conv_b(z), z resized to f by
    nearest neighbour (frame 0 kept apart when the frame count is odd)."""

    def __init__(self, channels: int, z_channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps)
        self.conv_y = CausalConv3d(z_channels, channels, kernel=1)
        self.conv_b = CausalConv3d(z_channels, channels, kernel=1)

    def modulation(self, z: torch.Tensor, frames: int, a: int = 0, b: int | None = None):
        """conv_y(z), conv_b(z) for feature frames [a, b), at the latent's spatial size."""
        b = frames if b is None else b
        idx = _latent_frame_index(frames, z.shape[2], z.device)[a:b]
        zf = z.index_select(2, idx)
        return F.conv3d(zf, self.conv_y.weight, self.conv_y.bias), F.conv3d(zf, self.conv_b.weight, self.conv_b.bias)

    def forward(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y, b = self.modulation(z, f.shape[2])
        return _mul_add_upsampled(self.norm(f), y, b, inplace=False)

    def apply_slice(self, f_slice: torch.Tensor, affine, z: torch.Tensor, frames: int, a: int, b: int):
        """Streaming form: normalise frames [a, b) with whole-chunk statistics, then modulate (in place)."""
        h = torch.addcmul(affine[1], f_slice, affine[0])
        y, bb = self.modulation(z, frames, a, b)
        return _mul_add_upsampled(h, y, bb, inplace=True)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (1x1x1-projected) skip."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float, z_channels: int | None = None):
        super().__init__()
        if z_channels is None:
            self.norm1 = GroupNorm(groups, cin, eps=eps)
            self.norm2 = GroupNorm(groups, cout, eps=eps)
        else:
            # the published decoder's spatial norms use eps 1e-6 whatever norm_eps says
            self.norm1 = SpatialNorm(cin, z_channels, groups)
            self.norm2 = SpatialNorm(cout, z_channels, groups)
        self.conv1 = CausalConv3d(cin, cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None
        self.gradient_checkpointing = False

    def _norm(self, norm, x, z):
        return norm(x) if z is None else norm(x, z)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, cache: dict | None = None,
                step: int = 2):
        """Returns (output, new cache dict {conv1, conv2})."""
        cache = cache or {}
        if _streaming():
            return self._stream(x, z, cache, step)
        if self.gradient_checkpointing:
            return checkpoint(self._plain, x, z, cache.get("conv1"), cache.get("conv2"), use_reentrant=False)
        return self._plain(x, z, cache.get("conv1"), cache.get("conv2"))

    def _plain(self, x, z, c1, c2):
        h, c1 = self.conv1(F.silu(self._norm(self.norm1, x, z)), c1)
        h, c2 = self.conv2(F.silu(self._norm(self.norm2, h, z)), c2)
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h + skip, {"conv1": c1, "conv2": c2}

    def _activation(self, norm, src: torch.Tensor, z):
        """produce(a, b) for streaming: SiLU(norm(src))[:, :, a:b] with statistics of all of src."""
        spatial = isinstance(norm, SpatialNorm)
        affine = _group_affine(src, norm.norm if spatial else norm)
        frames = src.shape[2]

        def produce(a: int, b: int) -> torch.Tensor:
            if spatial:
                h = norm.apply_slice(src[:, :, a:b], affine, z, frames, a, b)
            else:
                h = torch.addcmul(affine[1], src[:, :, a:b], affine[0])
            return F.silu(h, inplace=True)

        return produce

    def _stream(self, x, z, cache, step):
        frames = x.shape[2]
        h, c1 = self.conv1(Slices(frames, self._activation(self.norm1, x, z)), cache.get("conv1"), step)
        if self.conv_shortcut is not None:
            out = self.conv_shortcut(x)
        else:
            out = x  # the residual is accumulated in place on the block input (an internal activation)
        out, c2 = self.conv2(Slices(frames, self._activation(self.norm2, h, z)), cache.get("conv2"), step,
                             out=out, accumulate=True)
        return out, {"conv1": c1, "conv2": c2}


def _channels_first(frames: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """Per-frame conv output [B*T, C, H, W] -> a fresh [B, C, T, H, W] tensor (never a view: the down/up
    blocks end with this, and FSDP2 hooks a wrapped block's output for its pre-backward all-gather, a hook
    an in-place op on a view would drop). The next conv/norm wants channels-first memory anyway."""
    return frames.view(b, t, *frames.shape[1:]).transpose(1, 2).clone(memory_format=torch.contiguous_format)


class Downsample(nn.Module):
    """Optionally halve time (average frame pairs, frame 0 kept apart when the count is odd), then halve
    space with a stride-2 3x3 conv per frame (padded right and bottom)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor, step: int = 2) -> torch.Tensor:
        if self.compress_time and x.shape[2] > 1:
            if x.shape[2] % 2 == 1:
                rest = x[:, :, 1:]
                rest = 0.5 * (rest[:, :, 0::2] + rest[:, :, 1::2])
                x = torch.cat([x[:, :, :1], rest], dim=2)
            else:
                x = 0.5 * (x[:, :, 0::2] + x[:, :, 1::2])
        b, c, t, h, w = x.shape
        if not _streaming():
            frames = x.transpose(1, 2).reshape(b * t, c, h, w)
            out = self.conv(F.pad(frames, (0, 1, 0, 1)))
            return _channels_first(out, b, t)
        out = x.new_empty(b, self.conv.out_channels, t, h // 2, w // 2)
        for a in range(0, t, step):
            frames = x[:, :, a:a + step].transpose(1, 2).reshape(-1, c, h, w)
            y = self.conv(F.pad(frames, (0, 1, 0, 1)))
            out[:, :, a:a + step] = y.view(b, -1, *y.shape[1:]).transpose(1, 2)
        return out


class Upsample(nn.Module):
    """Nearest x2 in space (and in time when compress_time, frame 0 kept apart when the count is odd),
    then a 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.compress_time = compress_time

    def frame_index(self, frames: int, first_apart: bool | None = None) -> list[int]:
        """Source frame of each output frame; see forward for first_apart."""
        if not self.compress_time:
            return list(range(frames))
        if first_apart is not None:
            rest = [1 + i // 2 for i in range(2 * (frames - 1))] if first_apart else [i // 2 for i in range(2 * frames)]
            return [0] * first_apart + rest
        if frames == 1:
            return [0]
        if frames % 2 == 1:
            return [0] + [1 + i // 2 for i in range(2 * (frames - 1))]
        return [i // 2 for i in range(2 * frames)]

    def _frames(self, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
        b, c, _, h, w = x.shape
        sel = x[:, :, idx].transpose(1, 2).reshape(b * len(idx), c, h, w)
        out = self.conv(F.interpolate(sel, scale_factor=2.0, mode="nearest"))
        if _streaming():  # copied into the caller's output slice: a view is fine
            return out.view(b, len(idx), *out.shape[1:]).transpose(1, 2)
        return _channels_first(out, b, len(idx))

    def forward(self, x: torch.Tensor, step: int = 2, first_apart: bool | None = None) -> torch.Tensor:
        """first_apart: whether x's frame 0 is kept apart (not doubled). None: the published rule, when
        the count is odd (each chunk); True: x is the start of a longer clip; False: a later piece of one."""
        idx = self.frame_index(x.shape[2], first_apart)
        if not _streaming():
            return self._frames(x, idx)
        b, c, _, h, w = x.shape
        out = x.new_empty(b, self.conv.out_channels, len(idx), 2 * h, 2 * w)
        for a in range(0, len(idx), step):
            out[:, :, a:a + step] = self._frames(x, idx[a:a + step])
        return out


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, eps: float, downsample: bool,
                 compress_time: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, groups, eps) for i in range(layers)])
        self.downsample = Downsample(cout, compress_time) if downsample else None

    def forward(self, x, cache: dict, step: int):
        new = {}
        for i, r in enumerate(self.resnets):
            x, new[i] = r(x, None, cache.get(i), step)
        if self.downsample is not None:
            x = self.downsample(x, step)
        return x, new


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, eps: float, z_channels: int, upsample: bool,
                 compress_time: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, groups, eps, z_channels)
                                      for i in range(layers)])
        self.upsample = Upsample(cout, compress_time) if upsample else None

    def forward(self, x, z, cache: dict, step: int):
        new = {}
        for i, r in enumerate(self.resnets):
            x, new[i] = r(x, z, cache.get(i), step)
        if self.upsample is not None:
            x = self.upsample(x, step)
        return x, new


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, eps = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps
        levels = int(math.log2(cfg.temporal_compression))
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0])
        self.down_blocks = nn.ModuleList([
            DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, eps, i < len(ch) - 1, i < levels)
            for i in range(len(ch))])
        self.mid = nn.ModuleList([ResBlock(ch[-1], ch[-1], g, eps) for _ in range(2)])
        self.norm_out = GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor, cache: dict | None = None, step: int = 2):
        cache, new = cache or {}, {}
        if _streaming():
            x, new["conv_in"] = self.conv_in(Slices(x.shape[2], lambda a, b: x[:, :, a:b]), cache.get("conv_in"), step)
        else:
            x, new["conv_in"] = self.conv_in(x, cache.get("conv_in"))
        for i, blk in enumerate(self.down_blocks):
            x, new[f"down{i}"] = blk(x, cache.get(f"down{i}", {}), step)
        for i, r in enumerate(self.mid):
            x, new[f"mid{i}"] = r(x, None, cache.get(f"mid{i}"), step)
        x, new["conv_out"] = self.conv_out(F.silu(self.norm_out(x)), cache.get("conv_out"))
        return x, new


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, eps, zc = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups, cfg.norm_eps, cfg.latent_channels
        levels = int(math.log2(cfg.temporal_compression))
        self.conv_in = CausalConv3d(zc, ch[0])
        self.mid = nn.ModuleList([ResBlock(ch[0], ch[0], g, eps, zc) for _ in range(2)])
        self.up_blocks = nn.ModuleList([
            UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, eps, zc, i < len(ch) - 1, i < levels)
            for i in range(len(ch))])
        self.norm_out = SpatialNorm(ch[-1], zc, g, 1e-6)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels)

    def forward(self, z: torch.Tensor, cache: dict | None = None, step: int = 2):
        cache, new = cache or {}, {}
        x, new["conv_in"] = self.conv_in(z, cache.get("conv_in"))
        for i, r in enumerate(self.mid):
            x, new[f"mid{i}"] = r(x, z, cache.get(f"mid{i}"), step)
        for i, blk in enumerate(self.up_blocks):
            x, new[f"up{i}"] = blk(x, z, cache.get(f"up{i}", {}), step)
        if _streaming():
            affine = _group_affine(x, self.norm_out.norm)
            frames = x.shape[2]

            def produce(a, b):
                return F.silu(self.norm_out.apply_slice(x[:, :, a:b], affine, z, frames, a, b), inplace=True)

            out, new["conv_out"] = self.conv_out(Slices(frames, produce), cache.get("conv_out"), step)
        else:
            out, new["conv_out"] = self.conv_out(F.silu(self.norm_out(x, z)), cache.get("conv_out"))
        return out, new


class DiagonalGaussian:
    """KL posterior from the encoder's [mean | log-variance] channels."""

    def __init__(self, params: torch.Tensor):
        self.params = params
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None and generator.device != self.mean.device:  # e.g. a CPU generator, CUDA latents
            noise = torch.randn(self.mean.shape, generator=generator, device=generator.device, dtype=self.mean.dtype)
            noise = noise.to(self.mean.device)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to a standard normal, summed over every non-batch dim: [B]."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """diffusers' chunking: n // size chunks of `size`, the first one also taking the remainder."""
    count, rem = max(n // size, 1), n % size
    out = []
    for i in range(count):
        a = size * i + (0 if i == 0 else rem)
        out.append((a, min(n, size * (i + 1) + rem)))
    return out


def decoded_frames(latent_frames: int, temporal_compression: int = 4) -> int:
    """Pixel frames the decoder makes from one chunk of latent frames: each time-upsampling level maps
    n -> 2n - 1 (odd n > 1, frame 0 kept apart), 2n (even n) or 1 (n = 1); 4x: 4n - 3 or 4n."""
    n = latent_frames
    for _ in range(int(math.log2(temporal_compression))):
        n = 1 if n == 1 else (2 * n - 1 if n % 2 else 2 * n)
    return n


class CausalVAE(nn.Module):
    """Encoder + decoder. `down_blocks` / `up_blocks` are the lists to wrap per block (FSDP)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.scaling_factor = config.scaling_factor
        self.chunked = True
        self.use_tiling = False
        self.tile_sample_height = config.sample_height // 2
        self.tile_sample_width = config.sample_width // 2

    @property
    def down_blocks(self) -> nn.ModuleList:
        return self.encoder.down_blocks

    @property
    def up_blocks(self) -> nn.ModuleList:
        return self.decoder.up_blocks

    @property
    def gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, ResBlock))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.gradient_checkpointing = value

    def enable_tiling(self, tile_sample_height: int | None = None, tile_sample_width: int | None = None,
                      overlap_height: float | None = None, overlap_width: float | None = None) -> None:
        """Split frames larger than a tile into overlapping tiles, blended linearly across the overlap."""
        self.use_tiling = True
        self.tile_sample_height = tile_sample_height or self.tile_sample_height
        self.tile_sample_width = tile_sample_width or self.tile_sample_width
        if overlap_height:
            self.config.tile_overlap_height = overlap_height
        if overlap_width:
            self.config.tile_overlap_width = overlap_width

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- chunked encode/decode of one tile --------------------------------------------------------------
    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        step = self.config.stream_frames
        if not self.chunked:
            return self.encoder(x, step=step)[0]
        cache, parts = None, []
        for a, b in _chunks(x.shape[2], self.config.encode_chunk_frames):
            h, cache = self.encoder(x[:, :, a:b], cache, step)
            parts.append(h)
        return torch.cat(parts, dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        step = self.config.stream_frames
        if not self.chunked:
            return self.decoder(z, step=step)[0]
        chunks = _chunks(z.shape[2], self.config.decode_chunk_latents)
        if not _streaming():
            cache, parts = None, []
            for a, b in chunks:
                h, cache = self.decoder(z[:, :, a:b], cache, step)
                parts.append(h)
            return torch.cat(parts, dim=2)
        out, cache, t = None, None, 0
        total = sum(decoded_frames(b - a, self.config.temporal_compression) for a, b in chunks)
        for a, b in chunks:
            h, cache = self.decoder(z[:, :, a:b], cache, step)
            if out is None:
                out = h.new_empty(h.shape[:2] + (total,) + h.shape[3:])
            out[:, :, t:t + h.shape[2]] = h
            t += h.shape[2]
            del h
        assert t == total
        return out

    # -- tiling -----------------------------------------------------------------------------------------
    def _tiled(self, x: torch.Tensor, fn, tile_in: tuple[int, int], tile_out: tuple[int, int]) -> torch.Tensor:
        """Run fn on overlapping spatial tiles of x and blend them (diffusers' tiling, same tiles)."""
        oh, ow = self.config.tile_overlap_height, self.config.tile_overlap_width
        stride_h, stride_w = int(tile_in[0] * (1 - oh)), int(tile_in[1] * (1 - ow))
        blend_h, blend_w = int(tile_out[0] * oh), int(tile_out[1] * ow)
        keep_h, keep_w = tile_out[0] - blend_h, tile_out[1] - blend_w
        rows = []
        for i in range(0, x.shape[3], stride_h):
            rows.append([fn(x[:, :, :, i:i + tile_in[0], j:j + tile_in[1]]) for j in range(0, x.shape[4], stride_w)])
        out_rows = []
        for i, row in enumerate(rows):
            out_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend_h, dim=3)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend_w, dim=4)
                row[j] = tile  # later neighbours blend with the blended tile (as the reference does)
                out_row.append(tile[:, :, :, :keep_h, :keep_w])
            out_rows.append(torch.cat(out_row, dim=4))
        return torch.cat(out_rows, dim=3)

    def _latent_tile(self) -> tuple[int, int]:
        s = self.config.spatial_compression
        return int(self.tile_sample_height / s), int(self.tile_sample_width / s)

    # -- public -----------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x [B, C, F, H, W] in [-1, 1] -> posterior over latents [B, latent, (F-1)/4+1, H/8, W/8]."""
        if self.use_tiling and (x.shape[3] > self.tile_sample_height or x.shape[4] > self.tile_sample_width):
            h = self._tiled(x, self._encode_frames, (self.tile_sample_height, self.tile_sample_width),
                            self._latent_tile())
        else:
            h = self._encode_frames(x)
        return DiagonalGaussian(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [B, latent, f, h, w] -> video [B, C, F, 8h, 8w] (divide by scaling_factor first)."""
        th, tw = self._latent_tile()
        if self.use_tiling and (z.shape[3] > th or z.shape[4] > tw):
            return self._tiled(z, self._decode_frames, (th, tw), (self.tile_sample_height, self.tile_sample_width))
        return self._decode_frames(z)

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None):
        """Reconstruction for VAE training: (x_hat, posterior). `noise` (the posterior's shape) replaces the
        generator's draw (context parallel: each rank's slice of the whole clip's noise)."""
        posterior = self.encode(x)
        if noise is not None:
            z = posterior.mean + posterior.std * noise.to(posterior.mean)
        else:
            z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear cross-fade of the last `extent` rows/cols of a into the first ones of b (returns new b)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    w = torch.arange(extent, dtype=b.dtype, device=b.device) / extent
    shape = [1] * b.dim()
    shape[dim] = extent
    w = w.view(shape)
    head = a.narrow(dim, a.shape[dim] - extent, extent) * (1 - w) + b.narrow(dim, 0, extent) * w
    return torch.cat([head, b.narrow(dim, extent, b.shape[dim] - extent)], dim=dim)
