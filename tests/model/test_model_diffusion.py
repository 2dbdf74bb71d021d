"""Diffusion: schedule, targets, explicit uniform timesteps, DDIM / DPM samplers vs diffusers step for step."""
from __future__ import annotations

import math

import pytest
import torch

from model.diffusion import (Schedule, ScheduleConfig, ddim_sample, dpm_sample, explicit_uniform_timesteps,
                             guidance_scale_at, transformer_fn)

diffusers = pytest.importorskip("diffusers")


def _scheduler(cls, shift: float):
    # The published CogVideoX scheduler_config.json values.
    return cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
               prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
               timestep_spacing="trailing", snr_shift_scale=shift, num_train_timesteps=1000)


@pytest.mark.parametrize("shift,make", [(3.0, ScheduleConfig.cogvideox_2b), (1.0, ScheduleConfig.cogvideox_5b)])
def test_alphas_match_cogvideox_ddim_scheduler(shift, make):
    ref = _scheduler(diffusers.CogVideoXDDIMScheduler, shift)
    s = Schedule(make())
    assert torch.equal(s.alphas_cumprod, ref.alphas_cumprod)
    assert s.alphas_cumprod[-1] == 0  # zero terminal SNR
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_forward_process_and_v_target_match_diffusers():
    ref = _scheduler(diffusers.CogVideoXDDIMScheduler, 3.0)
    s = Schedule()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, 4, 4, generator=g), torch.randn(4, 3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 250, 600, 999])
    torch.testing.assert_close(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.v_target(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-6, rtol=0)
    # x0 recovered from the exact v; the v-MSE equals the published x0-MSE weighted by 1 / (1 - alpha_bar)
    xt = s.add_noise(x0, noise, t)
    torch.testing.assert_close(s.pred_x0(xt, s.v_target(x0, noise, t), t), x0, atol=1e-5, rtol=0)
    v_pred = s.v_target(x0, noise, t) + 0.1 * torch.randn_like(x0)
    ac = s.alphas_cumprod.float()[t].view(-1, 1, 1, 1, 1)
    weighted = ((s.pred_x0(xt, v_pred, t) - x0) ** 2 / (1 - ac)).flatten(1).mean(1)
    torch.testing.assert_close(Schedule.loss(v_pred, s.v_target(x0, noise, t), reduction="none"), weighted,
                               atol=1e-5, rtol=1e-4)


def test_explicit_uniform_sampling_gives_each_rank_its_interval():
    world = 8
    seen = []
    for rank in range(world):
        t = explicit_uniform_timesteps(64, rank, world, 1000, torch.Generator().manual_seed(rank))
        lo, hi = rank * 125, (rank + 1) * 125
        assert t.min() >= lo and t.max() < hi and t.dtype == torch.long
        seen.append(t)
    allt = torch.cat(seen)
    assert len(torch.unique(allt // 125)) == world  # every interval covered in one step
    s = Schedule()
    a = s.sample_timesteps(16, rank=1, world_size=2, generator=torch.Generator().manual_seed(3))
    b = s.sample_timesteps(16, rank=1, world_size=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 500
    with pytest.raises(ValueError):
        explicit_uniform_timesteps(4, 2, 2)


def _toy_model():
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))

    def fn(x, t):  # any deterministic function of (x, t); first half of the batch is "unconditional"
        b = x.shape[0]
        bias = torch.linspace(-0.5, 0.5, b).view(b, 1, 1, 1, 1)
        return torch.tanh(x @ w + bias) * (t.float().view(-1, 1, 1, 1, 1) / 1000 + 0.5)

    return fn


@pytest.mark.parametrize("kind", ["ddim", "dpm"])
@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_five_step_loop_matches_diffusers_step_for_step(kind, guidance):
    cls = diffusers.CogVideoXDDIMScheduler if kind == "ddim" else diffusers.CogVideoXDPMScheduler
    ref = _scheduler(cls, 3.0)
    ref.set_timesteps(5)
    fn = _toy_model()
    shape = (2, 3, 4, 4, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)  # diffusers' prepare_latents (init_noise_sigma 1)
    expected, old = [], None
    for i, t in enumerate(ref.timesteps):  # the CogVideoX pipeline's loop
        inp = torch.cat([x, x]) if guidance > 1 else x
        v = fn(inp, t.expand(inp.shape[0])).float()
        if guidance > 1:
            vu, vc = v.chunk(2)
            v = vu + guidance * (vc - vu)
        if kind == "ddim":
            x = ref.step(v, t, x, return_dict=False)[0]
        else:
            x, old = ref.step(v, old, t, ref.timesteps[i - 1] if i > 0 else None, x, generator=g, return_dict=False)
        expected.append(x)
    got = []
    sampler = ddim_sample if kind == "ddim" else dpm_sample
    out = sampler(fn, shape, Schedule(), num_steps=5, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(0), callback=lambda i, t, lat: got.append(lat))
    assert len(got) == 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert torch.equal(out, got[-1])


def test_dynamic_guidance_schedule():
    n, s = 50, 6.0
    w = [guidance_scale_at(i, n, s, dynamic=True) for i in range(n)]
    assert w[0] == pytest.approx(1 + s)  # SAT DynamicCFG: full scale at the noisiest step
    assert all(a >= b for a, b in zip(w, w[1:])) and w[-1] == pytest.approx(1.0, abs=1e-3)
    assert w[10] == pytest.approx(1 + s * (1 - math.cos(math.pi * (40 / 50) ** 5)) / 2)
    assert guidance_scale_at(3, n, s, dynamic=False) == s
    out = ddim_sample(_toy_model(), (2, 3, 4, 4, 4), num_steps=3, guidance_scale=6.0, dynamic_guidance=True,
                      generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_transformer_fn_samples_with_the_expert_transformer():
    from model.transformer import ExpertTransformer, TransformerConfig

    torch.manual_seed(0)
    model = ExpertTransformer(TransformerConfig.tiny()).eval()
    text = torch.randn(1, 8, 8)
    fn = transformer_fn(model, text, guidance_scale=6.0)
    x = ddim_sample(fn, (1, 2, 4, 8, 8), num_steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, 2, 4, 8, 8) and torch.isfinite(x).all()
    x = dpm_sample(transformer_fn(model, text, guidance_scale=1.0), (1, 2, 4, 8, 8), num_steps=2,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
