"""Weights in the published diffusers layout (CogVideoX-2b/5b/1.5: `transformer/` and `vae/` folders of
`config.json` + `diffusion_pytorch_model*.safetensors`) <-> our modules.

- load_diffusers_transformer(folder | state_dict, config=None) -> ExpertTransformer
- load_diffusers_vae(folder | state_dict, config=None) -> CausalVAE
- export_transformer(model) / export_vae(model) -> diffusers-format state dict
- save_diffusers(model, folder): config.json + diffusion_pytorch_model.safetensors that diffusers'
  from_pretrained reads.
- transformer_key_to_diffusers / transformer_key_from_diffusers: one name (LoRA adapter keys too).

Only key names change (every tensor keeps its shape and values): one table of name templates per
model, from which both directions are compiled; tests/model checks that load -> export reproduces a
diffusers state dict exactly.
"""
from __future__ import annotations

import json
import os
import re

import torch

from model.transformer import ExpertTransformer, TransformerConfig
from model.vae import CausalVAE, VAEConfig

# One table per model: (our name, diffusers' name) templates. {field} stands for a part that carries
# over (block index, q/k/v, ...; FIELDS says what it matches); "^" and "$" anchor a template at the
# start / end of the key. Both directions are compiled from the same rows (_compile).
FIELDS = {
    "i": r"\d+",  # block index
    "n": r"\d",  # norm number
    "qkv": "q|k|v", "qk": "q|k",
    "side": "encoder|decoder",
    "norm": "1|2|_out",
    "conv": "conv_in|conv_out|conv1|conv2|conv_y|conv_b",  # causal convs: plain Conv3d subclasses (no `.conv`)
    "wb": "weight|bias",
}

TRANSFORMER_KEYS = [
    ("patch_proj.", "patch_embed.proj."),
    ("text_proj.", "patch_embed.text_proj."),
    ("time_mlp.0.", "time_embedding.linear_1."),
    ("time_mlp.2.", "time_embedding.linear_2."),
    ("ofs_mlp.0.", "ofs_embedding.linear_1."),
    ("ofs_mlp.2.", "ofs_embedding.linear_2."),
    ("blocks.{i}.norm{n}.mod.", "transformer_blocks.{i}.norm{n}.linear."),
    ("blocks.{i}.norm{n}.norm.", "transformer_blocks.{i}.norm{n}.norm."),
    ("blocks.{i}.attn.to_{qkv}.", "transformer_blocks.{i}.attn1.to_{qkv}."),
    ("blocks.{i}.attn.norm_{qk}.", "transformer_blocks.{i}.attn1.norm_{qk}."),
    ("blocks.{i}.attn.to_out.", "transformer_blocks.{i}.attn1.to_out.0."),
    ("blocks.{i}.ff.fc1.", "transformer_blocks.{i}.ff.net.0.proj."),
    ("blocks.{i}.ff.fc2.", "transformer_blocks.{i}.ff.net.2."),
    ("norm_final.", "norm_final."),
    ("out_mod.", "norm_out.linear."),
    ("out_norm.", "norm_out.norm."),
    ("proj_out.", "proj_out."),
    ("^pos_embedding$", "^patch_embed.pos_embedding$"),  # learned positions (CogVideoX-5b-I2V 1.0)
]

