"""Build tiny RANDOM filter models offline, in the layouts the production loaders read.

    python -m curation.filters.make_tiny data/models            # tiny CLIP + tiny aesthetic MLP
    python -m curation.filters.make_tiny /tmp/b32 --arch ViT-B-32   # random ViT-B-32-sized CLIP (benchmarks)

Writes <dir>/tiny-clip/ (open_clip hub layout: open_clip_config.json with model_cfg + preprocess_cfg,
open_clip_model.safetensors; the tokenizer is open_clip's bundled BPE, so nothing is downloaded) and
<dir>/tiny-aesthetic.safetensors (the LAION MLP architecture on the tiny embedding size, its last bias
shifted so scores sit near 5.5 like real ones). The scores of random models mean nothing: they make
the demo and the tests run the real loading and scoring code without network.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from curation.filters.aesthetic import laion_mlp

if TYPE_CHECKING:  # torch and open_clip load when a model is built, not when the CLI parses
    import open_clip
    import torch

TINY_CLIP_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(model_cfg: dict | None = None, seed: int = 0) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP for `model_cfg` (default: TINY_CLIP_CFG)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.CLIP(**(model_cfg or TINY_CLIP_CFG)).eval()


def save_clip(model: torch.nn.Module, model_cfg: dict, folder: str) -> str:
    """Save in open_clip's hub layout (what `local-dir:` and `hf-hub:` load)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(folder, "open_clip_model.safetensors"))
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return folder


def tiny_aesthetic(dim: int, seed: int = 0, centre: float = 5.5) -> torch.nn.Module:
    """The LAION MLP with random weights, output shifted to about `centre` on random unit vectors."""
    import torch

    torch.manual_seed(seed)
    mlp = laion_mlp(dim).eval()
    with torch.no_grad():
        x = torch.nn.functional.normalize(torch.randn(256, dim), dim=-1)
        mlp.layers[7].bias += centre - mlp(x).mean()
        mlp.layers[7].weight *= 20.0  # spread scores over a few points, like real ones
    return mlp


def save_aesthetic(mlp: torch.nn.Module, path: str) -> str:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, path)
    return path


def make_tiny(folder: str, arch: str | None = None, seed: int = 0) -> dict[str, str]:
    """Write tiny-clip/ and tiny-aesthetic.safetensors under `folder`; returns their paths."""
    model_cfg = TINY_CLIP_CFG
    if arch:
        import open_clip

        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"--arch {arch!r} is not an open_clip architecture")
    clip_dir = save_clip(tiny_clip(model_cfg, seed), model_cfg, os.path.join(folder, "tiny-clip"))
    aest = save_aesthetic(tiny_aesthetic(model_cfg["embed_dim"], seed),
                          os.path.join(folder, "tiny-aesthetic.safetensors"))
    return {"clip": clip_dir, "aesthetic": aest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curation.filters.make_tiny", description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="where to write tiny-clip/ and tiny-aesthetic.safetensors")
    ap.add_argument("--arch", default=None, help="an open_clip architecture to initialise randomly instead of the tiny one")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for k, v in make_tiny(a.folder, a.arch, a.seed).items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
