"""CogVideoX model: 3D causal VAE, expert transformer, diffusion, text encoder, diffusers weight conversion.

Imports torch only (and transformers in model.text); nothing from the data side. Submodules:
  model.vae          VAEConfig, CausalVAE, DiagonalGaussian
  model.transformer  TransformerConfig, ExpertTransformer
  model.diffusion    ScheduleConfig, Schedule, ddim_sample, dpm_sample, transformer_fn
  model.text         TextEncoder
  model.convert      load_diffusers_transformer / load_diffusers_vae, export_*, save_diffusers
"""
from model.diffusion import Schedule, ScheduleConfig, ddim_sample, dpm_sample, transformer_fn
from model.transformer import ExpertTransformer, TransformerConfig
from model.vae import CausalVAE, DiagonalGaussian, VAEConfig

__all__ = [
    "CausalVAE", "DiagonalGaussian", "ExpertTransformer", "Schedule", "ScheduleConfig", "TransformerConfig",
    "VAEConfig", "ddim_sample", "dpm_sample", "transformer_fn",
]
