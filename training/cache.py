"""Per-clip cache of VAE latents and T5 embeddings, reused by every run that would encode the same thing.

    torchrun --nproc_per_node N -m training cache pipelines.yaml     (or python -m training cache ...)
    python -m training pipelines.yaml --task transformer --set training.data.source=cache

One entry per clip and per what determines its encoding, under `<cache_dir>/<k[:2]>/<k>.safetensors`:
  latent key  = clip id, VAE weights id (sha1 of its state dict), bucket (F, H, W), fps, frame indices,
                crop mode, source size
  text key    = caption text (after score text) + captions run, text-encoder id, max length
so a new VAE, bucket, fps or crop re-encodes exactly the clips it touches, and a new caption only the
text of its clip (latents and embeddings are separate entries: `lat-*` and `txt-*`). An entry holds the
posterior mean and std (scaled by the VAE's factor; training draws z = mean + std * noise as it does on
the fly) or the text embedding, in float16, with the clip id in the file's metadata.

Filling: each rank (torchrun) reads its share of one epoch of the shard loader without decoding
(plan_only), keys every sample, then decodes and encodes only the samples whose entries are missing
(only_keys), writing each entry atomically: a killed fill resumes where it stopped, a second fill of the
same data encodes 0 clips. Training (`data.source: cache`) runs the same shard loader plan-only — the
same buckets, shuffle and exact resume as from shards — and reads each batch's entries instead of
decoding and encoding. Clips that failed to decode while filling are recorded (bad/<rank>.json) and
left out of training batches the same way the shard loader leaves them out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any, Callable, Iterator

import torch

from shards.loader import ShardLoader
from training.data import write_data_manifest
from training.parallelize import pick_device
from training.tasks.transformer import build_frozen_vae, build_text_encoder, frozen_source
from shards.pixels import unit_range

ENTRY_DTYPE = torch.float16  # halves bytes per clip; the encoders' outputs are bf16/fp16-exact enough


# -------------------------------------------------------------------------------------------- keys ---

def module_id(module: torch.nn.Module) -> str:
    """sha1 (16 hex) of a module's state dict: names, shapes, dtypes and bytes (same weights, same id)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def folder_id(folder: str) -> str:
    """sha1 (16 hex) of a model folder's files (relative names and bytes): same weights, same id."""
    h = hashlib.sha1()
    for dirpath, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def frozen_ids(tcfg: Any, device: torch.device) -> tuple[str, str]:
    """(VAE id, text-encoder id) of training.transformer without building large models: a model
    folder's file hash, or the state-dict hash of the tiny random model; + the compute dtype (bf16 on
    GPU, fp32 on CPU give different latents)."""
    tag = "bf16" if device.type == "cuda" else "fp32"
    out = []
    for part, build in (("vae", build_frozen_vae), ("text_encoder", build_text_encoder)):
        src = frozen_source(tcfg, part)
        out.append(f"{folder_id(src) if src else module_id(build(tcfg, torch.device('cpu')))}-{tag}")
    return out[0], out[1]


def latent_key(key: str, meta: dict, bucket: tuple, vae_id: str, crop: str) -> str:
    """What determines a clip's latents: clip, VAE, bucket, fps, frame indices, crop, source size."""
    s = meta.get("_sample", {})
    return _digest(["lat", key, vae_id, list(bucket), s.get("fps"), s.get("indices"), crop, s.get("source_size")])


def text_key(caption: str, meta: dict, text_id: str, max_length: int) -> str:
    """What determines a caption's embedding: its text (after score text), its captions run, the encoder."""
    run = (meta.get("caption") or {}).get("run") if isinstance(meta.get("caption"), dict) else None
    return _digest(["txt", caption, run, text_id, max_length])


def _digest(parts: list) -> str:
    return parts[0] + "-" + hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def entry_path(folder: str, k: str) -> str:
    return os.path.join(folder, k.split("-", 1)[1][:2], f"{k}.safetensors")


# ------------------------------------------------------------------------------------------ encoder ---

