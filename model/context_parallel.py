"""Context parallelism: one sample's sequence (transformer tokens, VAE frames) split across the ranks of a
process group, with collectives whose autograd backward is their exact adjoint.

Transformer (`ContextParallel`): every rank holds all text tokens (226: cheap to replicate) and a
contiguous 1/cp slice of the video tokens (balanced sizes: they differ by at most one). Attention is
exact, in one of two ways:
  - ``ulysses`` (DeepSpeed-Ulysses, as diffusers' TemplatedUlyssesAttention): an all-to-all turns the
    video q/k/v from "my tokens, all heads" into "all tokens, my heads/cp"; each rank attends over the
    whole [text; video] sequence for its heads; a second all-to-all brings the video output back, and the
    text output of each head group is all-gathered. Needs num_heads % cp == 0.
  - ``allgather`` (torch's context_parallel rotate_method="allgather" and diffusers' ring attention gather
    K/V the same way): video k/v are all-gathered, each rank attends with its own queries over all keys.
    Any cp; one more full-sequence K/V per layer saved for backward.
Sums over ranks: all-gather's backward is reduce-scatter (sum) and all-to-all's is the inverse
all-to-all, so the per-rank parameter gradients add up to the gradient of the sum of the per-rank losses.

VAE (`TimeSplit`): the frame axis of a clip split across ranks; each causal conv gets the k-1 frames
before its first frame from the previous rank (halo exchange, point to point, gradient sent back in
backward: `TimeSplit.halo_hook`), GroupNorm statistics are all-reduced over the group (`SplitGroupNorm`).
training.parallelize.apply_vae_context_parallel puts both on a plain model.vae.CausalVAE.

Everything uses plain torch.distributed collectives (all_to_all_single, all_gather_single,
reduce_scatter_single, isend/irecv), which gloo (CPU tests) and NCCL (GPU) both implement.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

AttentionKind = Literal["ulysses", "allgather"]


def balanced_sizes(n: int, parts: int) -> list[int]:
    """n items in `parts` contiguous pieces whose sizes differ by at most one (larger ones first)."""
    return [n // parts + (1 if r < n % parts else 0) for r in range(parts)]


# -- collectives with exact adjoints ------------------------------------------------------------------
class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized x of every rank along dim 0; backward: reduce-scatter (sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        x = x.contiguous()
        out = x.new_empty((world * x.shape[0],) + x.shape[1:])
        dist.all_gather_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world,) + grad.shape[1:])
        dist.reduce_scatter_single(out, grad, group=ctx.group)
        return out, None


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with equal splits along dim 0 (block j goes to rank j); it is its own adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = torch.empty_like(x.contiguous())
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = torch.empty_like(grad.contiguous())
        dist.all_to_all_single(out, grad.contiguous(), group=ctx.group)
        return out, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; backward: the sum of the gradients (every rank's output depends on every input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable sum over `group` (plain all_reduce without autograd)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _AllReduceSum.apply(x, group)
    x = x.clone()
    dist.all_reduce(x, group=group)
    return x


# -- transformer ----------------------------------------------------------------------------------------
class ContextParallel:
    """The video-token split of one context-parallel group and its exact attention."""

    def __init__(self, group, attention: AttentionKind = "ulysses"):
        if attention not in ("ulysses", "allgather"):
            raise ValueError(f"context-parallel attention must be 'ulysses' or 'allgather', got {attention!r}")
        self.group = group
        self.attention_kind = attention
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    # sequence split
    def bounds(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's video tokens among n."""
        if n < self.world:
            raise ValueError(f"{n} video tokens cannot be split over {self.world} context-parallel ranks")
        sizes = balanced_sizes(n, self.world)
        start = sum(sizes[:self.rank])
        return start, start + sizes[self.rank]

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of the sequence dim of x (a copy, so the full tensor can be freed)."""
        a, b = self.bounds(x.shape[dim])
        return x.narrow(dim, a, b - a).clone()

    def gather(self, x: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
        """Inverse of shard: the full sequence (n items along dim) on every rank; differentiable."""
        sizes = balanced_sizes(n, self.world)
        m = sizes[0]
        x = x.movedim(dim, 0)
        if x.shape[0] < m:  # pad to the common size; the pad rows are dropped after the gather
            x = torch.cat([x, x.new_zeros((m - x.shape[0],) + x.shape[1:])])
        full = _AllGather.apply(x, self.group)
        if sizes[-1] != m:
            full = torch.cat([full[r * m:r * m + s] for r, s in enumerate(sizes)])
        return full.movedim(0, dim)

    # ulysses re-layouts: [B, S, H, D] with S the padded per-rank length m
    def _seq_to_heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """[B, n_local, H, D] (my tokens, all heads) -> [B, n, H/cp, D] (all tokens, my heads)."""
        sizes, w = balanced_sizes(n, self.world), self.world
        m = sizes[0]
        b, s, h, d = x.shape
        if s < m:
            x = torch.cat([x, x.new_zeros(b, m - s, h, d)], dim=1)
        x = x.reshape(b, m, w, h // w, d).permute(2, 0, 1, 3, 4)  # [w (head group), B, m, H/w, D]
        x = _AllToAll.apply(x, self.group)  # [w (source rank), B, m, H/w, D]
        x = x.permute(1, 0, 2, 3, 4).reshape(b, w * m, h // w, d)
        if sizes[-1] != m:
            x = torch.cat([x[:, r * m:r * m + sz] for r, sz in enumerate(sizes)], dim=1)
        return x

    def _heads_to_seq(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Inverse of _seq_to_heads: [B, n, H/cp, D] -> [B, n_local, H, D]."""
        sizes, w = balanced_sizes(n, self.world), self.world
        m = sizes[0]
        b, _, hl, d = x.shape
        if sizes[-1] != m:  # re-pad every rank's block to m
            parts, a = [], 0
            for sz in sizes:
                parts.append(x[:, a:a + sz])
                if sz < m:
                    parts.append(x.new_zeros(b, m - sz, hl, d))
                a += sz
            x = torch.cat(parts, dim=1)
        x = x.reshape(b, w, m, hl, d).permute(1, 0, 2, 3, 4)  # [w (destination rank), B, m, H/w, D]
        x = _AllToAll.apply(x, self.group)  # [w (head group), B, m, H/w, D]
        x = x.permute(1, 2, 0, 3, 4).reshape(b, m, w * hl, d)
        return x[:, :sizes[self.rank]]

    def _gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H/cp, D] -> [B, L, H, D] (head groups in rank order)."""
        full = _AllGather.apply(x.movedim(2, 0), self.group)  # [H, B, L, D]
        return full.movedim(0, 2)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int, n: int) -> torch.Tensor:
        """Full attention of [text; all video] for this rank's rows. k, v [B, text_len + n_local, H, D]
        (text replicated, video this rank's slice of n tokens); q the same rows, or only the video ones
        (a last block, whose text output nothing reads); returns q's rows [B, Sq, H, D]."""
        if self.attention_kind == "ulysses":
            return self._ulysses(q, k, v, text_len, n)
        return self._allgather(q, k, v, text_len, n)

    def _allgather(self, q, k, v, text_len, n):
        kv = self.gather(torch.stack([k[:, text_len:], v[:, text_len:]]), n, dim=2)  # [2, B, n, H, D]
        k_all = torch.cat([k[:, :text_len], kv[0]], dim=1)
        v_all = torch.cat([v[:, :text_len], kv[1]], dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2))
        return out.transpose(1, 2)

    def _ulysses(self, q, k, v, text_len, n):
        heads = q.shape[2]
        if heads % self.world:
            raise ValueError(f"ulysses attention needs num_heads ({heads}) divisible by cp_size ({self.world}); "
                             f"use training.parallel.cp_attention: allgather")
        hl = heads // self.world
        hs = slice(self.rank * hl, (self.rank + 1) * hl)
        video_only = q.shape[1] < k.shape[1]
        qv = q if video_only else q[:, text_len:]
        qkv = torch.stack([qv, k[:, text_len:], v[:, text_len:]])  # one all-to-all for the three
        three, b, s, h, d = qkv.shape
        qkv = self._seq_to_heads(qkv.reshape(three * b, s, h, d), n).reshape(three, b, n, hl, d)
        k_, v_ = (torch.cat([t[:, :text_len, hs], qkv[i + 1]], dim=1).transpose(1, 2) for i, t in enumerate((k, v)))
        if video_only:
            out = F.scaled_dot_product_attention(qkv[0].transpose(1, 2), k_, v_).transpose(1, 2)  # [B, n, H/cp, D]
            return self._heads_to_seq(out, n)
        q_ = torch.cat([q[:, :text_len, hs], qkv[0]], dim=1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2)  # [B, L + n, H/cp, D]
        text_out = self._gather_heads(out[:, :text_len])
        video_out = self._heads_to_seq(out[:, text_len:], n)
        return torch.cat([text_out, video_out], dim=1)


