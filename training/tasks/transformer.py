"""--task transformer: v-prediction training of the expert transformer (CogVideoX recipe).

Per step: clips -> frozen VAE (posterior sample x scaling factor) -> latents [B, f, C, h, w], or
precomputed latents from the batch; captions -> frozen T5 (embeddings zeroed with probability
text_dropout, the unconditional branch of guidance); timesteps by explicit uniform sampling (rank r
draws in the r-th slice of [0, T)); x_t = add_noise(z, noise, t); loss = MSE(model(x_t), v_target).
Optional EMA of the weights, kept sharded like the weights themselves.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from training.config import TINY_RANDOM, TrainingConfig
from training.tasks.base import Task
from training.tasks.vae import build_vae


def _clean(name: str) -> str:
    """Parameter name as in the bare model (activation-checkpoint wrappers add a prefix)."""
    return name.replace("_checkpoint_wrapped_module.", "")


def model_source(key: str, value: str | None) -> str | None:
    """The model folder/hub name of training.transformer.<key>; None when it asks for the tiny random
    model ("tiny-random"). Null, or a local path that does not exist, is a one-line error naming the key."""
    if value == TINY_RANDOM:
        return None
    if value is None:
        raise ValueError(f"training.transformer.{key} is null: set a model folder, or {TINY_RANDOM!r} for a tiny "
                         "random model (demo and tests only)")
    hub_name = re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not value.startswith(".")
    if not os.path.exists(os.path.expanduser(value)) and not hub_name:
        raise ValueError(f"training.transformer.{key}: {value!r} does not exist")
    return value


def build_text_encoder(cfg: TrainingConfig, device: torch.device) -> nn.Module:
    """Frozen T5 from training.transformer.text_encoder (the tiny random T5 for "tiny-random")."""
    from model.text import TextEncoder

    tc = cfg.transformer
    dtype = torch.bfloat16 if device.type == "cuda" else None
    source = model_source("text_encoder", tc.text_encoder)
    if source:
        te = TextEncoder.from_pretrained(source, max_length=tc.max_text_len, dtype=dtype)
    else:
        te = TextEncoder.tiny(max_length=tc.max_text_len, seed=0)
    return te.to(device).eval().requires_grad_(False)


def build_frozen_vae(cfg: TrainingConfig, device: torch.device) -> nn.Module:
    """Frozen VAE from training.transformer.vae (a fixed-seed random tiny VAE for "tiny-random")."""
    source = model_source("vae", cfg.transformer.vae)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random tiny VAE in training and in `training sample`
        vae = build_vae("tiny", source)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return vae.to(device, dtype).eval().requires_grad_(False)


def transformer_config(cfg: TrainingConfig, text_dim: int, latent_channels: int) -> Any:
    """TransformerConfig of training.transformer.size, matched to the text encoder and VAE in use."""
    from model.transformer import TransformerConfig

    size = cfg.transformer.size
    if size == "tiny":  # diffusers' test model, a little wider so it can learn something
        return TransformerConfig.tiny(head_dim=16, time_embed_dim=32, text_embed_dim=text_dim,
                                      max_text_len=cfg.transformer.max_text_len, in_channels=latent_channels,
                                      out_channels=latent_channels, sample_height=cfg.data.height // 8,
                                      sample_width=cfg.data.width // 8, sample_frames=cfg.data.frames)
    build = {"2b": TransformerConfig.cogvideox_2b, "5b": TransformerConfig.cogvideox_5b,
             "1.5-5b": TransformerConfig.cogvideox_1_5_5b}[size]
    return build(text_embed_dim=text_dim, in_channels=latent_channels, out_channels=latent_channels)


def build_transformer(cfg: TrainingConfig, text_dim: int, latent_channels: int,
                      model_config: dict | None = None) -> nn.Module:
    """ExpertTransformer: from a saved config dict, from converted CogVideoX weights, or freshly initialised."""
    from model.convert import load_diffusers_transformer
    from model.transformer import ExpertTransformer, TransformerConfig

    if model_config is not None:
        return ExpertTransformer(TransformerConfig(**model_config))
    if cfg.transformer.init_from:
        return load_diffusers_transformer(cfg.transformer.init_from)
    return ExpertTransformer(transformer_config(cfg, text_dim, latent_channels))


def build_schedule(cfg: TrainingConfig) -> Any:
    from model.diffusion import Schedule, ScheduleConfig

    five = cfg.transformer.size in ("5b", "1.5-5b")
    return Schedule(ScheduleConfig.cogvideox_5b() if five else ScheduleConfig.cogvideox_2b())


class TransformerTask(Task):
    name = "transformer"

    def build_models(self) -> dict[str, nn.Module]:
        dev = self.info.device
        self.text = build_text_encoder(self.cfg, dev)
        self.vae = build_frozen_vae(self.cfg, dev)
        self.schedule = build_schedule(self.cfg)
        model = build_transformer(self.cfg, self.text.dim, self.vae.config.latent_channels)
        if model.config.text_embed_dim != self.text.dim:
            raise ValueError(f"transformer text_embed_dim {model.config.text_embed_dim} != text encoder width "
                             f"{self.text.dim}: training.transformer.init_from and text_encoder do not match")
        self.model_config = model.config
        # t, noise, dropout, images; by data-parallel rank: the ranks of a context-parallel group draw alike
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.info.dp_rank)
        return {"transformer": model}

    def block_lists(self, name: str, model: nn.Module) -> list[nn.ModuleList]:
        return [model.blocks]

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        from training.parallelize import context_parallel

        cp = context_parallel(self.cfg.parallel, self.info, self.model_config.num_heads)
        if cp is not None:  # video tokens split over the cp group (model/context_parallel.py)
            models["transformer"].enable_context_parallel(cp)
        self.ema: dict[str, torch.Tensor] = {}
        if self.cfg.transformer.ema_decay:
            self.ema = {_clean(n): p.detach().clone() for n, p in models["transformer"].named_parameters()}

    # --- inputs --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [B, f, C, h, w] scaled, text embeddings [B, L, D]) with text dropout applied."""
        dev = self.info.device
        if "latents" in batch:
            z, emb = batch["latents"].to(dev).float(), batch["text_emb"].to(dev).float()
        else:
            x = batch["frames"]
            if self.cfg.data.image_ratio and float(torch.rand(1, generator=self.gen)) < self.cfg.data.image_ratio:
                x = x[:, :1]  # this step trains on images: the first frame as a 1-frame video
            x = x.to(dev, self.vae_dtype).transpose(1, 2)
            post = self.vae.encode(x)
            noise = torch.randn(post.mean.shape, generator=self.gen).to(dev, post.mean.dtype)
            z = (post.mean + post.std * noise).float() * self.vae.scaling_factor
            z = z.transpose(1, 2)  # [B, f, C, h, w]
            emb = self.text.encode(list(batch["captions"])).float()
        drop = torch.rand(emb.shape[0], generator=self.gen) < self.cfg.transformer.text_dropout
        emb = emb * (~drop).to(emb.device, emb.dtype).view(-1, 1, 1)  # zeroed text = unconditional branch
        return z, emb

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # --- one step ------------------------------------------------------------------------------------
    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        z, emb = self.encode_batch(batch)
        b = z.shape[0]
        t = self.schedule.sample_timesteps(b, self.info.dp_rank, self.info.dp_size, self.gen)
        noise = torch.randn(z.shape, generator=self.gen).to(z.device)
        t = t.to(z.device)
        x_t = self.schedule.add_noise(z, noise, t)
        target = self.schedule.v_target(z, noise, t)
        pred = self.models["transformer"](x_t, emb, t)
        loss = self.schedule.loss(pred, target)
        loss.backward()
        p = self.model_config.patch_size
        tokens = b * (z.shape[1] * (z.shape[3] // p) * (z.shape[4] // p) + emb.shape[1])
        return {"loss": loss.detach(), "t_mean": t.float().mean(), "samples": b, "tokens": tokens}

    def flops_per_step(self, batch: dict[str, Any]) -> float | None:
        """Per sample, forward + backward: 72 L d^2 T for the per-token matmuls of each block (q, k, v, out:
        4d^2; FFN: 8d^2; x 2 for multiply-add, x 3 for backward) + 12 L T^2 d for attention scores and
        values. Embeddings and the per-sample AdaLN projections are left out (the usual MFU convention)."""
        c = self.model_config
        if "latents" in batch:
            b, f, _, h, w = batch["latents"].shape
            text = batch["text_emb"].shape[1]
        else:
            b, f_px, _, h_px, w_px = batch["frames"].shape
            f, h, w, text = (f_px - 1) // 4 + 1, h_px // 8, w_px // 8, c.max_text_len
        tokens = f // (c.patch_size_t or 1) * (h // c.patch_size) * (w // c.patch_size) + text
        return float(b * c.num_layers * (72 * c.dim**2 * tokens + 12 * tokens**2 * c.dim))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        if self.ema:
            decay = self.cfg.transformer.ema_decay
            params = [p.detach() for _, p in self.models["transformer"].named_parameters()]
            torch._foreach_lerp_(list(self.ema.values()), params, 1 - decay)

    # --- state ---------------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])

    def task_tensors(self) -> dict[str, Any]:
        return {"ema": {"transformer": self.ema}} if self.ema else {}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "model_config": asdict(self.model_config), "ema": bool(self.ema)}

    # --- outputs -------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int, folder: str) -> list[str]:
        """DDIM samples of the validation prompts with the current weights; rank 0 writes the mp4s."""
        from training.sample import generate, write_mp4

        s, d = self.cfg.sample, self.cfg.data
        video = generate(self.models["transformer"], self.vae, self.text, self.schedule, s.prompts,
                         s.frames or d.frames, d.height, d.width, s, self.info.device)
        paths = []
        if self.info.is_main:
            os.makedirs(folder, exist_ok=True)
            for i, v in enumerate(video):
                paths.append(write_mp4(v, os.path.join(folder, f"step_{step:08d}_{i}.mp4"), s.fps))
            print(f"[training] step {step}: {len(paths)} validation samples -> {folder}", flush=True)
        return paths

    def export(self, folder: str) -> list[str]:
        """diffusers CogVideoXTransformer3DModel folder at <folder>/transformer (and transformer_ema)."""
        from model.convert import save_diffusers
        from model.transformer import ExpertTransformer

        from training.checkpoint import full_state_dict

        state = full_state_dict(self.models["transformer"])
        ema = {}
        if self.ema:
            ema = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in self.ema.items()}
        if not self.info.is_main:
            return []
        out = []
        for name, sd in (("transformer", state), ("transformer_ema", ema)):
            if sd:
                plain = ExpertTransformer(self.model_config)
                plain.load_state_dict(sd, strict=name == "transformer")
                out.append(save_diffusers(plain, os.path.join(folder, name)))
        return out