# VAE: our modules mirror the diffusers tree; samplers are single modules, the mid block is `mid`.
VAE_KEYS = [
    ("{side}.mid.{i}.", "{side}.mid_block.resnets.{i}."),
    (".downsample.", ".downsamplers.0."),
    (".upsample.", ".upsamplers.0."),
    (".norm{norm}.norm.", ".norm{norm}.norm_layer."),
    (".{conv}.{wb}$", ".{conv}.conv.{wb}$"),
    ("^{conv}.{wb}$", "^{conv}.conv.{wb}$"),
]


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: literal text escaped, {field} a named group, ^/$ anchors kept."""
    head, body, tail = ("^" if template.startswith("^") else ""), template.strip("^$"), \
        ("$" if template.endswith("$") else "")
    parts = re.split(r"\{(\w+)\}", body)
    rx = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{FIELDS[p]})" for k, p in enumerate(parts))
    return re.compile(head + rx + tail)


def _replacement(template: str) -> str:
    """A template as a re.sub replacement: {field} -> the group it matched."""
    body = template.strip("^$").replace("\\", "\\\\")
    return re.sub(r"\{(\w+)\}", r"\\g<\1>", body)


def _compile(table: list[tuple[str, str]], forward: bool) -> list[tuple[re.Pattern, str]]:
    """(regex, replacement) rows of `table`, ours -> diffusers (forward) or diffusers -> ours."""
    return [(_pattern(a), _replacement(b)) if forward else (_pattern(b), _replacement(a)) for a, b in table]


_TRANSFORMER_TO = _compile(TRANSFORMER_KEYS, forward=True)
_TRANSFORMER_FROM = _compile(TRANSFORMER_KEYS, forward=False)
_VAE_TO = _compile(VAE_KEYS, forward=True)
_VAE_FROM = _compile(VAE_KEYS, forward=False)


def _rename(key: str, rows: list[tuple[re.Pattern, str]]) -> str:
    """Every row that matches renames its part of the key (VAE: renames touch separate parts)."""
    for rx, rep in rows:
        key = rx.sub(rep, key)
    return key


def _first(key: str, rows: list[tuple[re.Pattern, str]]) -> str | None:
    """The key renamed by the first row that matches its start (transformer), None when none does."""
    for rx, rep in rows:
        m = rx.match(key)
        if m:
            return m.expand(rep) + key[m.end():]
    return None


def _to_diffusers_transformer(key: str) -> str:
    new = _first(key, _TRANSFORMER_TO)
    if new is None:
        raise KeyError(f"no diffusers name for transformer parameter {key}")
    return new


def _from_diffusers_transformer(key: str) -> str:
    new = _first(key, _TRANSFORMER_FROM)
    if new is None:
        raise KeyError(f"unknown diffusers transformer key {key}")
    return new


def transformer_key_to_diffusers(key: str) -> str:
    """Our transformer parameter (or adapter: `blocks.0.attn.to_q.lora_A.weight`) name -> diffusers' name."""
    return _to_diffusers_transformer(key)


def transformer_key_from_diffusers(key: str) -> str:
    """diffusers' transformer parameter name -> ours (KeyError for names our model does not have)."""
    return _from_diffusers_transformer(key)


def _to_diffusers_vae(key: str) -> str:
    return _rename(key, _VAE_TO)


def _from_diffusers_vae(key: str) -> str:
    return _rename(key, _VAE_FROM)


# -- configs -----------------------------------------------------------------------------------------
def transformer_config_from_diffusers(cfg: dict) -> TransformerConfig:
    act = cfg.get("activation_fn", "gelu-approximate")
    if act != "gelu-approximate" or cfg.get("timestep_activation_fn", "silu") != "silu":
        raise NotImplementedError(f"activation {act} not supported")
    return TransformerConfig(
        num_heads=cfg.get("num_attention_heads", 30), head_dim=cfg.get("attention_head_dim", 64),
        num_layers=cfg.get("num_layers", 30), in_channels=cfg.get("in_channels", 16),
        out_channels=cfg.get("out_channels") or cfg.get("in_channels", 16),
        time_embed_dim=cfg.get("time_embed_dim", 512), text_embed_dim=cfg.get("text_embed_dim", 4096),
        max_text_len=cfg.get("max_text_seq_length", 226), patch_size=cfg.get("patch_size", 2),
        patch_size_t=cfg.get("patch_size_t"), use_rope=cfg.get("use_rotary_positional_embeddings", False),
        sample_height=cfg.get("sample_height", 60), sample_width=cfg.get("sample_width", 90),
        sample_frames=cfg.get("sample_frames", 49), temporal_compression=cfg.get("temporal_compression_ratio", 4),
        spatial_interpolation_scale=cfg.get("spatial_interpolation_scale", 1.875),
        temporal_interpolation_scale=cfg.get("temporal_interpolation_scale", 1.0),
        attention_bias=cfg.get("attention_bias", True), patch_bias=cfg.get("patch_bias", True),
        norm_eps=cfg.get("norm_eps", 1e-5), flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
        freq_shift=cfg.get("freq_shift", 0), ofs_embed_dim=cfg.get("ofs_embed_dim"),
        learned_positions=bool(cfg.get("use_learned_positional_embeddings", False)),
    )


