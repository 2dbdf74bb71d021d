"""Precompute VAE latents and T5 embeddings once, so transformer training skips both frozen encoders.

    python -m training latents pipelines.yaml [--limit N] [--set k=v]

Reads one epoch of the training loader (training.data.source, usually shards), encodes clips with the
frozen VAE (posterior mean x scaling factor) and captions with the frozen T5, and writes
`<out_dir>/latents/part-XXXXX.safetensors` (latents [B, f, C, h, w], text_emb [B, L, D]). Train on them
with `--set training.data.source=latents`. Text dropout still applies at training time (zeroing
embeddings); posterior sampling does not (the mean is stored), as in CogVideoX's cached-latent fine-tuning.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import torch

from shards.pixels import unit_range
from training.config import resolve_out_dir
from training.data import build_loader
from training.parallelize import pick_device
from training.tasks.transformer import build_frozen_vae, build_text_encoder


@torch.no_grad()
def write_latents(cfg: Any, limit: int | None = None) -> list[str]:
    """Encode up to `limit` batches (default: one epoch) of a loaded pipelines.yaml (vidcurate.flow.load_config)
    into safetensors parts; returns their paths."""
    from safetensors.torch import save_file

    tcfg = cfg.training
    if tcfg.data.source == "latents":
        raise ValueError("training.data.source is 'latents': point it at the clips to encode (shards or synthetic)")
    out_dir = os.path.join(resolve_out_dir(cfg.root, tcfg.out_dir, "transformer"), "latents")
    folder = tcfg.data.latents_dir or out_dir
    os.makedirs(folder, exist_ok=True)
    device = pick_device(tcfg.device, 0)
    vae, text = build_frozen_vae(tcfg, device), build_text_encoder(tcfg, device)
    loader = build_loader(cfg, out_dir, 0, 1)
    dtype = next(vae.parameters()).dtype
    paths = []
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x = unit_range(batch["frames"], device, dtype).transpose(1, 2)
        z = (vae.encode(x).mode().float() * vae.scaling_factor).transpose(1, 2).contiguous().cpu()
        emb = text.encode(list(batch["captions"])).float().cpu()
        path = os.path.join(folder, f"part-{i:05d}.safetensors")
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-part-{i:05d}.safetensors")
        save_file({"latents": z, "text_emb": emb}, tmp)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written part
        paths.append(path)
        if tcfg.data.source == "synthetic" and limit is None and i + 1 >= tcfg.data.synthetic_clips:
            break  # the synthetic stream is endless
    return paths


def main(argv: list[str], load_config: Callable[..., Any]) -> int:
    """The `latents` command; `load_config(path, overrides, check_inputs=False)` validates the whole file."""
    p = argparse.ArgumentParser(prog="python -m training latents", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--limit", type=int, help="stop after this many batches")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    paths = write_latents(load_config(a.config, a.overrides, check_inputs=False), a.limit)
    print(f"[training latents] wrote {len(paths)} parts to {os.path.dirname(paths[0]) if paths else '-'}")
    return 0
