"""The VAE under FSDP2 (the trainer's `parallelize`: every down/up block and the root sharded) on 2 gloo
processes: each rank reconstructs its half of a batch, FSDP averages the gradients; the full gradients
equal one process's gradient of the whole batch's mean loss (fp32, 1e-6), and FSDP2 never warns that a
wrapped block returned a view (its pre-backward hook would be lost on an in-place op of that view)."""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.model.cp_helpers import spawn


def _vae():
    from model.vae import CausalVAE, VAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig.tiny())
    with torch.no_grad():  # non-trivial norm affines, so their gradients are not all alike
        for p in vae.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape) * 0.1)
    vae.chunked = False  # training: whole clips, one pass per block
    return vae


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 9-frame clips and the posterior noise of each (fixed, so every process sees the same draw)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 9, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(2, 4, 3, 2, 2, generator=g)
    return x, noise


def _loss(vae, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 + KL (as --task vae), averaged over the samples given."""
    recon, post = vae(x, noise=noise)
    return (recon - x).abs().flatten(1).mean(1).mean() + 1e-3 * post.kl().mean()


def _fsdp_grads(rank: int, world: int) -> dict:
    from training.config import ParallelConfig
    from training.parallelize import DistInfo, build_mesh, parallelize

    cfg = ParallelConfig(backend="gloo", mixed_precision="fp32")
    dev = torch.device("cpu")
    info = DistInfo(rank, world, rank, dev, build_mesh(cfg, dev, world), launched=False)
    vae = _vae()
    parallelize(vae, [vae.encoder.down_blocks, vae.decoder.up_blocks], cfg, info)
    x, noise = _batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loss(vae, x[rank:rank + 1], noise[rank:rank + 1]).backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor() for n, p in vae.named_parameters()}
    views = [str(w.message) for w in caught if "returned a view tensor" in str(w.message)]
    return {"grads": grads, "views": views}


@pytest.mark.heavy
def test_fsdp2_vae_gradients_equal_one_process():
    vae = _vae()
    x, noise = _batch()
    _loss(vae, x, noise).backward()
    ref = {n: p.grad for n, p in vae.named_parameters()}

    results = spawn(_fsdp_grads, 2)
    for r, res in enumerate(results):
        assert res["views"] == [], f"rank {r}: {res['views'][:2]}"
        assert res["grads"].keys() == ref.keys()
        for n, g in res["grads"].items():
            scale = max(1.0, float(ref[n].abs().max()))
            assert float((g - ref[n]).abs().max()) / scale < 1e-6, n