def transformer_config_to_diffusers(c: TransformerConfig) -> dict:
    return {
        "_class_name": "CogVideoXTransformer3DModel",
        "num_attention_heads": c.num_heads, "attention_head_dim": c.head_dim, "in_channels": c.in_channels,
        "out_channels": c.out_channels, "flip_sin_to_cos": c.flip_sin_to_cos, "freq_shift": c.freq_shift,
        "time_embed_dim": c.time_embed_dim, "ofs_embed_dim": c.ofs_embed_dim, "text_embed_dim": c.text_embed_dim,
        "num_layers": c.num_layers, "dropout": 0.0, "attention_bias": c.attention_bias,
        "sample_width": c.sample_width, "sample_height": c.sample_height, "sample_frames": c.sample_frames,
        "patch_size": c.patch_size, "patch_size_t": c.patch_size_t,
        "temporal_compression_ratio": c.temporal_compression, "max_text_seq_length": c.max_text_len,
        "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu", "norm_elementwise_affine": True,
        "norm_eps": c.norm_eps, "spatial_interpolation_scale": c.spatial_interpolation_scale,
        "temporal_interpolation_scale": c.temporal_interpolation_scale,
        "use_rotary_positional_embeddings": c.use_rope, "use_learned_positional_embeddings": c.learned_positions,
        "patch_bias": c.patch_bias,
    }


def vae_config_from_diffusers(cfg: dict) -> VAEConfig:
    if cfg.get("use_quant_conv") or cfg.get("use_post_quant_conv"):
        raise NotImplementedError("quant_conv / post_quant_conv are not used by CogVideoX")
    return VAEConfig(
        in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
        block_out_channels=tuple(cfg.get("block_out_channels", (128, 256, 256, 512))),
        latent_channels=cfg.get("latent_channels", 16), layers_per_block=cfg.get("layers_per_block", 3),
        norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-6),
        temporal_compression=int(cfg.get("temporal_compression_ratio", 4)),
        sample_height=cfg.get("sample_height", 480), sample_width=cfg.get("sample_width", 720),
        scaling_factor=cfg.get("scaling_factor", 1.15258426),
        invert_scale_latents=bool(cfg.get("invert_scale_latents", False)),
    )


def vae_config_to_diffusers(c: VAEConfig) -> dict:
    n = len(c.block_out_channels)
    return {
        "_class_name": "AutoencoderKLCogVideoX", "in_channels": c.in_channels, "out_channels": c.out_channels,
        "down_block_types": ["CogVideoXDownBlock3D"] * n, "up_block_types": ["CogVideoXUpBlock3D"] * n,
        "block_out_channels": list(c.block_out_channels), "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block, "act_fn": "silu", "norm_eps": c.norm_eps,
        "norm_num_groups": c.norm_num_groups, "temporal_compression_ratio": c.temporal_compression,
        "sample_height": c.sample_height, "sample_width": c.sample_width, "scaling_factor": c.scaling_factor,
        "shift_factor": None, "latents_mean": None, "latents_std": None, "force_upcast": True,
        "use_quant_conv": False, "use_post_quant_conv": False, "invert_scale_latents": c.invert_scale_latents,
    }


