"""--task vae: train the 3D causal VAE on clips.

Loss = l1_weight * L1 + lpips_weight * LPIPS (when weights are given) + kl_weight * KL
       + adaptive_weight * GAN (hinge, 3D patch discriminator) from gan_start_step on.
The KL is summed over latent elements and divided by the pixel elements of a clip, so kl_weight keeps
the usual meaning of taming/SD-style VAEs (reconstruction summed over pixels, KL over latents).

Adaptive GAN weight (taming-transformers): gan_weight * ||dNLL/dx|| / ||dGAN/dx||, clamped to [0, 1e4].
The gradients are taken at the decoder output rather than at its last layer's weight: under FSDP
that weight is a shard, while the output is a plain local tensor. The decoder-side losses are computed
on a detached copy of the reconstruction; their combined gradient is then pushed through the VAE in
one backward, so every FSDP collective runs once per pass on every rank.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from model.convert import load_diffusers_vae, save_diffusers
from model.vae import CausalVAE, VAEConfig
from shards.pixels import unit_range
from training.checkpoint import full_state_dict
from training.data import synthetic_clip
from training.generate import write_mp4
from training.losses import LPIPS, PatchDiscriminator3D, hinge_d_loss, psnr
from training.tasks.base import Task


def vae_config(size: str, channels: list[int] | None = None, latent_channels: int | None = None) -> Any:
    """VAEConfig of a named size, with optional width overrides (GroupNorm groups kept dividing them)."""
    kw: dict[str, Any] = {}
    if channels:
        kw["block_out_channels"] = tuple(channels)
        if size == "tiny":
            kw["norm_num_groups"] = min(min(channels), 8)
    if latent_channels:
        kw["latent_channels"] = latent_channels
    return {"tiny": VAEConfig.tiny, "2b": VAEConfig.cogvideox_2b, "5b": VAEConfig.cogvideox_5b}[size](**kw)


def build_vae(size: str, init_from: str | None, channels: list[int] | None = None,
              latent_channels: int | None = None) -> nn.Module:
    """A CausalVAE: converted diffusers weights when init_from is given, else randomly initialised."""
    if init_from:
        return load_diffusers_vae(init_from)
    return CausalVAE(vae_config(size, channels, latent_channels))


class VAETask(Task):
    name = "vae"

    def build_models(self) -> dict[str, nn.Module]:
        c = self.cfg.vae
        vae = build_vae(c.size, c.init_from, c.channels, c.latent_channels)
        vae.chunked = False  # training sees whole clips: GroupNorm statistics over all frames, one pass per block
        models: dict[str, nn.Module] = {"vae": vae}
        if c.gan_weight > 0:
            models["disc"] = PatchDiscriminator3D(c.disc_channels, c.disc_layers)
        self.lpips = None
        if c.lpips_backbone and c.lpips_linear and c.lpips_weight > 0:
            self.lpips = LPIPS.from_files(c.lpips_backbone, c.lpips_linear).to(self.info.device)
        elif bool(c.lpips_backbone) != bool(c.lpips_linear):
            raise ValueError("training.vae: LPIPS needs both lpips_backbone and lpips_linear (or neither)")
        # by data-parallel rank: the ranks of a context-parallel group draw the same posterior noise
        self.gen = torch.Generator(device=self.info.device).manual_seed(self.cfg.seed * 7919 + self.info.dp_rank)
        self.split = None
        if self.info.cp_size > 1:  # frames of each clip split over the cp group (model/context_parallel.py)
            from model.context_parallel import TimeSplit
            from training.parallelize import apply_vae_context_parallel

            self.split = TimeSplit(self.info.cp_group)
            apply_vae_context_parallel(vae, self.split)
        self.model_config = vae.config
        return models

    def block_lists(self, name: str, model: nn.Module) -> list[nn.ModuleList]:
        if name == "vae":
            return [model.encoder.down_blocks, model.decoder.up_blocks]
        return [model.layers]

    def lr(self, name: str) -> float:
        return self.cfg.vae.disc_lr if name == "disc" else self.cfg.optim.lr

    def _nll(self, recon: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction terms on [B, C, F, H, W] videos."""
        c = self.cfg.vae
        l1 = (recon - x).abs().mean()
        terms = {"l1": l1}
        nll = c.l1_weight * l1
        if self.lpips is not None:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731  [B*F, C, H, W]
            lp = self.lpips(frames(recon), frames(x)).mean()
            terms["lpips"] = lp
            nll = nll + c.lpips_weight * lp
        return nll, terms

    def _split_forward(self, vae: nn.Module, x: torch.Tensor):
        """Context parallel: this rank encodes and decodes its frames (halo exchange, group-wide GroupNorm);
        the posterior noise is the full clip's draw sliced, the reconstruction is gathered (every rank then
        computes the losses of the whole clip), the KL is summed over the group."""
        from model.context_parallel import all_reduce_sum

        s, frames = self.split, x.shape[2]
        latent_frames = (frames - 1) // 4 + 1
        cfg = self.model_config
        sc = cfg.spatial_compression
        shape = (x.shape[0], cfg.latent_channels, latent_frames, x.shape[3] // sc, x.shape[4] // sc)
        noise = torch.randn(shape, generator=self.gen, device=self.gen.device, dtype=x.dtype)
        a, b = s.bounds(latent_frames, 1)
        recon, post = vae(s.shard(x, 4), noise=noise[:, :, a:b])  # through the root module: FSDP gathers it
        recon = s.gather(recon, s.frame_counts(frames, 4))
        kl = all_reduce_sum(post.kl().float(), s.group).mean() / x[0].numel()
        return recon, post, kl

    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        c = self.cfg.vae
        vae = self.models["vae"]
        x = unit_range(batch["frames"], self.info.device, non_blocking=True).transpose(1, 2)  # [B, C, F, H, W]
        if (x.shape[2] - 1) % 8:
            raise ValueError(f"VAE training batch has {x.shape[2]} frames: the CogVideoX VAE reproduces 8N+1 frames "
                             f"(1, 9, 17, ...; an even latent count decodes to 4 extra frames); fix the buckets")
        if self.split is None:
            recon, post = vae(x, sample=True, generator=self.gen)
            kl = post.kl().float().mean() / x[0].numel()
        else:
            recon, post, kl = self._split_forward(vae, x)
        recon = recon.float()
        gan = "disc" in self.models and step >= c.gan_start_step

        # Decoder-side losses on a detached leaf: their gradient w.r.t. the reconstruction.
        r = recon.detach().requires_grad_(True)
        nll, terms = self._nll(r, x)
        nll.backward()
        grad = r.grad.detach().clone()
        metrics: dict[str, Any] = {k: v.detach() for k, v in terms.items()}
        total = nll.detach() + c.kl_weight * kl.detach()
        if gan:
            disc = self.models["disc"]
            r.grad = None
            g_adv = -disc(r).float().mean()
            g_adv.backward()  # also fills the discriminator's grads: dropped below, before its own loss
            weight = c.gan_weight * torch.clamp(grad.norm() / (r.grad.norm() + 1e-4), 0, 1e4)
            grad = grad + weight * r.grad
            disc.zero_grad(set_to_none=True)
            total = total + weight * g_adv.detach()
            metrics.update(g_adv=g_adv.detach(), gan_weight=weight.detach())
        # Push the combined gradient through decoder + encoder, with the KL term, in one backward.
        (torch.sum(recon * grad) + c.kl_weight * kl).backward()
        if gan:
            logits = self.models["disc"](torch.cat([x, recon.detach()])).float()
            real, fake = logits.chunk(2)
            d_loss = hinge_d_loss(real, fake)
            d_loss.backward()
            total = total + d_loss.detach()
            metrics.update(d_loss=d_loss.detach(), logits_real=real.mean().detach(), logits_fake=fake.mean().detach())
        metrics.update(loss=total, kl=kl.detach(), psnr=psnr(recon.detach(), x), samples=x.shape[0],
                       tokens=x.shape[0] * ((x.shape[2] - 1) // 4 + 1) * post.mean.shape[3] * post.mean.shape[4])
        return metrics

    def rank_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])

    def meta(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**super().meta(), "model_config": asdict(self.model_config)}

    @torch.no_grad()
    def validate(self, step: int, folder: str) -> list[str]:
        """Reconstruct held-out synthetic clips; rank 0 writes input|reconstruction mp4s and reports PSNR."""
        d = self.cfg.data
        clips = [synthetic_clip(i, d.synthetic_seed + 10_000, d.frames, d.height, d.width)[0] for i in range(2)]
        x = torch.stack(clips).to(self.info.device).transpose(1, 2)
        vae, s = self.models["vae"], self.split
        if s is None:
            recon = vae(x, sample=False)[0]
        else:  # every rank of the cp group reconstructs its frames (encode, posterior mode, decode)
            recon = s.gather(vae(s.shard(x, 4), sample=False)[0], s.frame_counts(x.shape[2], 4))
        recon = recon.float().clamp(-1, 1)
        value = psnr(recon, x)
        paths = []
        if self.info.is_main:
            os.makedirs(folder, exist_ok=True)
            for i in range(x.shape[0]):
                side = torch.cat([x[i], recon[i]], dim=-1).transpose(0, 1)  # [F, C, H, 2W]
                paths.append(write_mp4(side, os.path.join(folder, f"step_{step:08d}_recon_{i}.mp4"),
                                       self.cfg.sample.fps))
            print(f"[training] step {step}: held-out PSNR {value:.2f} dB -> {folder}", flush=True)
        return paths

    def export(self, folder: str) -> list[str]:
        """diffusers AutoencoderKLCogVideoX folder (config.json + safetensors) at <folder>/vae."""
        state = full_state_dict(self.models["vae"])
        if not self.info.is_main:
            return []
        plain = CausalVAE(self.model_config)
        plain.load_state_dict(state)
        return [save_diffusers(plain, os.path.join(folder, "vae"))]