class Encoders:
    """The frozen VAE and T5 of training.transformer, with their ids (built once per process)."""

    def __init__(self, tcfg: Any, device: torch.device) -> None:
        self.vae, self.text, self.device = build_frozen_vae(tcfg, device), build_text_encoder(tcfg, device), device
        self.vae_id, self.text_id = frozen_ids(tcfg, device)
        self.max_length = tcfg.transformer.max_text_len

    @torch.no_grad()
    def latents(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) [B, f, C, h, w], scaled by the VAE's factor."""
        x = unit_range(frames, self.device, next(self.vae.parameters()).dtype).transpose(1, 2)
        post = self.vae.encode(x)
        sf = self.vae.scaling_factor
        return ((post.mean.float() * sf).transpose(1, 2).cpu(), (post.std.float() * sf).transpose(1, 2).cpu())

    @torch.no_grad()
    def text_emb(self, captions: list[str]) -> torch.Tensor:
        return self.text.encode(list(captions)).float().cpu()


# --------------------------------------------------------------------------------------------- fill ---

def plan_keys(batch: dict, enc: Encoders, crop: str) -> list[tuple[str, str]]:
    """(latent key, text key) of every sample of a batch."""
    return [(latent_key(k, m, batch["bucket"], enc.vae_id, crop), text_key(c, m, enc.text_id, enc.max_length))
            for k, c, m in zip(batch["keys"], batch["captions"], batch["meta"])]


def save_entry(folder: str, k: str, tensors: dict[str, torch.Tensor], clip_id: str) -> int:
    """Write one entry atomically; returns its bytes."""
    from safetensors.torch import save_file

    path = entry_path(folder, k)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({n: t.to(ENTRY_DTYPE).contiguous() for n, t in tensors.items()}, tmp, metadata={"clip_id": clip_id})
    os.replace(tmp, path)
    return os.path.getsize(path)


def fill(make_loader: Callable[..., Any], enc: Encoders, folder: str, crop: str, rank: int = 0) -> dict:
    """Encode the entries one epoch of this rank's loader lacks; counts (encoded, reused, bytes, bad)."""
    missing: set[str] = set()
    counts = {"clips": 0, "latents_encoded": 0, "texts_encoded": 0, "reused": 0, "bytes": 0, "bad": 0}
    for batch in make_loader(plan_only=True):
        for key, (lk, tk) in zip(batch["keys"], plan_keys(batch, enc, crop)):
            counts["clips"] += 1
            if os.path.exists(entry_path(folder, lk)) and os.path.exists(entry_path(folder, tk)):
                counts["reused"] += 1
            else:
                missing.add(key)
    bad: dict[str, str] = {}
    if missing:
        loader = make_loader(only_keys=missing)
        for batch in loader:
            _encode_batch(batch, enc, folder, crop, counts)
        bad = dict(loader.stats.get("bad", {}))
    counts["bad"] = len(bad)
    os.makedirs(os.path.join(folder, "bad"), exist_ok=True)
    with open(os.path.join(folder, "bad", f"{rank}.json"), "w") as f:
        json.dump(bad, f, indent=1)
    return counts


def _encode_batch(batch: dict, enc: Encoders, folder: str, crop: str, counts: dict) -> None:
    keys = plan_keys(batch, enc, crop)
    need_lat = [i for i, (lk, _) in enumerate(keys) if not os.path.exists(entry_path(folder, lk))]
    need_txt = [i for i, (_, tk) in enumerate(keys) if not os.path.exists(entry_path(folder, tk))]
    if need_lat:
        mean, std = enc.latents(batch["frames"][need_lat])
        for j, i in enumerate(need_lat):
            counts["bytes"] += save_entry(folder, keys[i][0], {"mean": mean[j], "std": std[j]}, batch["keys"][i])
        counts["latents_encoded"] += len(need_lat)
    if need_txt:
        emb = enc.text_emb([batch["captions"][i] for i in need_txt])
        for j, i in enumerate(need_txt):
            counts["bytes"] += save_entry(folder, keys[i][1], {"text_emb": emb[j]}, batch["keys"][i])
        counts["texts_encoded"] += len(need_txt)


# ------------------------------------------------------------------------------------------- train ---

