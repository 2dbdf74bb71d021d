"""A tiny "published" CogVideoX pipeline built with diffusers itself (random weights, `save_pretrained`):
the exact folder layout of THUDM/CogVideoX-*: model_index.json, transformer/, vae/, text_encoder/,
tokenizer/ (a T5 tokenizer trained here with `tokenizers`), scheduler/."""
from __future__ import annotations

import torch

from tests.model.model_helpers import TINY_VAE, perturb_

# 2 layers x 2 heads x 16: sin-cos positions (the 2b layout); 8x8 latents = 64x64 px, 9 frames = 3 latents.
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
                   text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=16)
# The published scheduler config, with the 5b SNR shift (1.0): runs from this pipeline must train with it.
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                 timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=1.0)
CORPUS = ["a red blob moving right over a soft colour gradient", "a blue square moving left", "green yellow white",
          "purple orange cyan blob up down", "a bright square moving to the right"]


def t5_tokenizer():
    """A real T5TokenizerFast (Unigram + Metaspace, </s> appended) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 10, trainers.UnigramTrainer(vocab_size=80, unk_token="<unk>",
                                                                 special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


# Image-to-video layouts (twice the latent channels in): 5b-I2V (RoPE + a stored position table of the
# 9x64x64 training grid) and 1.5-5B-I2V (2x2x2 patches, ofs embedding; its VAE inverts the image latent scale).
I2V = {"5b-i2v": dict(TRANSFORMER, in_channels=8, use_rotary_positional_embeddings=True,
                      use_learned_positional_embeddings=True),
       "1.5-i2v": dict(TRANSFORMER, in_channels=8, use_rotary_positional_embeddings=True, patch_size_t=2,
                       patch_bias=False, ofs_embed_dim=32)}


def build_tiny_pipeline(folder: str, seed: int = 0, i2v: str | None = None) -> str:
    """A CogVideoXPipeline folder, or with i2v ("5b-i2v", "1.5-i2v") a CogVideoXImageToVideoPipeline one."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline, CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                           num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                           relative_attention_num_buckets=8, relative_attention_max_distance=32))
    vae = perturb_(AutoencoderKLCogVideoX(**dict(TINY_VAE, sample_height=64, sample_width=64,
                                                  invert_scale_latents=i2v == "1.5-i2v")), seed=seed)
    transformer = perturb_(CogVideoXTransformer3DModel(**(I2V[i2v] if i2v else TRANSFORMER)), seed=seed)
    if i2v == "5b-i2v":  # a "trained" position table (text rows non-zero), stored in the checkpoint
        with torch.no_grad():
            pe = transformer.patch_embed.pos_embedding
            pe.add_(torch.randn(pe.shape, generator=torch.Generator().manual_seed(seed + 5), dtype=pe.dtype) * 0.1)
    cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
               transformer=transformer.eval(), scheduler=CogVideoXDDIMScheduler(**SCHEDULER))
    pipe.save_pretrained(folder)
    return folder


def diffusers_video(folder: str, prompt_embeds: torch.Tensor, steps: int, guidance: float, seed: int,
                    frames: int = 9, height: int = 64, width: int = 64, lora: str | None = None) -> torch.Tensor:
    """diffusers' own CogVideoXPipeline output [B, F, C, H, W] in [0, 1] (zeros as the negative embeddings,
    CogVideoX's unconditional branch), with a LoRA file loaded through `load_lora_weights` when given."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora)
    out = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=torch.zeros_like(prompt_embeds),
               num_inference_steps=steps, guidance_scale=guidance, num_frames=frames, height=height, width=width,
               generator=torch.Generator().manual_seed(seed), output_type="pt")
    return out.frames


def diffusers_i2v_video(folder: str, prompt_embeds: torch.Tensor, image, steps: int, guidance: float, seed: int,
                        frames: int = 9, height: int = 64, width: int = 64, lora: str | None = None) -> torch.Tensor:
    """diffusers' own CogVideoXImageToVideoPipeline output [B, F, C, H, W] in [0, 1] for a PIL image."""
    from diffusers import CogVideoXImageToVideoPipeline

    pipe = CogVideoXImageToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora)
    out = pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=torch.zeros_like(prompt_embeds),
               num_inference_steps=steps, guidance_scale=guidance, num_frames=frames, height=height, width=width,
               generator=torch.Generator().manual_seed(seed), output_type="pt")
    return out.frames
