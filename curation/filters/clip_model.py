"""The shared CLIP encoder of the model step: open_clip, loaded once per Ray actor.

`filter.clip.model` is one of
- a local folder in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors), the
  layout `python -m curation.filters.make_tiny` writes and `hf-hub:` repos use;
- `hf-hub:org/repo` (open_clip downloads it: only where the network allows);
- a built-in open_clip architecture name (ViT-L-14, ViT-B-32, ...) with `pretrained` a tag or a file.
Frames arrive already resized and centre-cropped to the model's image size by the decode step (uint8);
here they are normalised with the model's mean/std and embedded, L2-normalised.
"""
from __future__ import annotations

import json
import os

import numpy as np

from curation.filters.config import ClipModelConfig


def model_id(cfg: ClipModelConfig) -> tuple[str, str | None]:
    """open_clip's (model_name, pretrained) for a configured model."""
    if os.path.isdir(cfg.model):
        return f"local-dir:{cfg.model}", None
    if cfg.model.startswith(("hf-hub:", "local-dir:")):
        return cfg.model, None
    if "/" in cfg.model or cfg.model.startswith("."):
        raise FileNotFoundError(f"filter.clip.model: folder {cfg.model!r} does not exist "
                                "(python -m curation.filters.make_tiny <folder> builds a tiny demo model)")
    return cfg.model, cfg.pretrained


def image_size(cfg: ClipModelConfig) -> int:
    """The square input size of the image tower, read from the config only (no weights loaded)."""
    name, _ = model_id(cfg)
    if name.startswith("local-dir:"):
        with open(os.path.join(name.removeprefix("local-dir:"), "open_clip_config.json")) as f:
            mcfg = json.load(f)["model_cfg"]
    else:
        import open_clip

        if name.startswith("hf-hub:"):
            from open_clip.factory import _get_hf_config

            mcfg = _get_hf_config(name.removeprefix("hf-hub:"))["model_cfg"]
        else:
            mcfg = open_clip.get_model_config(name)
            if mcfg is None:
                raise ValueError(f"filter.clip.model: {name!r} is not an open_clip architecture, a folder or hf-hub:")
    size = mcfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class ClipEncoder:
    """open_clip model + tokenizer on one device; embeds uint8 frames and text prompts."""

    def __init__(self, cfg: ClipModelConfig, use_gpu: bool = False, frame_batch: int = 64) -> None:
        import open_clip
        import torch

        self.cfg, self.frame_batch = cfg, frame_batch
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        name, pretrained = model_id(cfg)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                     device=self.device)
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        norm = [t for t in getattr(preprocess, "transforms", []) if type(t).__name__ == "Normalize"]
        mean = norm[0].mean if norm else model.visual.image_mean
        std = norm[0].std if norm else model.visual.image_std
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision] \
            if self.device.type == "cuda" else torch.float32
        self.logit_scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, D) float32, L2-normalised."""
        import torch

        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(frames), self.frame_batch):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.frame_batch])).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
                e = self.model.encode_image(x).float()
                out.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32, L2-normalised."""
        import torch

        with torch.inference_mode(), self._autocast():
            e = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