class CacheLoader:
    """Batches {"latents_mean", "latents_std", "text_emb", "captions", "keys", "bucket"} from the cache, in
    the shard loader's order (it runs plan-only underneath: same buckets, shuffle, state_dict)."""

    def __init__(self, inner: Any, folder: str, vae_id: str, text_id: str, max_length: int, crop: str) -> None:
        self.inner, self.folder, self.crop = inner, folder, crop
        self.vae_id, self.text_id, self.max_length = vae_id, text_id, max_length
        self.bad = _read_bad(folder)

    def __iter__(self) -> Iterator[dict]:
        from safetensors.torch import load_file

        for batch in self.inner:
            rows = [(k, c, m) for k, c, m in zip(batch["keys"], batch["captions"], batch["meta"]) if k not in self.bad]
            if not rows:
                continue
            lat, txt = [], []
            for k, c, m in rows:
                lk = latent_key(k, m, batch["bucket"], self.vae_id, self.crop)
                tk = text_key(c, m, self.text_id, self.max_length)
                for e in (lk, tk):
                    if not os.path.exists(entry_path(self.folder, e)):
                        raise FileNotFoundError(f"latent cache {self.folder}: no entry for clip {k} ({e}); fill it "
                                                "with `python -m training cache pipelines.yaml` (same config)")
                lat.append(load_file(entry_path(self.folder, lk)))
                txt.append(load_file(entry_path(self.folder, tk))["text_emb"])
            yield {"latents_mean": torch.stack([x["mean"] for x in lat]).float(),
                   "latents_std": torch.stack([x["std"] for x in lat]).float(),
                   "text_emb": torch.stack(txt).float(), "captions": [r[1] for r in rows],
                   "keys": [r[0] for r in rows], "bucket": batch["bucket"]}

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def _read_bad(folder: str) -> set[str]:
    d = os.path.join(folder, "bad")
    out: set[str] = set()
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, name)) as f:
            out |= set(json.load(f))
    return out


def cache_dir(cfg: Any) -> str:
    """training.data.cache_dir, else <root>/cache/latents (shared by every run of this root)."""
    return cfg.training.data.cache_dir or os.path.join(cfg.root, "cache", "latents")


def shard_loader(cfg: Any, rank: int, world_size: int, every_clip_once: bool = False, **kw: Any) -> Any:
    """The shard loader the cache is keyed by; `every_clip_once` (filling) ignores the sampling weights
    but keeps their score text, so every clip any epoch may draw gets its entries."""
    lc = cfg.shard.loader
    if lc.random_start or lc.crop == "random":
        raise ValueError("training.data.source=cache stores one window per clip: set shard.loader.random_start: "
                         "false and shard.loader.crop: center")
    w = cfg.training.data.weights
    if every_clip_once:
        w = w.model_copy(update={"expression": None, "tiers": []})
    return ShardLoader(cfg, rank=rank, world_size=world_size, seed=cfg.training.seed, weights=w, **kw)


def cache_loader(cfg: Any, rank: int, world_size: int, out_dir: str | None = None) -> CacheLoader:
    """training.data.source=cache: the shard loader's batches, read from the cache (rank 0 records the
    data manifest in `out_dir`)."""
    if cfg.training.transformer.image_to_video:  # its condition is encoded from the first frame of every step
        raise ValueError("training.data.source=cache: training.transformer.image_to_video needs the frames "
                         "(use source: shards)")
    if rank == 0 and out_dir:
        write_data_manifest(cfg, out_dir)
    vae_id, text_id = frozen_ids(cfg.training, pick_device(cfg.training.device, int(os.environ.get("LOCAL_RANK", "0"))))
    return CacheLoader(shard_loader(cfg, rank, world_size, plan_only=True), cache_dir(cfg), vae_id, text_id,
                       cfg.training.transformer.max_text_len, cfg.shard.loader.crop)


# --------------------------------------------------------------------------------------------- cli ---

def main(argv: list[str], load_config: Callable[..., Any]) -> int:
    """`python -m training cache pipelines.yaml`: fill the cache (this rank's share under torchrun)."""
    p = argparse.ArgumentParser(prog="python -m training cache", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides, check_inputs=False)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    enc = Encoders(cfg.training, pick_device(cfg.training.device, int(os.environ.get("LOCAL_RANK", "0"))))
    counts = fill(lambda **kw: shard_loader(cfg, rank, world, every_clip_once=True, **kw), enc, cache_dir(cfg),
                  cfg.shard.loader.crop, rank)
    print(f"[training cache] rank {rank}/{world}: {json.dumps(counts)} -> {cache_dir(cfg)}", flush=True)
    return 0
