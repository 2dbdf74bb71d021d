"""CogVideoX expert transformer: full 3D attention over [text tokens ; video tokens].

Shapes: latents [B, F, C, H, W] (frames before channels, as diffusers), text [B, L, text_dim],
timesteps [B]. Video tokens are 2x2 patches of each latent frame (1.0) or 2x2x2 patches over pairs of
frames (1.5). Each block: expert AdaLN (one LayerNorm, separate shift/scale/gate for text and video from
the time embedding) -> attention (QK LayerNorm, 3D RoPE on video tokens, SDPA) -> gated residual ->
expert AdaLN -> GELU(tanh) FFN -> gated residual. Output: LayerNorm, AdaLN, linear, unpatchify.

Weights load from / export to the published diffusers checkpoints through model/convert.py.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.embeddings import apply_rope, rope_3d, rope_complex, sincos_3d, timestep_embedding
from model.lean import Mods, modulated_linear, modulated_mlp


@dataclass
class TransformerConfig:
    num_heads: int = 30  # attention heads; width = num_heads * head_dim
    head_dim: int = 64  # channels per head
    num_layers: int = 30  # transformer blocks
    in_channels: int = 16  # latent channels in
    out_channels: int = 16  # latent channels out (the v prediction)
    time_embed_dim: int = 512  # width of the timestep MLP output that drives every AdaLN
    text_embed_dim: int = 4096  # text encoder width (T5-XXL: 4096)
    max_text_len: int = 226  # text tokens the model was trained with (positions are built for this many)
    patch_size: int = 2  # spatial patch (p x p latent pixels per token)
    patch_size_t: int | None = None  # temporal patch (1.5: 2); None = one latent frame per token (1.0)
    use_rope: bool = False  # 3D RoPE on video q/k (5b, 1.5) instead of additive 3D sin-cos (2b)
    sample_height: int = 60  # latent height of the training resolution (RoPE crop grid / default sin-cos grid)
    sample_width: int = 90  # latent width of the training resolution
    sample_frames: int = 49  # pixel frames of the training clip (only kept for export to diffusers' config)
    temporal_compression: int = 4  # VAE temporal compression (only kept for export)
    spatial_interpolation_scale: float = 1.875  # sin-cos: spatial positions are divided by this
    temporal_interpolation_scale: float = 1.0  # sin-cos: temporal positions are divided by this
    attention_bias: bool = True  # bias in q/k/v projections
    patch_bias: bool = True  # bias in the 2x2 conv patch projection (1.0 only; 1.5's config says False)
    norm_eps: float = 1e-5  # LayerNorm eps of the AdaLN norms
    qk_norm_eps: float = 1e-6  # LayerNorm eps of the per-head q/k norms
    flip_sin_to_cos: bool = True  # timestep sinusoid layout [cos | sin]
    freq_shift: float = 0.0  # timestep sinusoid frequency shift
    ofs_embed_dim: int | None = None  # 1.5 image-to-video "ofs" embedding width (None: absent)
    learned_positions: bool = False  # 5b-I2V (1.0): a stored [text + video] position table added to the tokens (with RoPE)
    rope_theta: float = 10000.0  # RoPE base

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def tiny(cls, **kw) -> "TransformerConfig":
        """diffusers' own test config: 2 heads x 8, 2 layers, 4 latent channels, 8x8 latent grid."""
        base = dict(num_heads=2, head_dim=8, num_layers=2, in_channels=4, out_channels=4, time_embed_dim=2,
                    text_embed_dim=8, max_text_len=8, sample_height=8, sample_width=8, sample_frames=8)
        base.update(kw)
        return cls(**base)

    @classmethod
    def cogvideox_2b(cls, **kw) -> "TransformerConfig":
        return cls(**kw)

    @classmethod
    def cogvideox_5b(cls, **kw) -> "TransformerConfig":
        base = dict(num_heads=48, num_layers=42, use_rope=True)
        base.update(kw)
        return cls(**base)

    @classmethod
    def cogvideox_1_5_5b(cls, **kw) -> "TransformerConfig":
        base = dict(num_heads=48, num_layers=42, use_rope=True, patch_size_t=2, patch_bias=False,
                    sample_height=300, sample_width=300, sample_frames=81)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


