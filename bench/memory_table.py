"""Predicted peak GPU memory of fine-tuning CogVideoX with this trainer, per GPU, from the memory model of
docs/scaling.md, next to the figures CogVideo and finetrainers publish. Prints the markdown of
docs/memory.md; `predict(...)` is importable so a GPU run (issue 28) can put measured peaks beside it.

    .venv/bin/python bench/memory_table.py [--json]

Model (bytes, per GPU, FSDP over `gpus` ranks, bf16 compute):
- weights: full fine-tuning 16 P / gpus (fp32 master + fp32 gradient + two fp32 AdamW moments); LoRA: the
  frozen base in bf16, 2 P / gpus (all of it on one GPU: the trainer leaves it out of FSDP there), plus
  16 A / gpus for the adapters (A = 8 r d per block: to_q/to_k/to_v/to_out, A and B);
- gathered blocks: with more than one GPU, FSDP holds 2 blocks' bf16 weights (2 x 2 P / L: the one computing and
  the prefetched one); on one GPU nothing is gathered (LoRA) or the same two blocks are cast (full);
- activations (bf16): bench/train_cp.py's counts, 14.7 x (226 + N) x d per block without checkpointing (the
  default model/lean.py pieces; LoRA 22.9, every activation kept: an upper bound, its adapters make the
  attention piece fall back to modules), L x (226 + N) x d + one block with it;
- frozen encoders, unless the latent cache is on: T5-XXL encoder (4.76 B) and the VAE (0.22 B) in bf16, plus
  the VAE's encode working set (3 tensors of the first block's 128 channels over a 10-frame chunk, bf16);
  the encode runs before the transformer's forward, so only the larger of the two working sets counts;
- I2V: the patch projection takes 2x the latent channels; 5b-I2V also stores a [226 + N, d] position table.
Not counted: the CUDA context (~0.5 GiB) and allocator fragmentation: a row "fits 24 GB" when its
prediction is at most 90% of a 24 GB card (20.1 GiB).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.train_cp import SAVED_PER_TOKEN_DIM, SAVED_PER_TOKEN_DIM_KEEP, video_tokens  # noqa: E402

GIB = 2**30
T5_XXL_PARAMS = 4.762e9  # google/t5-v1_1-xxl encoder
VAE_PARAMS = 0.2157e9  # CogVideoX AutoencoderKLCogVideoX
TEXT_TOKENS = 226
CARD_24GB = 24e9 * 0.9 / GIB  # usable GiB of a 24 GB card after context and fragmentation (~10%)
MODELS = {  # name: (TransformerConfig factory, kwargs)
    "2b": ("cogvideox_2b", {}),
    "2b-I2V": ("cogvideox_2b", {"in_channels": 32}),  # the layout only: no published 2b I2V checkpoint
    "5b": ("cogvideox_5b", {}),
    "5b-I2V": ("cogvideox_5b", {"in_channels": 32, "learned_positions": True}),
}
CLIPS = {"49x480x720": (49, 480, 720), "81x768x1360": (81, 768, 1360)}
MODES = ["lora-64", "lora-128", "full"]
# Published per-GPU figures: (model, mode, clip) -> (source, GB, their settings)
PUBLISHED = {
    ("2b", "lora-128", "49x480x720"): ("CogVideo (diffusers scripts)", 16, "LoRA, bf16, gradient checkpointing"),
    ("5b", "lora-128", "49x480x720"): ("CogVideo (diffusers scripts)", 24, "LoRA, bf16, gradient checkpointing"),
    ("5b", "full", "49x480x720"): ("CogVideo (diffusers scripts)", 28, "SFT, DeepSpeed ZeRO-3 + CPU offload"),
    ("5b", "lora-64", "49x480x720"): ("finetrainers", 18, "LoRA, FP8 base weights, precomputed latents"),
}


@dataclass
class Prediction:
    """One row: the parts of the predicted peak (GiB per GPU) and their sum."""

    model: str  # 2b, 2b-I2V, 5b, 5b-I2V
    clip: str  # frames x height x width
    mode: str  # lora-<rank> or full
    checkpointing: bool  # activation checkpointing per block
    latent_cache: bool  # precomputed latents + text embeddings (no T5/VAE on the GPU)
    gpus: int  # FSDP shard group size
    params_b: float  # transformer parameters (billions)
    weights: float  # parameters + gradients + optimiser states (+ frozen base)
    gathered: float  # FSDP-gathered bf16 blocks
    activations: float  # saved activations of one sample
    encoders: float  # T5 + VAE weights (0 with the cache)
    total: float  # predicted peak
    fits_24gb: bool  # total <= CARD_24GB


@lru_cache(maxsize=None)
def transformer(model: str):
    """The full-size TransformerConfig and its exact parameter count (built on the meta device)."""
    import torch

    from model.transformer import ExpertTransformer, TransformerConfig

    factory, kw = MODELS[model]
    cfg = getattr(TransformerConfig, factory)(**kw)
    with torch.device("meta"):
        n = ExpertTransformer(cfg).num_params()
    return cfg, n


def predict(model: str, clip: str, mode: str, checkpointing: bool, latent_cache: bool, gpus: int = 1) -> Prediction:
    """Predicted peak memory per GPU of one training sample (batch 1) in bf16; see the module docstring."""
    cfg, p = transformer(model)
    d, layers = cfg.dim, cfg.num_layers
    f, h, w = CLIPS[clip]
    n = video_tokens(f, h, w, cfg.patch_size_t or 1)
    s = TEXT_TOKENS + n
    if mode == "full":
        weights = 16 * p / gpus
    else:
        adapters = layers * 8 * int(mode.split("-")[1]) * d
        weights = 2 * p / gpus + 16 * adapters / gpus
    gathered = 2 * 2 * p / layers if gpus > 1 or mode == "full" else 0.0
    # LoRA's adapters replace the attention projections, where model/lean.py's pieces fall back to the
    # modules: count every activation kept (an upper bound: its feed-forward half stays lean)
    per_block = (SAVED_PER_TOKEN_DIM if mode == "full" else SAVED_PER_TOKEN_DIM_KEEP) * s * d * 2
    acts = (layers * s * d * 2 + per_block) if checkpointing else layers * per_block
    if cfg.learned_positions:
        weights += s * d * 4  # the stored position table (fp32 buffer)
    encoders, vae_work = 0.0, 0.0
    if not latent_cache:
        encoders = 2 * (T5_XXL_PARAMS + VAE_PARAMS)
        vae_work = 3 * 128 * 10 * h * w * 2
    total = (weights + gathered + encoders + max(acts, vae_work)) / GIB
    return Prediction(model, clip, mode, checkpointing, latent_cache, gpus, p / 1e9, weights / GIB, gathered / GIB,
                      acts / GIB, encoders / GIB, total, total <= CARD_24GB)


def supported(model: str, clip: str) -> bool:
    """5b-I2V's stored positions exist for its training grid only (49x480x720); diffusers refuses other sizes."""
    return not (MODELS[model][1].get("learned_positions") and clip != "49x480x720")


