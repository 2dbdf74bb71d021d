"""CogVideoX diffusers pipelines in and out: published weights as the start of a run, a run as a pipeline.

    resolve(name, key)            a local folder as is; a hub name downloaded (errors name the key and why)
    init_source(name)             (pipeline folder | None, transformer folder) of training.transformer.init_from
    component(cfg, part)          where the frozen "vae" / "text_encoder" come from (yaml > init_from's pipeline)
    schedule_config(cfg)          ScheduleConfig: yaml override > init_from's scheduler_config.json > size default
    schedule_from_pipeline(dir)   the same, for `training sample --pipeline`
    write_pipeline(folder, ...)   `<run>/export/pipeline/` that `CogVideoXPipeline.from_pretrained` loads,
                                  written to `<folder>.tmp` and renamed when complete

The published layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from functools import lru_cache
from typing import Any

from training.config import TINY_RANDOM

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
# What a hub download fetches: configs, safetensors weights, tokenizer files (no .bin/.pt duplicates).
HUB_PATTERNS = ["model_index.json", "*.json", "*.safetensors", "*.model", "*.txt"]
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@lru_cache(maxsize=64)  # one download check per hub name and process (errors are not cached)
def resolve(name: str, key: str) -> str:
    """Local folder of `name`: a folder as is, or a hub repo (`org/name`) downloaded to the HF cache."""
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ValueError(f"{key} {name!r}: a file, not a model folder")
    if not _HUB_NAME.match(name):
        raise ValueError(f"{key} {name!r}: no such folder (and not a hub name like THUDM/CogVideoX-2b)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # offline, unknown repo, gated, network down: one line that says so
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{key} {name!r}: not a local folder, and the Hugging Face hub cannot provide it "
                         f"({type(e).__name__}: {why[:160]}); download it where there is network "
                         f"(`hf download {name} --local-dir DIR`) and give DIR") from None


def check_pipeline(path: str, key: str) -> dict:
    """model_index.json of a CogVideoX pipeline folder; a one-line error when `path` is not one."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ValueError(f"{key} {path!r}: not a CogVideoX pipeline folder (no model_index.json)")
    with open(index) as f:
        data = json.load(f)
    cls = data.get("_class_name", "")
    if not cls.startswith("CogVideoX"):
        raise ValueError(f"{key} {path!r}: model_index.json describes a {cls!r}, not a CogVideoX pipeline")
    missing = [p for p in PARTS if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise ValueError(f"{key} {path!r}: CogVideoX pipeline folder without {', '.join(p + '/' for p in missing)}")
    return data


def init_source(name: str, key: str = "training.transformer.init_from") -> tuple[str | None, str]:
    """(pipeline folder or None, transformer folder) of an init_from value."""
    path = resolve(name, key)
    if os.path.isfile(os.path.join(path, "model_index.json")):
        check_pipeline(path, key)
        return path, os.path.join(path, "transformer")
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            cls = json.load(f).get("_class_name", "CogVideoXTransformer3DModel")
        if cls != "CogVideoXTransformer3DModel":
            raise ValueError(f"{key} {name!r}: config.json describes a {cls!r}, not a CogVideoXTransformer3DModel")
        return None, path
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):  # a pipeline-like folder without an index
        return None, os.path.join(path, "transformer")
    raise ValueError(f"{key} {name!r}: neither a CogVideoX pipeline (model_index.json) nor a "
                     f"CogVideoXTransformer3DModel folder (config.json)")


def pipeline_dir(cfg: Any) -> str | None:
    """The pipeline folder behind training.transformer.init_from, or None (no init_from, or a bare transformer)."""
    name = cfg.transformer.init_from
    return init_source(name)[0] if name else None


def component(cfg: Any, part: str) -> str | None:
    """Source of the frozen "vae" or "text_encoder": the yaml key, else init_from's pipeline, else None
    (None too for "tiny-random", the demo's and tests' random tiny model)."""
    explicit = getattr(cfg.transformer, part)
    if explicit == TINY_RANDOM:
        return None
    return explicit or pipeline_dir(cfg)


# -- schedule ------------------------------------------------------------------------------------------
def _scheduler_json(pipe: str) -> dict:
    with open(os.path.join(pipe, "scheduler", "scheduler_config.json")) as f:
        return json.load(f)


def schedule_from_pipeline(pipe: str, key: str = "pipeline") -> Any:
    """ScheduleConfig of a CogVideoX pipeline's scheduler (DDIM or DPM config: the same schedule fields)."""
    from model.diffusion import ScheduleConfig

    sc = _scheduler_json(pipe)
    if sc.get("prediction_type", "v_prediction") != "v_prediction":
        raise ValueError(f"{key} {pipe!r}: scheduler predicts {sc['prediction_type']!r}; CogVideoX training is v-prediction")
    if sc.get("beta_schedule", "scaled_linear") != "scaled_linear" or sc.get("trained_betas"):
        raise ValueError(f"{key} {pipe!r}: scheduler beta_schedule {sc.get('beta_schedule')!r} is not scaled_linear")
    return ScheduleConfig(num_train_timesteps=sc.get("num_train_timesteps", 1000),
                          beta_start=sc.get("beta_start", 0.00085), beta_end=sc.get("beta_end", 0.012),
                          snr_shift_scale=sc.get("snr_shift_scale", 3.0),
                          zero_terminal_snr=sc.get("rescale_betas_zero_snr", True),
                          timestep_spacing=sc.get("timestep_spacing", "trailing"))


