"""Aesthetic scorer: the LAION aesthetic predictor (an MLP on L2-normalised CLIP image embeddings).

Architecture (REFERENCE.md): D -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts 0.2, 0.2, 0.1 and no
activations (the common "linearMSE" weights), as an `nn.Sequential` named `layers`, so the public
state dict (`sac+logos+ava1-l14-linearMSE.pth`: layers.0/2/4/6/7) loads as it is. D follows the
weights (768 for ViT-L-14). Output ~1..10 on the AVA scale; per clip the mean and the minimum over
sampled frames (Cosmos-Curate filters on the minimum).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import field_validator

from curation.filters.base import ClipFrames, Scorer
from curation.filters.config import ScorerConfig, resolve_path

if TYPE_CHECKING:  # torch loads in the model step's workers only
    from torch import nn


class AestheticConfig(ScorerConfig):
    """filter.scorers.<name> with type: aesthetic."""

    # MLP weights: a local .safetensors/.pth/.pt state dict, or "hf-hub:org/repo/file.pth" (downloaded).
    weights: str = "data/models/tiny-aesthetic.safetensors"

    _paths = field_validator("weights")(resolve_path)


def laion_mlp(dim: int = 768) -> nn.Module:
    """The LAION aesthetic MLP (torch is imported here, not at module import)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(d, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):  # (N, d) L2-normalised embeddings -> (N,)
            return self.layers(x).squeeze(-1)

    return AestheticMLP(dim)


def load_state(weights: str) -> dict:
    """A state dict from a local file or an `hf-hub:org/repo/filename` reference."""
    import torch

    path = weights
    if weights.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        org, repo, fname = weights.removeprefix("hf-hub:").split("/", 2)
        path = hf_hub_download(f"{org}/{repo}", fname)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"aesthetic weights {path!r} not found "
                                "(python -m curation.filters.make_tiny <folder> builds tiny demo weights)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def load_mlp(weights: str) -> nn.Module:
    sd = load_state(weights)
    if "layers.0.weight" not in sd:
        raise ValueError(f"aesthetic weights {weights!r}: expected LAION MLP keys layers.0..7, got {list(sd)[:4]}")
    mlp = laion_mlp(sd["layers.0.weight"].shape[1])
    mlp.load_state_dict(sd)
    return mlp.eval()


class AestheticScorer(Scorer):
    Config = AestheticConfig
    step = "model"
    needs_embedding = True

    def metrics(self) -> dict[str, pa.DataType]:
        return {"mean": pa.float32(), "min": pa.float32()}

    def setup(self, encoder: Any = None) -> None:
        self.device = encoder.device if encoder is not None else "cpu"
        self.mlp = load_mlp(self.cfg.weights).to(self.device)

    def score_batch(self, clips: list[ClipFrames], embeddings: list[np.ndarray | None]) -> list[dict[str, Any]]:
        import torch

        sizes = [len(e) for e in embeddings]
        with torch.inference_mode():
            x = torch.from_numpy(np.concatenate(embeddings)).to(self.device)
            if x.shape[1] != self.mlp.layers[0].in_features:
                raise ValueError(f"aesthetic weights expect {self.mlp.layers[0].in_features}-dim embeddings, "
                                 f"the CLIP model gives {x.shape[1]} (LAION's predictor needs ViT-L-14)")
            s = self.mlp(x).float().cpu().numpy()
        out, i = [], 0
        for n in sizes:
            v = s[i:i + n]
            i += n
            out.append({"mean": float(v.mean()), "min": float(v.min())})
        return out
