"""LoRA fine-tuning of the expert transformer with peft, and LoRA files in diffusers' format.

    apply_lora(model, cfg)        peft LoRA layers on the targeted nn.Linear modules; everything else frozen
    lora_state_dict(state)        -> {"transformer.transformer_blocks.N.attn1.to_q.lora_A.weight": ...}
    save_lora_file(state, cfg, path)  the `pytorch_lora_weights.safetensors` that
                                  `CogVideoXPipeline.load_lora_weights` reads (what `save_lora_weights` writes:
                                  keys prefixed `transformer.`, the peft config in `lora_adapter_metadata`)
    base_state(state) / merged_state(state, cfg)   plain transformer state dicts (adapters dropped / merged)
    merge_lora_file(model, path)  a diffusers LoRA file merged into a plain ExpertTransformer (sampling)

Our module names differ from diffusers' (blocks.N.attn.to_q vs transformer_blocks.N.attn1.to_q); the
key renames of model.convert translate adapter keys exactly as they translate the base weights.
"""
from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from model.convert import transformer_key_from_diffusers, transformer_key_to_diffusers
from training.config import LoraConfig

# config target -> our module-name pattern under blocks.N
_TARGETS = {"to_q": r"attn\.to_q", "to_k": r"attn\.to_k", "to_v": r"attn\.to_v", "to_out": r"attn\.to_out",
            "ff": r"ff\.fc[12]"}
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer."


def target_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the nn.Linear modules that get adapters."""
    pattern = re.compile(r"^blocks\.\d+\.(" + "|".join(_TARGETS[t] for t in targets) + r")$")
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.match(n)]


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Inject peft LoRA layers (A: Kaiming, B: zeros, so the model starts as the base) and freeze the base.

    Call before sharding, after the global seed is set: every rank then draws the same A matrices.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    names = target_names(model, cfg.targets)
    if not names:
        raise ValueError(f"training.transformer.lora.targets {cfg.targets}: no matching layer in the transformer")
    model.requires_grad_(False)
    inject_adapter_in_model(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                           target_modules=names, init_lora_weights=True), model)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    return names


def cast_frozen_(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen (base) parameters to `dtype` (bf16 on GPU halves their memory); adapters stay fp32."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


def _is_lora(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def _plain_key(key: str) -> str:
    """peft's names in our model -> the bare model's: `x.base_layer.weight` -> `x.weight`, adapter name dropped."""
    return key.replace(".base_layer.", ".").replace(".default.", ".")


def lora_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter tensors of a full (peft-injected) state dict under diffusers' names, prefixed `transformer.`."""
    return {PREFIX + transformer_key_to_diffusers(_plain_key(k)): v for k, v in state.items() if _is_lora(k)}


def base_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen base weights under the bare model's names (what the run started from)."""
    return {_plain_key(k): v for k, v in state.items() if not _is_lora(k)}


def merged_state(state: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """Base weights with every adapter merged in: W + alpha / r * B @ A (computed in fp32)."""
    out = base_state(state)
    scale = cfg.alpha / cfg.rank
    for k, a in state.items():
        if ".lora_A." in k:
            b = state[k.replace(".lora_A.", ".lora_B.")]
            w = _plain_key(k).replace(".lora_A.", ".")
            out[w] = (out[w].float() + scale * (b.float() @ a.float())).to(out[w].dtype)
    return out


def adapter_metadata(cfg: LoraConfig, lora: dict[str, torch.Tensor]) -> dict:
    """The peft LoraConfig fields diffusers rebuilds the adapter from (so alpha != rank loads exactly)."""
    modules = sorted({k[len(PREFIX):].split(".lora_")[0] for k in lora})
    return {f"{PREFIX}{k}": v for k, v in {"r": cfg.rank, "lora_alpha": cfg.alpha, "target_modules": modules,
                                            "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True}.items()}


def save_lora_file(state: dict[str, torch.Tensor], cfg: LoraConfig, path: str) -> str:
    """Write `pytorch_lora_weights.safetensors` (fp32 adapters) atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    lora = {k: v.detach().float().contiguous().cpu() for k, v in lora_state_dict(state).items()}
    meta = {"format": "pt", METADATA_KEY: json.dumps(adapter_metadata(cfg, lora), indent=2, sort_keys=True)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(lora, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)
    return path


def read_lora_file(path: str) -> tuple[dict[str, torch.Tensor], float | None]:
    """(adapter tensors without the `transformer.` prefix, alpha from the metadata or None)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--lora {path!r}: no such file")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file at all
        raise ValueError(f"--lora {path!r}: not a safetensors LoRA file ({e})") from None
    lora = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX) and _is_lora(k)}
    if not lora:
        raise ValueError(f"--lora {path!r}: no `transformer.*.lora_A/lora_B` tensors (not a CogVideoX LoRA file)")
    alpha = json.loads(meta[METADATA_KEY]).get(f"{PREFIX}lora_alpha") if METADATA_KEY in meta else None
    return lora, alpha


@torch.no_grad()
def merge_lora_file(model: nn.Module, path: str, scale: float = 1.0) -> nn.Module:
    """Merge a diffusers-format CogVideoX LoRA file into a plain ExpertTransformer in place.

    alpha comes from the file's metadata (diffusers' convention without it: alpha = rank, scale 1).
    A file for another model (other widths, other layer names) is refused with a one-line error.
    """
    lora, alpha = read_lora_file(path)
    params = dict(model.named_parameters())
    for key_a, a in lora.items():
        if ".lora_A." not in key_a:
            continue
        module = key_a.split(".lora_A.")[0]
        b = lora.get(key_a.replace(".lora_A.", ".lora_B."))
        try:
            name = transformer_key_from_diffusers(module + ".weight")
        except KeyError:
            name = None
        if b is None or name not in params:
            raise ValueError(f"--lora {path!r}: {module} is not a layer of this CogVideoX transformer "
                             f"(the file is for another model)")
        w = params[name]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or b.shape[1] != a.shape[0]:
            raise ValueError(f"--lora {path!r}: {module} adapter is {tuple(b.shape)} @ {tuple(a.shape)} but the layer "
                             f"is {tuple(w.shape)} (the file is for another model)")
        rank = a.shape[0]
        s = scale * (alpha if alpha is not None else rank) / rank
        w.add_((s * (b.float() @ a.float())).to(w.dtype))
    return model
