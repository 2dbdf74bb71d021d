"""model/lean.py: the hand-written autograd pieces of the expert block (gradcheck in float64) and what
they save for backward (the reason they exist)."""
from __future__ import annotations

import pytest
import torch

from model.lean import _ModulatedLinear, _ModulatedMLP


def _leaf(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()


def _streams(text: bool, b=2, sv=3, st=2, d=8) -> tuple:
    """(video, text, LN weight, LN bias, shift, scale, text shift, text scale), float64 leaves; the LN
    weight away from ones so its gradient is exercised."""
    mods = [_leaf(b, 1, d, scale=0.5, seed=3 + i) for i in range(4 if text else 2)] + ([] if text else [None, None])
    return (_leaf(b, sv, d, seed=1), _leaf(b, st, d, seed=2) if text else None,
            (1 + 0.3 * _leaf(d, seed=7)).detach().requires_grad_(), _leaf(d, scale=0.3, seed=8), *mods)


@pytest.mark.parametrize("text", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_modulated_linear_gradcheck(text, bias):
    inputs = (*_streams(text), _leaf(6, 8, seed=9), _leaf(6, seed=10) if bias else None, 1e-5)
    assert torch.autograd.gradcheck(_ModulatedLinear.apply, inputs)


@pytest.mark.parametrize("text", [True, False])
def test_modulated_mlp_gradcheck(text):
    inputs = (*_streams(text), _leaf(16, 8, seed=11), _leaf(16, seed=12), _leaf(8, 16, seed=13), _leaf(8, seed=14), 1e-5)
    assert torch.autograd.gradcheck(_ModulatedMLP.apply, inputs)


def test_frozen_inputs_get_no_gradient():
    """LoRA freezes the base weights: the pieces skip their gradients (needs_input_grad), and still
    give the others right."""
    video, text, w, b, *mods = _streams(True)
    w1, b1, w2, b2 = (_leaf(16, 8, seed=11).detach(), _leaf(16, seed=12).detach(), _leaf(8, 16, seed=13).detach(),
                      _leaf(8, seed=14))
    _ModulatedMLP.apply(video, text, w.detach(), b.detach(), *mods, w1, b1, w2, b2, 1e-5).square().sum().backward()
    assert video.grad is not None and b2.grad is not None and mods[0].grad is not None


def test_lean_blocks_save_less_for_backward():
    """What a forward leaves saved for backward (exact, from autograd's saved-tensor hooks), default vs
    keeping everything: without the normalised / concatenated copies and the GELU output ~0.63x
    here; fails if either comes back (each is >= 0.1x of what keeping everything saves)."""
    from model.profiling import saved_tensor_bytes
    from model.transformer import ExpertTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig.tiny(num_heads=2, head_dim=16, num_layers=3, time_embed_dim=16, text_embed_dim=8,
                                 use_rope=True)
    model = ExpertTransformer(cfg)
    x, text, t = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 8, 8), torch.tensor([5])
    saved = {}
    for lean in (True, False):
        model.selective_recompute = lean
        out, saved[lean] = saved_tensor_bytes(lambda: model(x, text, t))
        out.square().mean().backward()  # the saved tensors are the ones backward uses
    assert saved[True] < 0.7 * saved[False], saved
