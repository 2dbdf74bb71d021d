"""Context-parallel expert transformer on 2 and 4 gloo processes: the forward output and every gradient
equal the single-process ones within 1e-5 (fp32), for Ulysses and all-gather attention, sin-cos, RoPE
and 1.5 (temporal patch) variants, with even and uneven token splits."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from model.context_parallel import ContextParallel, balanced_sizes
from model.transformer import ExpertTransformer, TransformerConfig
from training.parallelize import apply_context_parallel
from tests.model.cp_helpers import spawn

# name: (config kwargs, latents shape [B, F, C, H, W])
VARIANTS = {
    "sincos": (dict(), (2, 3, 4, 8, 8)),  # 48 video tokens
    "rope-uneven": (dict(use_rope=True), (1, 1, 4, 6, 10)),  # 15 tokens: 8/7, 4/4/4/3
    "v1.5": (dict(use_rope=True, patch_size_t=2, patch_bias=False), (1, 4, 4, 8, 8)),  # 32 tokens
}


def _model(kw: dict) -> ExpertTransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig.tiny(num_heads=4, head_dim=16, time_embed_dim=16, text_embed_dim=8, **kw)
    model = ExpertTransformer(cfg)
    with torch.no_grad():  # norms and modulation away from their identity init, so they are exercised
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape) * 0.1)
    return model


def _inputs(shape):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(shape, generator=g), torch.randn(shape[0], 8, 8, generator=g),
            torch.tensor([500.0, 20.0][:shape[0]]), torch.randn(shape, generator=g))


def _step(model, latents, text, t, target):
    latents, text = latents.clone().requires_grad_(), text.clone().requires_grad_()
    out = model(latents, text, t)
    loss = ((out - target) ** 2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["<latents>"], grads["<text>"] = latents.grad, text.grad
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _check(rank: int, world: int, attention: str, checkpointing: bool, lean: bool = False) -> dict:
    """Every rank: the single-process reference, then the CP run; returns the largest differences.
    lean: the CP run with model/lean.py's pieces back on (apply_context_parallel turns them off; they do
    not touch the attention core, so they hold under CP too)."""
    worst = {}
    for name, (kw, shape) in VARIANTS.items():
        model = _model(kw)
        model.gradient_checkpointing = checkpointing
        inputs = _inputs(shape)
        ref_out, ref_grads = _step(model, *inputs)
        undo = apply_context_parallel(model, ContextParallel(dist.group.WORLD, attention))
        model.selective_recompute = model.selective_recompute or lean
        out, grads = _step(model, *inputs)
        undo()
        diffs = {"out": float((out - ref_out).abs().max())}
        for k, g in grads.items():  # per-rank gradients sum to cp x the gradient of the (replicated) loss
            dist.all_reduce(g)
            # absolute below 1, relative above (norm_k.bias has an analytically zero gradient: ~1e-9)
            diffs[k] = float((g / world - ref_grads[k]).abs().max() / max(1.0, float(ref_grads[k].abs().max())))
        worst[name] = diffs
    return worst


@pytest.mark.parametrize("world, attention, checkpointing, lean", [
    (2, "ulysses", False, True), pytest.param(2, "ulysses", False, False, marks=pytest.mark.heavy),
    pytest.param(2, "allgather", True, False, marks=pytest.mark.heavy),
    pytest.param(4, "ulysses", True, False, marks=pytest.mark.heavy),
    pytest.param(4, "allgather", False, True, marks=pytest.mark.heavy)])
def test_cp_transformer_matches_single_process(world, attention, checkpointing, lean):
    results = spawn(_check, world, attention, checkpointing, lean)
    for rank, worst in enumerate(results):
        for name, diffs in worst.items():
            bad = {k: v for k, v in diffs.items() if v > 1e-5}
            assert not bad, f"rank {rank} {name}: {bad}"


def test_balanced_sizes():
    assert balanced_sizes(15, 4) == [4, 4, 4, 3] and balanced_sizes(8, 2) == [4, 4]
    assert sum(balanced_sizes(17550, 8)) == 17550 and max(balanced_sizes(17550, 8)) == 2194