def rows() -> list[Prediction]:
    """Every setting of the table: models x clips x modes x checkpointing x latent cache, on 1 and 8 GPUs."""
    out = []
    for model in MODELS:
        for clip in filter(lambda c: supported(model, c), CLIPS):
            for mode in MODES:
                for ac in (True, False):
                    for cache in (True, False):
                        out += [predict(model, clip, mode, ac, cache, g) for g in (1, 8)]
    return out


def markdown(preds: list[Prediction]) -> str:
    by = {(r.model, r.clip, r.mode, r.checkpointing, r.latent_cache, r.gpus): r for r in preds}
    lines = []
    for model in MODELS:
        p = next(r.params_b for r in preds if r.model == model)
        lines += [f"\n### {model} ({p:.2f}B parameters)\n",
                  "| clip | mode | act. ckpt | latent cache | 1 GPU (GiB) | fits 24 GB | 8 GPUs FSDP (GiB) | "
                  "of which activations |", "|---|---|---|---|---|---|---|---|"]
        for clip in CLIPS:
            if not supported(model, clip):
                lines.append(f"| {clip} | - | - | - | n/a: the stored position table is for 49x480x720 only | | | |")
                continue
            for mode in MODES:
                for ac in (True, False):
                    for cache in (True, False):
                        one, eight = by[(model, clip, mode, ac, cache, 1)], by[(model, clip, mode, ac, cache, 8)]
                        lines.append(f"| {clip} | {mode} | {'on' if ac else 'off'} | {'on' if cache else 'off'} | "
                                     f"{one.total:.1f} | {'yes' if one.fits_24gb else 'no'} | {eight.total:.1f} | "
                                     f"{one.activations:.1f} |")
    lines += ["\n### Published figures next to the prediction for the nearest setting (49x480x720, checkpointing on)\n",
              "| model | mode | source | published (GB) | their settings | ours predicted, 1 GPU, cache off / on (GiB) | "
              "8 GPUs, cache off (GiB) |", "|---|---|---|---|---|---|---|"]
    for (model, mode, clip), (src, gb, note) in PUBLISHED.items():
        off, on = by[(model, clip, mode, True, False, 1)], by[(model, clip, mode, True, True, 1)]
        eight = by[(model, clip, mode, True, False, 8)]
        lines.append(f"| {model} | {mode} | {src} | {gb} | {note} | {off.total:.1f} / {on.total:.1f} | {eight.total:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of markdown")
    a = ap.parse_args(argv)
    preds = rows()
    if a.json:
        for r in preds:
            print(json.dumps(asdict(r)))
        return
    print(markdown(preds))


if __name__ == "__main__":
    main()