class ContextParallelAttention(torch.nn.Module):
    """Drop-in for model.transformer.SDPA (Attention.core) that attends over the video tokens of every
    rank of `cp` (training.parallelize.apply_context_parallel swaps it in)."""

    def __init__(self, cp: ContextParallel):
        super().__init__()
        self.cp = cp

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int,
                video_tokens: int | None = None) -> torch.Tensor:
        return self.cp.attention(q, k, v, text_len, video_tokens)


# -- VAE: frames split across ranks ----------------------------------------------------------------------
class _Halo(torch.autograd.Function):
    """The `h` frames in front of this rank's first frame (dim 2): from the previous rank, or on rank 0
    the first frame repeated (the causal VAE's padding at the clip start).

    Each rank passes on the last h frames of [front; x], so a rank with fewer than h frames forwards
    part of what it received (a chain); with at least h frames the sends do not wait. Backward sends the
    front's gradient back and adds what the next rank returns for the frames it was sent."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, h: int, split: "TimeSplit"):
        ctx.h, ctx.split, ctx.t = h, split, x.shape[2]
        return _exchange_forward(x, h, split)

    @staticmethod
    def backward(ctx, grad_front: torch.Tensor):
        return _exchange_backward(grad_front, ctx.h, ctx.split, ctx.t), None, None


def _exchange_forward(x: torch.Tensor, h: int, s: "TimeSplit", first: torch.Tensor | None = None) -> torch.Tensor:
    """x: this rank's input frames (or, streaming, at least its last h); first: rank 0's first frame
    when x does not start with it."""
    shape = x.shape[:2] + (h,) + x.shape[3:]
    last = s.rank == s.world - 1
    reqs = []
    early = x.shape[2] >= h
    if early and not last:
        reqs.append(dist.isend(x[:, :, x.shape[2] - h:].contiguous(), s.peer(s.rank + 1), group=s.group))
    if s.rank > 0:
        front = x.new_empty(shape)
        dist.recv(front, s.peer(s.rank - 1), group=s.group)
    else:
        front = (x[:, :, :1] if first is None else first).expand(shape).contiguous()
    if not early and not last:
        reqs.append(dist.isend(torch.cat([front, x], dim=2)[:, :, -h:].contiguous(), s.peer(s.rank + 1),
                               group=s.group))
    for r in reqs:
        r.wait()
    return front


def _exchange_backward(grad_front: torch.Tensor, h: int, s: "TimeSplit", t: int) -> torch.Tensor:
    """Gradient of x (t frames) from the gradient of its front and of the tail it sent on."""
    last = s.rank == s.world - 1
    grad_front = grad_front.contiguous().clone()
    early = t >= h
    reqs = []
    if early and s.rank > 0:
        reqs.append(dist.isend(grad_front, s.peer(s.rank - 1), group=s.group))
    grad_x = grad_front.new_zeros(grad_front.shape[:2] + (t,) + grad_front.shape[3:])
    if not last:  # the next rank returns the gradient of the h frames it was sent
        grad_tail = torch.empty_like(grad_front)
        dist.recv(grad_tail, s.peer(s.rank + 1), group=s.group)
        if early:
            grad_x[:, :, t - h:] += grad_tail
        else:  # the tail was [front; x][-h:]: its first h - t frames came from the front
            k = h - t
            grad_x += grad_tail[:, :, k:]
            grad_front[:, :, h - k:] += grad_tail[:, :, :k]
    if s.rank == 0:  # rank 0's front repeats its first frame
        grad_x[:, :, :1] += grad_front.sum(dim=2, keepdim=True)
    elif not early:
        reqs.append(dist.isend(grad_front, s.peer(s.rank - 1), group=s.group))
    for r in reqs:
        r.wait()
    return grad_x


class TimeSplit:
    """A clip's frames split over a process group: halo exchange for causal convs, group-wide GroupNorm.

    Split rule (`frame_counts`): so that every time down/upsampling level pairs the same frames as on
    one process, rank 0 holds 1 + m_0 * unit frames (the first frame is kept apart by the causal VAE)
    and rank r > 0 holds m_r * unit, unit = the temporal compression (encode: pixel frames, 4) or 1
    (decode: latent frames); the m are balanced.
    """

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.first = self.rank == 0  # this rank holds the clip's first frame

    def peer(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank)

    def frame_counts(self, frames: int, unit: int) -> list[int]:
        """Frames per rank for a clip of `frames` = 1 + k * unit."""
        if (frames - 1) % unit:
            raise ValueError(f"a context-parallel VAE needs 1 + k*{unit} frames, got {frames}")
        k = (frames - 1) // unit
        if k < self.world - 1:
            raise ValueError(f"{frames} frames are too few to split over {self.world} context-parallel ranks "
                             f"(at least {1 + (self.world - 1) * unit})")
        # rank 0 also does the lone first frame, so it takes the smaller share of the rest
        m = balanced_sizes(k, self.world)[::-1]
        return [1 + m[0] * unit] + [c * unit for c in m[1:]]

    def bounds(self, frames: int, unit: int) -> tuple[int, int]:
        counts = self.frame_counts(frames, unit)
        a = sum(counts[:self.rank])
        return a, a + counts[self.rank]

    def shard(self, x: torch.Tensor, unit: int) -> torch.Tensor:
        """This rank's frames (dim 2) of x [B, C, F, H, W]."""
        a, b = self.bounds(x.shape[2], unit)
        return x[:, :, a:b].clone()

    def gather(self, x: torch.Tensor, frame_counts: list[int]) -> torch.Tensor:
        """Every rank's frames (dim 2) concatenated in rank order; differentiable."""
        m = max(frame_counts)
        x = x.movedim(2, 0)
        if x.shape[0] < m:
            x = torch.cat([x, x.new_zeros((m - x.shape[0],) + x.shape[1:])])
        full = _AllGather.apply(x, self.group)
        full = torch.cat([full[r * m:r * m + c] for r, c in enumerate(frame_counts)])
        return full.movedim(0, 2)

    def front(self, x: torch.Tensor, h: int, first: torch.Tensor | None = None) -> torch.Tensor:
        """The h frames in front of x's first frame: the previous rank's last ones, or on rank 0 its
        first frame repeated (`first` when streaming passes only the tail of the input as x)."""
        if torch.is_grad_enabled() and x.requires_grad:
            return _Halo.apply(x, h, self)
        return _exchange_forward(x, h, self, first)

    def group_stats(self, x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, rstd) [B, G] of x [B, C, T, ...] over every rank's frames (two passes: sum, then squared
        deviations, both all-reduced), in float32."""
        b = x.shape[0]
        xg = x.reshape(b, groups, -1).float()
        count = torch.tensor([float(xg.shape[2])], device=x.device)
        dist.all_reduce(count, group=self.group)
        mean = all_reduce_sum(xg.sum(2), self.group) / count
        var = all_reduce_sum((xg - mean[:, :, None]).pow(2).sum(2), self.group) / count
        return mean, torch.rsqrt(var + eps)

    def halo_hook(self, conv: nn.Module, args: tuple, kwargs: dict[str, Any]):
        """Forward pre-hook (with_kwargs) for a model.vae.CausalConv3d with a time kernel: a call without a
        cache gets, as its cache, the `conv.time_pad` frames in front of this rank's first one (the
        previous rank's last frames; on rank 0 the first frame repeated, as the conv's own padding). A
        streamed input (model.vae.Slices: frames made on demand) sends only its last frames and, on rank
        0, its first one."""
        x, *rest = args
        if conv.time_pad == 0 or (rest[0] if rest else kwargs.get("cache")) is not None:
            return None  # nothing to pad, or a later chunk on this rank: the conv's cache is the front
        h = conv.time_pad
        if isinstance(x, torch.Tensor):
            front = self.front(x, h)
        else:
            first = x.produce(0, 1) if self.first else None
            front = self.front(x.produce(max(0, x.frames - h), x.frames), h, first)
        kwargs.pop("cache", None)
        return (x, front, *rest[1:]), kwargs

    def group_norm(self, x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
        """nn.GroupNorm with statistics of the whole clip."""
        b, c = x.shape[:2]
        g = norm.num_groups
        mean, rstd = self.group_stats(x, g, norm.eps)
        y = (x.reshape(b, g, -1).float() - mean[:, :, None]) * rstd[:, :, None]
        y = y.reshape(x.shape).to(x.dtype)
        shape = (1, c) + (1,) * (x.dim() - 2)
        return y * norm.weight.view(shape) + norm.bias.view(shape)


class SplitGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics cover every rank's frames of `split` (all-reduced, differentiable), holding
    the very parameters of the norm it replaces (state-dict keys and FSDP sharding are unchanged).
    `stats` serves model.vae's streaming path, `forward` the autograd one."""

    def __init__(self, norm: nn.GroupNorm, split: TimeSplit):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta")
        self.weight, self.bias = norm.weight, norm.bias
        self.split = split

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, rstd) [B, G] over every rank's frames, in float32."""
        return self.split.group_stats(x, self.num_groups, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split.group_norm(x, self)
