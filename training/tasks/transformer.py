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

from model.convert import load_diffusers_transformer, save_diffusers
from model.diffusion import Schedule
from model.i2v import is_image_to_video
from model.text import TextEncoder
from model.transformer import ExpertTransformer, TransformerConfig
from shards.pixels import unit_range
from training.checkpoint import full_state_dict
from training.config import TINY_RANDOM, TrainingConfig
from training.generate import generate, load_images, write_mp4
from training.lora import apply_lora, base_state, cast_frozen_, merged_state, save_lora_file
from training.parallelize import mixed_precision
from training.pipeline import init_source, pipeline_dir, resolve, schedule_config, write_pipeline
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


def frozen_source(cfg: TrainingConfig, part: str) -> str | None:
    """Local folder of the frozen "vae" or "text_encoder": the yaml key, else init_from's CogVideoX pipeline
    component; None for "tiny-random". Null with no pipeline to take it from is an error naming the key."""
    value = getattr(cfg.transformer, part)
    if value is None and pipeline_dir(cfg):
        value = pipeline_dir(cfg)
    source = model_source(part, value)
    return resolve(source, f"training.transformer.{part}") if source else None


def build_text_encoder(cfg: TrainingConfig, device: torch.device) -> nn.Module:
    """Frozen T5 from training.transformer.text_encoder (the tiny random T5 for "tiny-random")."""
    tc = cfg.transformer
    dtype = torch.bfloat16 if device.type == "cuda" else None
    source = frozen_source(cfg, "text_encoder")
    if source:
        te = TextEncoder.from_pretrained(source, max_length=tc.max_text_len, dtype=dtype)
    else:
        te = TextEncoder.tiny(max_length=tc.max_text_len, seed=0)
    return te.to(device).eval().requires_grad_(False)


def build_frozen_vae(cfg: TrainingConfig, device: torch.device) -> nn.Module:
    """Frozen VAE from training.transformer.vae or init_from's pipeline (a fixed-seed random tiny VAE for "tiny-random")."""
    source = frozen_source(cfg, "vae")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random tiny VAE in training and in `training sample`
        vae = build_vae("tiny", source)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return vae.to(device, dtype).eval().requires_grad_(False)


