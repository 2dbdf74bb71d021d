"""CogVideoX diffusion: v-prediction on a zero-terminal-SNR schedule, explicit uniform timestep sampling,
DDIM and the second-order DPM-Solver++ sampler (as the published schedulers), classifier-free guidance.

Schedule: betas scaled-linear 0.00085 -> 0.012 over 1000 steps (computed in float64), alpha_bar
shifted by alpha_bar / (s + (1 - s) alpha_bar) (s = 3 for 2b, 1 for 5b), then rescaled so the last
step has zero SNR. Numbers match diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class ScheduleConfig:
    num_train_timesteps: int = 1000  # T: training timesteps 0..T-1
    beta_start: float = 0.00085  # scaled-linear betas: linspace(sqrt(start), sqrt(end))^2
    beta_end: float = 0.012
    snr_shift_scale: float = 3.0  # alpha_bar / (s + (1 - s) alpha_bar); 3.0 (2b), 1.0 (5b, 1.5)
    zero_terminal_snr: bool = True  # rescale so alpha_bar[T-1] = 0
    timestep_spacing: str = "trailing"  # sampling grid: "trailing" (published), "leading" or "linspace"

    @classmethod
    def cogvideox_2b(cls, **kw) -> "ScheduleConfig":
        return cls(**kw)

    @classmethod
    def cogvideox_5b(cls, **kw) -> "ScheduleConfig":
        return cls(**{"snr_shift_scale": 1.0, **kw})


def _alphas_cumprod(cfg: ScheduleConfig) -> torch.Tensor:
    betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    s = cfg.snr_shift_scale
    ac = ac / (s + (1 - s) * ac)
    if cfg.zero_terminal_snr:
        root = ac.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        ac = root**2
    return ac


class Schedule:
    """Forward process and training targets. alphas_cumprod is float64 [T]."""

    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config or ScheduleConfig()
        self.num_train_timesteps = self.config.num_train_timesteps
        self.alphas_cumprod = _alphas_cumprod(self.config)

    def _coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) shaped to broadcast over `like` ([B, ...])."""
        ac = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[t.to(like.device).long()]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return ac.sqrt().view(shape), (1 - ac).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a) x0 + sqrt(1 - a) noise."""
        a, s = self._coef(t, x0)
        return a * x0 + s * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a) noise - sqrt(1 - a) x0 (what the transformer predicts)."""
        a, s = self._coef(t, x0)
        return a * noise - s * x0

    def pred_x0(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coef(t, x_t)
        return a * x_t - s * v

    @staticmethod
    def loss(pred_v: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Unweighted MSE on v (equal to the published x0 loss weighted by 1 / (1 - alpha_bar)).
        reduction "mean" -> scalar, "none" -> per-sample [B]."""
        err = (pred_v.float() - target.float()).pow(2).flatten(1).mean(1)
        return err.mean() if reduction == "mean" else err

    def sample_timesteps(self, batch: int, rank: int = 0, world_size: int = 1,
                         generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return explicit_uniform_timesteps(batch, rank, world_size, self.num_train_timesteps, generator, device)

    def inference_timesteps(self, num_steps: int) -> list[int]:
        """Descending timesteps of an num_steps sampling run (diffusers' set_timesteps)."""
        T, spacing = self.num_train_timesteps, self.config.timestep_spacing
        if spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
        elif spacing == "leading":
            ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].astype(np.int64)
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"unknown timestep_spacing {spacing}")
        return [int(t) for t in ts]


def explicit_uniform_timesteps(batch: int, rank: int, world_size: int, num_train_timesteps: int = 1000,
                               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """CogVideoX "explicit uniform sampling": [0, T) is split into world_size equal intervals and rank r
    draws its batch uniformly inside interval r, so every step covers all noise levels evenly.
    Pass the data-parallel rank/size (or a group index and group count to share intervals)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    lo = rank * num_train_timesteps // world_size
    hi = max((rank + 1) * num_train_timesteps // world_size, lo + 1)
    return torch.randint(lo, hi, (batch,), generator=generator, device="cpu").to(device or "cpu")


# -- sampling -------------------------------------------------------------------------------------------
def guidance_scale_at(step: int, num_steps: int, scale: float, dynamic: bool, exponent: float = 5.0) -> float:
    """Guidance weight at sampling step `step` (0 = noisiest). Fixed: scale. Dynamic (SAT DynamicCFG with
    step_index = num_steps - step): 1 + scale * (1 - cos(pi * ((num_steps - step) / num_steps)^exponent)) / 2."""
    if not dynamic:
        return scale
    return 1 + scale * (1 - math.cos(math.pi * ((num_steps - step) / num_steps) ** exponent)) / 2


def _predict(model_fn, x, t: int, step: int, num_steps: int, guidance_scale: float, dynamic: bool):
    """v prediction with classifier-free guidance. With guidance (scale > 1) model_fn gets the latents
    twice, [x; x], and must return [v_uncond; v_cond] (bind [null text; text] embeddings in model_fn)."""
    guided = guidance_scale > 1.0
    inp = torch.cat([x, x]) if guided else x
    tt = torch.full((inp.shape[0],), t, dtype=torch.long, device=x.device)
    v = model_fn(inp, tt).float()
    if guided:
        w = guidance_scale_at(step, num_steps, guidance_scale, dynamic)
        v_u, v_c = v.chunk(2)
        v = v_u + w * (v_c - v_u)
    return v


def _init_latents(shape, generator, device, dtype, latents):
    if latents is not None:
        return latents.to(device)
    return _randn(shape, generator, device, dtype)


def _randn(shape, generator, device, dtype):
    if generator is not None and generator.device.type != "cpu":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def _x0_from_v(ac: torch.Tensor, t: int, prev: int, x: torch.Tensor, v: torch.Tensor):
    """alpha_bar at t and at the previous inference step (1 past the end), and x0 from a v-prediction."""
    a_t = ac[t]
    a_prev = ac[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    return a_t, a_prev, a_t**0.5 * x - (1 - a_t) ** 0.5 * v


@torch.no_grad()
def ddim_sample(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape, schedule: Schedule | None = None,
                num_steps: int = 50, guidance_scale: float = 6.0, dynamic_guidance: bool = False,
                generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                device=None, dtype: torch.dtype = torch.float32, callback=None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) on v predictions. model_fn(x, t) -> v; shape e.g. [B, F, C, H, W].
    callback(step, t, latents) is called after every step. Returns the final latents."""
    schedule = schedule or Schedule()
    ac = schedule.alphas_cumprod
    T = schedule.num_train_timesteps
    x = _init_latents(shape, generator, device, dtype, latents)
    timesteps = schedule.inference_timesteps(num_steps)
    for i, t in enumerate(timesteps):
        v = _predict(model_fn, x, t, i, num_steps, guidance_scale, dynamic_guidance)
        a_t, a_prev, x0 = _x0_from_v(ac, t, t - T // num_steps, x, v)
        c_x = ((1 - a_prev) / (1 - a_t)) ** 0.5
        c_0 = a_prev**0.5 - a_t**0.5 * c_x
        x = (c_x * x + c_0 * x0).to(dtype)
        if callback is not None:
            callback(i, t, x)
    return x


@torch.no_grad()
def dpm_sample(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape, schedule: Schedule | None = None,
               num_steps: int = 50, guidance_scale: float = 6.0, dynamic_guidance: bool = False,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               device=None, dtype: torch.dtype = torch.float32, callback=None) -> torch.Tensor:
    """Stochastic second-order DPM-Solver++ (2M SDE) as CogVideoX's DPM scheduler: each step adds fresh
    noise; from the second step on, the x0 estimate is extrapolated from the previous one. Noise is
    drawn from `generator` in the same order as diffusers, so seeded runs match it step for step."""
    schedule = schedule or Schedule()
    ac = schedule.alphas_cumprod
    T = schedule.num_train_timesteps
    x = _init_latents(shape, generator, device, dtype, latents)
    timesteps = schedule.inference_timesteps(num_steps)
    old_x0 = None
    for i, t in enumerate(timesteps):
        v = _predict(model_fn, x, t, i, num_steps, guidance_scale, dynamic_guidance)
        prev = t - T // num_steps
        a_t, a_prev, x0 = _x0_from_v(ac, t, prev, x, v)
        lamb = ((a_t / (1 - a_t)) ** 0.5).log()
        lamb_next = ((a_prev / (1 - a_prev)) ** 0.5).log()
        h = lamb_next - lamb
        m1 = ((1 - a_prev) / (1 - a_t)) ** 0.5 * (-h).exp()
        m2 = (-2 * h).expm1() * a_prev**0.5
        m_noise = (1 - a_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
        noise = _randn(x.shape, generator, x.device, x.dtype)
        new_x = m1 * x - m2 * x0 + m_noise * noise
        if old_x0 is not None and prev >= 0:
            a_back = ac[timesteps[i - 1]]
            r = (lamb - ((a_back / (1 - a_back)) ** 0.5).log()) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
            noise = _randn(x.shape, generator, x.device, x.dtype)
            new_x = m1 * x - m2 * d + m_noise * noise
        old_x0 = x0
        x = new_x.to(dtype)
        if callback is not None:
            callback(i, t, x)
    return x


def transformer_fn(model, text_emb: torch.Tensor, null_emb: torch.Tensor | None = None,
                   guidance_scale: float = 6.0, image_latents: torch.Tensor | None = None,
                   ofs: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model_fn for the samplers from an ExpertTransformer and text embeddings [B, L, D]. With guidance,
    the unconditional branch uses null_emb (zeros if None, as the original). Image-to-video: the
    conditioning latents [B, F, C, h, w] (model/i2v.py) go to both branches, concatenated on channels."""
    if guidance_scale > 1.0:
        null = torch.zeros_like(text_emb) if null_emb is None else null_emb
        text = torch.cat([null, text_emb])
        image = torch.cat([image_latents] * 2) if image_latents is not None else None
    else:
        text, image = text_emb, image_latents

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(text.dtype)
        if image is not None:
            x = torch.cat([x, image.to(x)], dim=2)
        return model(x, text, t) if ofs is None else model(x, text, t, ofs)

    return fn