# -- reading ------------------------------------------------------------------------------------------
def _read_folder(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and config.json of a diffusers model folder (single or sharded safetensors / bin)."""
    from safetensors.torch import load_file

    cfg = {}
    if os.path.exists(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    state: dict[str, torch.Tensor] = {}
    index = [n for n in os.listdir(path) if n.endswith(".safetensors.index.json")]
    if index:
        with open(os.path.join(path, index[0])) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
    else:
        files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if files:
            for name in files:
                state.update(load_file(os.path.join(path, name)))
        else:
            bins = sorted(n for n in os.listdir(path) if n.endswith(".bin"))
            if not bins:
                raise FileNotFoundError(f"no safetensors or bin weights in {path}")
            for name in bins:
                state.update(torch.load(os.path.join(path, name), map_location="cpu", weights_only=True))
    return state, cfg


def _download(name: str, subfolder: str) -> str:
    """A hub name ("THUDM/CogVideoX-2b"): fetch config + safetensors of `subfolder` (or of a bare model repo)."""
    if name.count("/") != 1 or os.path.exists(name):
        raise FileNotFoundError(f"{name} is neither a folder nor a hub name")
    from huggingface_hub import snapshot_download

    root = snapshot_download(name, allow_patterns=[f"{subfolder}/*.json", f"{subfolder}/*.safetensors", "*.json",
                                                   "*.safetensors"])
    return root


def _resolve(path_or_state, subfolder: str):
    """(state_dict, config dict) from a state dict, a model folder, or a pipeline folder with subfolder."""
    if isinstance(path_or_state, dict):
        return path_or_state, {}
    path = str(path_or_state)
    if not os.path.isdir(path):
        path = _download(path, subfolder)
    if os.path.isdir(os.path.join(path, subfolder)) and not os.path.exists(os.path.join(path, "config.json")):
        path = os.path.join(path, subfolder)
    return _read_folder(path)


def _load(model: torch.nn.Module, theirs: dict[str, torch.Tensor], rename, dtype) -> None:
    ours, wanted = {}, set(model.state_dict())
    for k, v in theirs.items():
        if k.endswith("pos_embedding") and "pos_embedding" not in wanted:  # a non-persistent sin-cos table some exports include
            continue
        ours[rename(k)] = v.to(dtype) if dtype is not None else v
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")


def load_diffusers_transformer(path_or_state, config: TransformerConfig | None = None,
                               dtype: torch.dtype | None = None) -> ExpertTransformer:
    """ExpertTransformer from a diffusers CogVideoXTransformer3DModel folder (or a pipeline folder with
    a transformer/ subfolder) or state dict; `config` is required for a bare state dict."""
    state, cfg = _resolve(path_or_state, "transformer")
    if config is None:
        if not cfg:
            raise ValueError("a bare state dict needs config=TransformerConfig(...)")
        config = transformer_config_from_diffusers(cfg)
    model = ExpertTransformer(config)
    _load(model, state, _from_diffusers_transformer, dtype)
    return model


def load_diffusers_vae(path_or_state, config: VAEConfig | None = None,
                       dtype: torch.dtype | None = None) -> CausalVAE:
    """CausalVAE from a diffusers AutoencoderKLCogVideoX folder (or pipeline folder with vae/) or state dict."""
    state, cfg = _resolve(path_or_state, "vae")
    if config is None:
        if not cfg:
            raise ValueError("a bare state dict needs config=VAEConfig(...)")
        config = vae_config_from_diffusers(cfg)
    model = CausalVAE(config)
    _load(model, state, _from_diffusers_vae, dtype)
    return model


def export_transformer(model: ExpertTransformer) -> dict[str, torch.Tensor]:
    return {_to_diffusers_transformer(k): v for k, v in model.state_dict().items()}


def export_vae(model: CausalVAE) -> dict[str, torch.Tensor]:
    return {_to_diffusers_vae(k): v for k, v in model.state_dict().items()}


def export_state_dict(model) -> dict[str, torch.Tensor]:
    if isinstance(model, ExpertTransformer):
        return export_transformer(model)
    if isinstance(model, CausalVAE):
        return export_vae(model)
    raise TypeError(f"cannot export {type(model).__name__}")


def save_diffusers(model, folder: str, dtype: torch.dtype | None = None) -> str:
    """Write config.json + diffusion_pytorch_model.safetensors in diffusers' model-folder layout.

    Atomic: both files are written into a temporary sibling folder that then replaces `folder`, so a
    reader (or a killed run) never sees a half-written export."""
    import shutil
    import uuid

    from safetensors.torch import save_file

    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(folder)}")
    os.makedirs(tmp)
    state = export_state_dict(model)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in state.items()}
    if isinstance(model, ExpertTransformer):
        cfg = transformer_config_to_diffusers(model.config)
    else:
        cfg = vae_config_to_diffusers(model.config)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(state, os.path.join(tmp, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    old = None
    if os.path.exists(folder):  # keep the previous export until the new one is in place
        old = os.path.join(parent, f".old-{uuid.uuid4().hex[:8]}-{os.path.basename(folder)}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return folder