def transformer_config(cfg: TrainingConfig, text_dim: int, latent_channels: int) -> Any:
    """TransformerConfig of training.transformer.size, matched to the text encoder and VAE in use."""
    size, i2v = cfg.transformer.size, cfg.transformer.image_to_video
    channels = dict(in_channels=2 * latent_channels if i2v else latent_channels, out_channels=latent_channels)
    if size == "tiny":  # diffusers' test model, a little wider so it can learn something
        return TransformerConfig.tiny(head_dim=16, time_embed_dim=32, text_embed_dim=text_dim,
                                      max_text_len=cfg.transformer.max_text_len, sample_height=cfg.data.height // 8,
                                      sample_width=cfg.data.width // 8, sample_frames=cfg.data.frames, **channels)
    build = {"2b": TransformerConfig.cogvideox_2b, "5b": TransformerConfig.cogvideox_5b,
             "1.5-5b": TransformerConfig.cogvideox_1_5_5b}[size]
    if i2v and size == "1.5-5b":  # the published 1.5-I2V layout
        channels["ofs_embed_dim"] = 512
    return build(text_embed_dim=text_dim, **channels)


def build_transformer(cfg: TrainingConfig, text_dim: int, latent_channels: int,
                      model_config: dict | None = None) -> nn.Module:
    """ExpertTransformer: from a saved config dict, from converted CogVideoX weights, or freshly initialised."""
    if model_config is not None:
        return ExpertTransformer(TransformerConfig(**model_config))
    if cfg.transformer.init_from:
        return load_diffusers_transformer(init_source(cfg.transformer.init_from)[1])
    return ExpertTransformer(transformer_config(cfg, text_dim, latent_channels))


def build_schedule(cfg: TrainingConfig) -> Any:
    """The CogVideoX schedule: training.transformer overrides > init_from's scheduler > the size's default."""
    return Schedule(schedule_config(cfg))


def add_lora(cfg: TrainingConfig, model: nn.Module, device: torch.device) -> nn.Module:
    """training.transformer.lora: peft adapters in, base frozen (bf16 when FSDP computes in bf16)."""
    apply_lora(model, cfg.transformer.lora)
    if mixed_precision(cfg.parallel, device).param_dtype == torch.bfloat16:
        cast_frozen_(model, torch.bfloat16)  # FSDP gathers bf16 anyway; the frozen copy needs no fp32 master
    return model


class TransformerTask(Task):
    name = "transformer"
    i2v = False  # image-to-video model (set by build_models from the model's channels)

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
        self.i2v = self._check_image_to_video(model.config)
        if self.cfg.transformer.lora:
            add_lora(self.cfg, model, dev)
        # t, noise, dropout, images; by data-parallel rank: the ranks of a context-parallel group draw alike
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.info.dp_rank)
        return {"transformer": model}

    def block_lists(self, name: str, model: nn.Module) -> list[nn.ModuleList]:
        return [model.blocks]

    def _check_image_to_video(self, config: Any) -> bool:
        """Whether the model is image-to-video (its channels say so); one-line errors for what cannot train it."""
        i2v = is_image_to_video(config.in_channels, config.out_channels)
        if self.cfg.transformer.image_to_video and not i2v:
            raise ValueError("training.transformer.image_to_video is true but init_from is a text-to-video model "
                             f"({config.in_channels} channels in, {config.out_channels} out)")
        if i2v and self.cfg.data.source == "latents":
            raise ValueError("training.data.source: latents holds no separate first-frame latent; an image-to-video "
                             "model trains from clips (shards or synthetic)")
        if i2v and self.cfg.sample.every and not self.cfg.sample.images:
            raise ValueError("training.sample.images: an image-to-video model needs a conditioning image per "
                             "validation prompt (or sample.every: 0)")
        return i2v

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        from training.parallelize import apply_context_parallel, context_parallel

        cp = context_parallel(self.cfg.parallel, self.info, self.model_config.num_heads)
        if cp is not None:  # video tokens split over the cp group (model/context_parallel.py)
            apply_context_parallel(models["transformer"], cp)
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
        elif "latents_mean" in batch:  # the per-clip cache (training/cache.py): a posterior sample, as below
            mean, std = batch["latents_mean"], batch["latents_std"]
            z = (mean + std * torch.randn(mean.shape, generator=self.gen)).to(dev).float()
            emb = batch["text_emb"].to(dev).float()
        else:
            x = batch["frames"]
            if self.cfg.data.image_ratio and float(torch.rand(1, generator=self.gen)) < self.cfg.data.image_ratio:
                x = x[:, :1]  # this step trains on images: the first frame as a 1-frame video
            x = unit_range(x, dev, self.vae_dtype).transpose(1, 2)
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

    @torch.no_grad()
    def image_condition(self, frames: torch.Tensor, latent_frames: int) -> torch.Tensor:
        """Image-to-video input channels [B, f, C, h, w] from the clips' first frames [B, C, H, W]: noise
        augmented (exp(N(mean, std)) sigma), encoded alone, scaled, zero-padded to the video (model/i2v.py)."""
        from model.i2v import condition, image_scale, noise_images

        tc, dev = self.cfg.transformer, self.info.device
        noisy = noise_images(unit_range(frames), self.gen, tc.image_noise_mean, tc.image_noise_std)
        post = self.vae.encode(noisy.to(dev, self.vae_dtype)[:, :, None])
        noise = torch.randn(post.mean.shape, generator=self.gen).to(dev, post.mean.dtype)
        scale = image_scale(self.vae.scaling_factor, self.vae.config.invert_scale_latents)
        image = (post.mean + post.std * noise).float() * scale
        return condition(image.transpose(1, 2), latent_frames)

    def model_inputs(self, x_t: torch.Tensor, batch: dict[str, Any]) -> tuple[tuple, dict]:
        """The transformer's extra inputs: image-to-video channels (and 1.5's ofs) when the model takes them."""
        if not self.i2v:
            return (x_t,), {}
        from model.i2v import OFS

        x = torch.cat([x_t, self.image_condition(batch["frames"][:, 0], x_t.shape[1])], dim=2)
        ofs = torch.full((1,), OFS, device=x.device) if self.model_config.ofs_embed_dim else None
        return (x,), ({"ofs": ofs} if ofs is not None else {})

    # --- one step ------------------------------------------------------------------------------------
    def forward_backward(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        z, emb = self.encode_batch(batch)
        b = z.shape[0]
        t = self.schedule.sample_timesteps(b, self.info.dp_rank, self.info.dp_size, self.gen)
        noise = torch.randn(z.shape, generator=self.gen).to(z.device)
        t = t.to(z.device)
        x_t = self.schedule.add_noise(z, noise, t)
        target = self.schedule.v_target(z, noise, t)
        (x_in,), kw = self.model_inputs(x_t, batch)
        pred = self.models["transformer"](x_in, emb, t, **kw)
        loss = self.schedule.loss(pred, target)
        loss.backward()
        p = self.model_config.patch_size
        tokens = b * (z.shape[1] * (z.shape[3] // p) * (z.shape[4] // p) + emb.shape[1])
        return {"loss": loss.detach(), "t_mean": t.float().mean(), "samples": b, "tokens": tokens}

    def flops_per_step(self, batch: dict[str, Any]) -> float | None:
        """Per sample, forward + backward: 72 L d^2 T for the per-token matmuls of each block (q, k, v, out:
        4d^2; FFN: 8d^2; x 2 for multiply-add, x 3 for backward) + 12 L T^2 d for attention scores and
        values; the last block only for what reaches the video output. Embeddings and the per-sample AdaLN
        projections are left out (the usual MFU convention)."""
        c = self.model_config
        if "latents" in batch or "latents_mean" in batch:
            b, f, _, h, w = batch.get("latents", batch.get("latents_mean")).shape
            text = batch["text_emb"].shape[1]
        else:
            b, f_px, _, h_px, w_px = batch["frames"].shape
            f, h, w, text = (f_px - 1) // 4 + 1, h_px // 8, w_px // 8, c.max_text_len
        video = f // (c.patch_size_t or 1) * (h // c.patch_size) * (w // c.patch_size)
        tokens = video + text
        block = 72 * c.dim**2 * tokens + 12 * tokens**2 * c.dim
        # The last block computes only what reaches the video output: text tokens' k and v (2d^2 of the
        # 12d^2 per token), the video rows of attention; no text queries, text out projection or text FFN.
        last = 6 * c.dim**2 * (12 * video + 2 * text) + 12 * video * tokens * c.dim
        return float(b * ((c.num_layers - 1) * block + last))

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
        s, d = self.cfg.sample, self.cfg.data
        images = load_images(s.images, d.height, d.width, "training.sample.images") if self.i2v else None
        video = generate(self.models["transformer"], self.vae, self.text, self.schedule, s.prompts,
                         s.frames or d.frames, d.height, d.width, s, self.info.device, images=images)
        paths = []
        if self.info.is_main:
            os.makedirs(folder, exist_ok=True)
            for i, v in enumerate(video):
                paths.append(write_mp4(v, os.path.join(folder, f"step_{step:08d}_{i}.mp4"), s.fps))
            print(f"[training] step {step}: {len(paths)} validation samples -> {folder}", flush=True)
        return paths

    def export(self, folder: str) -> list[str]:
        """Diffusers outputs under folder: `transformer/` (+ `transformer_ema/`) of a full fine-tune, or
        `pytorch_lora_weights.safetensors` (+ `transformer_merged/`) of a LoRA run, and always `pipeline/`,
        a whole CogVideoXPipeline folder (a LoRA run's holds the base transformer: load the LoRA on top)."""
        state = {_clean(k): v for k, v in full_state_dict(self.models["transformer"]).items()}
        ema = {}
        if self.ema:
            ema = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in self.ema.items()}
        if not self.info.is_main:
            return []

        def plain(sd: dict, strict: bool = True) -> ExpertTransformer:
            model = ExpertTransformer(self.model_config)
            model.load_state_dict(sd, strict=strict)
            return model

        out, base_from, lora = [], None, self.cfg.transformer.lora
        if lora:
            out.append(save_lora_file(state, lora, os.path.join(folder, "pytorch_lora_weights.safetensors")))
            if lora.export_merged:
                out.append(save_diffusers(plain(merged_state(state, lora)), os.path.join(folder, "transformer_merged")))
            if self.cfg.transformer.init_from:  # the base is unchanged: link the source, in its own precision
                base_from = init_source(self.cfg.transformer.init_from)[1]
            pipe_model = None if base_from else plain(base_state(state))
        else:
            for name, sd in (("transformer", state), ("transformer_ema", ema)):
                if sd:
                    out.append(save_diffusers(plain(sd, strict=name == "transformer"), os.path.join(folder, name)))
            pipe_model = plain(ema, strict=False) if ema else plain(state)  # the weights `training sample` uses
        out.append(write_pipeline(os.path.join(folder, "pipeline"), pipe_model, self.vae, self.text, self.schedule,
                                  self.cfg, base_from, image_to_video=self.i2v))
        return out