class ExpertAdaLN(nn.Module):
    """One LayerNorm for both modalities; the time embedding gives each its own shift, scale and gate."""

    def __init__(self, temb_dim: int, dim: int, eps: float):
        super().__init__()
        self.mod = nn.Linear(temb_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def modulation(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate, text shift, text scale, text gate), each [B, 1, dim]."""
        return self.mod(F.silu(temb)).unsqueeze(1).chunk(6, dim=2)

    def modulate(self, video: torch.Tensor, text: torch.Tensor | None, mods: Mods) -> torch.Tensor:
        """[LN(text) * (1 + text scale) + text shift ; the same for video] (video alone when text is None)."""
        shift, scale, t_shift, t_scale = mods
        video = torch.addcmul(shift, self.norm(video), 1 + scale)
        if text is None:
            return video
        return torch.cat([torch.addcmul(t_shift, self.norm(text), 1 + t_scale), video], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention over the joint sequence with per-head q/k LayerNorm and video-only RoPE."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, bias: bool, qk_eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.to_q = nn.Linear(dim, num_heads * head_dim, bias=bias)
        self.to_k = nn.Linear(dim, num_heads * head_dim, bias=bias)
        self.to_v = nn.Linear(dim, num_heads * head_dim, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=qk_eps)
        self.norm_k = nn.LayerNorm(head_dim, eps=qk_eps)
        self.to_out = nn.Linear(num_heads * head_dim, dim, bias=True)
        # the attention kernel, a module so that a parallelism applied from outside can swap it
        # (training.parallelize.apply_context_parallel puts an exact distributed one here)
        self.core = SDPA()

    def _stacked(self, *lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of several projections stacked: one matmul over x for all of them (and one
        grad-input matmul in backward)."""
        bias = None if lin[0].bias is None else torch.cat([m.bias for m in lin])
        return torch.cat([m.weight for m in lin]), bias

    def _plain(self) -> bool:
        """Whether q/k/v are plain Linears (adapters, e.g. LoRA layers in their place, are called as modules)."""
        return all(type(m) is nn.Linear for m in (self.to_q, self.to_k, self.to_v))

    def _qkv(self, x: torch.Tensor, text_len: int, video_only: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projections; with video_only, q of the video tokens only (k/v of all: text keys stay visible)."""
        xq = x[:, text_len:] if video_only else x
        if not self._plain():
            return self.to_q(xq), self.to_k(x), self.to_v(x)
        if not video_only:
            return F.linear(x, *self._stacked(self.to_q, self.to_k, self.to_v)).chunk(3, dim=-1)
        k, v = F.linear(x, *self._stacked(self.to_k, self.to_v)).chunk(2, dim=-1)
        return self.to_q(xq), k, v

    def forward(self, x: torch.Tensor, text_len: int, rope: torch.Tensor | None, video_tokens: int | None = None,
                video_only: bool = False) -> torch.Tensor:
        """x [B, S, dim] with the first text_len tokens text; rope: complex rotations [S_video, 1, head_dim/2].
        When the video tokens are split over ranks from outside, x holds this rank's video tokens of
        `video_tokens` in all (the swapped `core` knows how to attend over all of them). video_only:
        only the video tokens' outputs [B, S - text_len, dim] (queries of video tokens over all keys)."""
        return self._attend(*self._qkv(x, text_len, video_only), text_len, rope, video_tokens, video_only)

    def modulated(self, video: torch.Tensor, text: torch.Tensor, adaln: "ExpertAdaLN", mods: Mods,
                  rope: torch.Tensor | None, video_tokens: int | None, video_only: bool) -> torch.Tensor:
        """forward(adaln.modulate(video, text, mods), ...) with the AdaLN, concatenation and q/k/v
        projection as one autograd piece that saves only its inputs (model.lean)."""
        text_len = text.shape[1]
        if not self._plain():
            return self(adaln.modulate(video, text, mods), text_len, rope, video_tokens, video_only)
        if video_only:
            k, v = modulated_linear(video, text, adaln.norm, mods, *self._stacked(self.to_k, self.to_v)).chunk(2, -1)
            q = modulated_linear(video, None, adaln.norm, mods, self.to_q.weight, self.to_q.bias)
        else:
            q, k, v = modulated_linear(video, text, adaln.norm, mods,
                                       *self._stacked(self.to_q, self.to_k, self.to_v)).chunk(3, -1)
        return self._attend(q, k, v, text_len, rope, video_tokens, video_only)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int, rope: torch.Tensor | None,
                video_tokens: int | None, video_only: bool) -> torch.Tensor:
        q = self.norm_q(q.unflatten(-1, (self.num_heads, self.head_dim)))  # [B, Sq, H, hd]
        k = self.norm_k(k.unflatten(-1, (self.num_heads, self.head_dim)))
        v = v.unflatten(-1, (self.num_heads, self.head_dim))
        if rope is not None:  # rotate video tokens in place (the norm outputs are not needed by autograd)
            if video_only:
                q = apply_rope(q, rope)
            else:
                q[:, text_len:] = apply_rope(q[:, text_len:], rope)
            k[:, text_len:] = apply_rope(k[:, text_len:], rope)
        return self.to_out(self.core(q, k, v, text_len, video_tokens).flatten(2))


class SDPA(nn.Module):
    """Attention of queries [B, Sq, H, D] over keys/values [B, S, H, D] -> [B, Sq, H, D] (no parameters)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int,
                video_tokens: int | None = None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    def modulated(self, video: torch.Tensor, text: torch.Tensor | None, adaln: "ExpertAdaLN", mods: Mods) -> torch.Tensor:
        """forward(adaln.modulate(video, text, mods)) as one autograd piece that saves its inputs and fc1's
        pre-activation only (model.lean); adapters in place of fc1/fc2 are called as modules."""
        if type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear:
            return modulated_mlp(video, text, adaln.norm, mods, self.fc1, self.fc2)
        return self(adaln.modulate(video, text, mods))


class Block(nn.Module):
    """One expert transformer block; video and text streams share every weight but the AdaLN outputs."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = ExpertAdaLN(cfg.time_embed_dim, dim, cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.head_dim, cfg.attention_bias, cfg.qk_norm_eps)
        self.norm2 = ExpertAdaLN(cfg.time_embed_dim, dim, cfg.norm_eps)
        self.ff = FeedForward(dim, 4 * dim)

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
                rope: torch.Tensor | None = None, video_tokens: int | None = None,
                video_only: bool = False, lean: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(video, text) streams after the block. video_only (the last block: nothing reads its text
        output) returns (video, None) and skips the work that only feeds the text stream: text queries,
        their attention rows, out projection, norm and feed-forward (same video output). lean (with
        grad): AdaLN + concatenation + q/k/v, and AdaLN + concatenation + FFN, as hand-written autograd
        pieces that keep only their inputs and fc1's pre-activation for backward (model.lean)."""
        lean = lean and torch.is_grad_enabled()
        text_len = text.shape[1]
        shift, scale, gate, t_shift, t_scale, t_gate = self.norm1.modulation(temb)
        mods = (shift, scale, t_shift, t_scale)
        if lean:
            out = self.attn.modulated(video, text, self.norm1, mods, rope, video_tokens, video_only)
        else:
            out = self.attn(self.norm1.modulate(video, text, mods), text_len, rope, video_tokens, video_only)
        video, text = self._gated(video, text, gate, t_gate, out, video_only)

        shift, scale, gate, t_shift, t_scale, t_gate = self.norm2.modulation(temb)
        mods = (shift, scale, t_shift, t_scale)
        if lean:
            out = self.ff.modulated(video, text, self.norm2, mods)
        else:
            out = self.ff(self.norm2.modulate(video, text, mods))
        return self._gated(video, text, gate, t_gate, out, video_only)

    @staticmethod
    def _gated(video: torch.Tensor, text: torch.Tensor | None, gate: torch.Tensor, t_gate: torch.Tensor,
               out: torch.Tensor, video_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gated residuals: (video + gate * out_video, text + text gate * out_text); out holds video
        tokens only when video_only (text then None)."""
        if video_only:
            return torch.addcmul(video, gate, out), None
        # split, not two slices: backward joins the two gradients with one cat instead of two zero-filled
        # full-size buffers added together
        out_text, out_video = out.split([text.shape[1], out.shape[1] - text.shape[1]], dim=1)
        return torch.addcmul(video, gate, out_video), torch.addcmul(text, t_gate, out_text)


class ExpertTransformer(nn.Module):
    """CogVideoX transformer. `blocks` is the list to shard per block (FSDP2) or checkpoint."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = cfg = config
        dim, p = cfg.dim, cfg.patch_size
        if cfg.patch_size_t is None:
            self.patch_proj = nn.Conv2d(cfg.in_channels, dim, kernel_size=p, stride=p, bias=cfg.patch_bias)
        else:
            # (the published 1.5 patch projection has a bias whatever patch_bias says)
            self.patch_proj = nn.Linear(cfg.in_channels * p * p * cfg.patch_size_t, dim)
        if not cfg.use_rope and cfg.patch_size_t is not None:
            raise ValueError("sin-cos positions are defined for one latent frame per token (patch_size_t=None)")
        self.text_proj = nn.Linear(cfg.text_embed_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, cfg.time_embed_dim), nn.SiLU(),
                                      nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim))
        self.ofs_mlp = None
        if cfg.ofs_embed_dim:
            self.ofs_mlp = nn.Sequential(nn.Linear(cfg.ofs_embed_dim, cfg.ofs_embed_dim), nn.SiLU(),
                                         nn.Linear(cfg.ofs_embed_dim, cfg.ofs_embed_dim))
        if cfg.learned_positions:  # diffusers keeps it a persistent buffer (loaded, never trained): so do we
            self.register_buffer("pos_embedding", torch.zeros(1, cfg.max_text_len + self._sample_tokens(), dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_final = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.out_mod = nn.Linear(cfg.time_embed_dim, 2 * dim)
        self.out_norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        pt = cfg.patch_size_t or 1
        self.proj_out = nn.Linear(dim, p * p * pt * cfg.out_channels)
        self.gradient_checkpointing = False  # recompute whole blocks in backward (least memory)
        # AdaLN + q/k/v and AdaLN + FFN as hand-written autograd pieces (model.lean) that save only their
        # inputs and fc1's pre-activation, recomputing LayerNorm/modulation/GELU in backward: at 2 blocks x
        # 1058 tokens on CPU 1.42x less peak memory than diffusers (78.9 vs 111.7 MiB; keeping all: 103.7)
        # for 2-4% more step time than keeping all (bench/model.py, docs/measurements.md); False keeps all
        self.selective_recompute = True
        self._pos_cache: dict = {}

    # -- positions ---------------------------------------------------------------------------------
    def _sample_tokens(self) -> int:
        cfg = self.config
        frames = (cfg.sample_frames - 1) // cfg.temporal_compression + 1
        return frames * (cfg.sample_height // cfg.patch_size) * (cfg.sample_width // cfg.patch_size)

    def _learned_positions(self, frames: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The [1, text + video, dim] table of a 5b-I2V model: the stored one at the training grid; for
        other frame counts the sin-cos table with zero text rows, as diffusers does (other sizes refused)."""
        cfg, p = self.config, self.config.patch_size
        if (height, width) != (cfg.sample_height, cfg.sample_width):
            raise ValueError(f"learned positions (5b-I2V) exist only for latents of {cfg.sample_height}x"
                             f"{cfg.sample_width}, got {height}x{width}")
        if (frames - 1) * cfg.temporal_compression + 1 == cfg.sample_frames:
            return self.pos_embedding.to(dtype)
        video = sincos_3d(cfg.dim, frames, height // p, width // p, cfg.spatial_interpolation_scale,
                          cfg.temporal_interpolation_scale, self.pos_embedding.device)
        text = video.new_zeros(cfg.max_text_len, cfg.dim)
        return torch.cat([text, video])[None].to(dtype)

    def _positions(self, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype):
        """Token-grid positions for (latent frames, latent height, latent width): the RoPE (cos, sin)
        pair, or the sin-cos table to add to video tokens. Cached per shape."""
        cfg, p = self.config, self.config.patch_size
        key = (frames, height, width, device, dtype)
        if key not in self._pos_cache:
            gh, gw = height // p, width // p
            if cfg.use_rope:
                if cfg.patch_size_t is None:
                    cos, sin = rope_3d(cfg.head_dim, frames, gh, gw, (cfg.sample_height // p, cfg.sample_width // p),
                                       cfg.rope_theta, device)
                else:
                    cos, sin = rope_3d(cfg.head_dim, frames // cfg.patch_size_t, gh, gw, None, cfg.rope_theta, device)
                val = rope_complex(cos, sin)
            else:
                val = sincos_3d(cfg.dim, frames, gh, gw, cfg.spatial_interpolation_scale,
                                cfg.temporal_interpolation_scale, device).to(dtype)
            self._pos_cache = {key: val}  # keep one entry: shapes rarely change within a run
        return self._pos_cache[key]

    # -- patches -----------------------------------------------------------------------------------
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, F, C, H, W] -> video tokens [B, N, dim], ordered frame, row, column."""
        b, f, c, h, w = latents.shape
        p, pt = self.config.patch_size, self.config.patch_size_t
        if pt is None:
            x = self.patch_proj(latents.reshape(b * f, c, h, w))  # [B*F, D, h/p, w/p]
            return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])
        if f % pt:
            raise ValueError(f"latent frames ({f}) must be a multiple of patch_size_t ({pt}); pad the latents")
        x = latents.permute(0, 1, 3, 4, 2).reshape(b, f // pt, pt, h // p, p, w // p, p, c)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3)
        return self.patch_proj(x)

    def unpatchify(self, x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Video tokens [B, N, p*p*pt*C] -> [B, F, C, H, W]."""
        b = x.shape[0]
        p, pt = self.config.patch_size, self.config.patch_size_t
        # one permute + reshape: the result is a fresh tensor, not a view (FSDP2 warns about root views)
        if pt is None:
            x = x.reshape(b, frames, height // p, width // p, -1, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        else:
            x = x.reshape(b, frames // pt, height // p, width // p, -1, pt, p, p).permute(0, 1, 5, 4, 2, 6, 3, 7)
        return x.reshape(b, frames, -1, height, width)

    # -- forward -----------------------------------------------------------------------------------
    def time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype, ofs: torch.Tensor | None = None):
        cfg = self.config
        temb = self.time_mlp(timestep_embedding(timesteps, cfg.dim, cfg.flip_sin_to_cos, cfg.freq_shift).to(dtype))
        if self.ofs_mlp is not None:
            if ofs is None:
                raise ValueError("this model has an ofs embedding (1.5 image-to-video): pass ofs")
            ofs_emb = timestep_embedding(ofs.reshape(-1), cfg.ofs_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
            temb = temb + self.ofs_mlp(ofs_emb.to(dtype))
        return temb

    def forward(self, latents: torch.Tensor, text_emb: torch.Tensor, timesteps: torch.Tensor,
                ofs: torch.Tensor | None = None) -> torch.Tensor:
        b, f, _, h, w = latents.shape
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=latents.device)
        timesteps = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
        temb = self.time_embedding(timesteps, latents.dtype, ofs)

        video = self.patchify(latents)
        text = self.text_proj(text_emb)
        if self.config.learned_positions:
            table = self._learned_positions(f, h, w, video.dtype)
            text, video = text + table[:, :text.shape[1]], video + table[:, text.shape[1]:]
        pos = self._positions(f, h, w, latents.device, latents.dtype)
        rope = None
        if self.config.use_rope:
            rope = pos
        else:
            video = video + pos

        # blocks are called with positional arguments (video, text, temb, rope, video tokens, last, lean): an
        # outside parallelism hooks them there (training.parallelize.apply_context_parallel)
        n, grad = video.shape[1], torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1  # its text output is never read
            if self.gradient_checkpointing and grad:
                video, text = checkpoint(block, video, text, temb, rope, n, last, use_reentrant=False)
            else:
                video, text = block(video, text, temb, rope, n, last, self.selective_recompute)

        video = self.norm_final(video)
        shift, scale = self.out_mod(F.silu(temb)).unsqueeze(1).chunk(2, dim=2)
        video = torch.addcmul(shift, self.out_norm(video), 1 + scale)
        return self.unpatchify(self.proj_out(video), f, h, w)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