def schedule_config(cfg: Any) -> Any:
    """The training schedule: yaml overrides > init_from's scheduler > the published default of `size`."""
    from dataclasses import replace

    from model.diffusion import ScheduleConfig

    pipe = pipeline_dir(cfg)
    tc = cfg.transformer
    if pipe:
        sc = schedule_from_pipeline(pipe, "training.transformer.init_from")
    else:
        sc = ScheduleConfig.cogvideox_5b() if tc.size in ("5b", "1.5-5b") else ScheduleConfig.cogvideox_2b()
    if tc.snr_shift_scale is not None:
        sc = replace(sc, snr_shift_scale=tc.snr_shift_scale)
    if tc.zero_terminal_snr is not None:
        sc = replace(sc, zero_terminal_snr=tc.zero_terminal_snr)
    return sc


def scheduler_config(sc: Any) -> dict:
    """CogVideoXDDIMScheduler config of our schedule (as the published scheduler_config.json)."""
    return {"num_train_timesteps": sc.num_train_timesteps, "beta_start": sc.beta_start, "beta_end": sc.beta_end,
            "beta_schedule": "scaled_linear", "trained_betas": None, "clip_sample": False, "set_alpha_to_one": True,
            "steps_offset": 0, "prediction_type": "v_prediction", "clip_sample_range": 1.0, "sample_max_value": 1.0,
            "timestep_spacing": sc.timestep_spacing, "rescale_betas_zero_snr": sc.zero_terminal_snr,
            "snr_shift_scale": sc.snr_shift_scale}


# -- export --------------------------------------------------------------------------------------------
def _link_tree(src: str, dst: str) -> None:
    """Hard-link every file of src into dst (copy where links cannot be made, e.g. across filesystems)."""
    for root, _, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for name in files:
            real = os.path.realpath(os.path.join(root, name))  # HF cache snapshots are symlinks to blobs
            try:
                os.link(real, os.path.join(out, name))
            except OSError:
                shutil.copy2(real, os.path.join(out, name))


def _model_folder(path: str, sub: str) -> str:
    """The folder holding config.json of a model: `path` itself or its `sub`/ (pipeline layout)."""
    return os.path.join(path, sub) if os.path.isfile(os.path.join(path, sub, "config.json")) else path


def write_pipeline(folder: str, transformer: Any, vae: Any, text: Any, schedule: Any, cfg: Any,
                   transformer_from: str | None = None, image_to_video: bool = False) -> str:
    """A complete CogVideoXPipeline (image_to_video: CogVideoXImageToVideoPipeline) folder at `folder`,
    atomically (`folder`.tmp, then rename).

    transformer: our ExpertTransformer (written in diffusers format), unless `transformer_from` names a
    diffusers transformer folder to link (a LoRA run's unchanged base). VAE, T5 and tokenizer are linked
    from their local source folders when the run had them, else written from the modules in memory.
    """
    import diffusers
    from diffusers import CogVideoXDDIMScheduler

    from model.convert import save_diffusers

    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if transformer_from:
        _link_tree(transformer_from, os.path.join(tmp, "transformer"))
    else:
        save_diffusers(transformer, os.path.join(tmp, "transformer"))
    vae_src = component(cfg, "vae")
    if vae_src:
        _link_tree(_model_folder(resolve(vae_src, "training.transformer.vae"), "vae"), os.path.join(tmp, "vae"))
    else:
        save_diffusers(vae, os.path.join(tmp, "vae"))
    te_src = component(cfg, "text_encoder")
    te_dir = resolve(te_src, "training.transformer.text_encoder") if te_src else None
    tokenizer_cls = type(text.tokenizer).__name__
    if te_dir and os.path.isfile(os.path.join(te_dir, "model_index.json")):  # a pipeline: link both parts
        _link_tree(os.path.join(te_dir, "text_encoder"), os.path.join(tmp, "text_encoder"))
        _link_tree(os.path.join(te_dir, "tokenizer"), os.path.join(tmp, "tokenizer"))
        with open(os.path.join(te_dir, "model_index.json")) as f:
            tokenizer_cls = json.load(f).get("tokenizer", [None, tokenizer_cls])[1]
    else:  # a plain T5 folder or the tiny test T5: written in the pipeline's two-folder layout
        text.encoder.save_pretrained(os.path.join(tmp, "text_encoder"))
        text.tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    CogVideoXDDIMScheduler.from_config(scheduler_config(schedule.config)).save_pretrained(os.path.join(tmp, "scheduler"))
    index = {"_class_name": "CogVideoXImageToVideoPipeline" if image_to_video else "CogVideoXPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", tokenizer_cls], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLCogVideoX"]}
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    old = folder + ".old"
    if os.path.exists(folder):  # the previous export stays whole until the new one is complete
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_pipeline_models(name: str, device: Any, dtype: Any = None) -> dict[str, Any]:
    """Our modules of a CogVideoX diffusers pipeline (folder or hub name): transformer, VAE, T5, schedule."""
    import torch

    from model.convert import load_diffusers_transformer, load_diffusers_vae
    from model.diffusion import Schedule
    from model.text import TextEncoder

    path = resolve(name, "--pipeline")
    check_pipeline(path, "--pipeline")
    transformer = load_diffusers_transformer(os.path.join(path, "transformer"), dtype=dtype)
    vae = load_diffusers_vae(os.path.join(path, "vae"), dtype=dtype)
    text = TextEncoder.from_pretrained(path, max_length=transformer.config.max_text_len, dtype=dtype)
    return {"path": path, "transformer": transformer.to(device).eval(), "vae": vae.to(device).eval(),
            "text": text.to(device).eval().requires_grad_(False), "schedule": Schedule(schedule_from_pipeline(path)),
            "dtype": dtype or torch.float32}
