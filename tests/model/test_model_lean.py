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


def _saved_per_block(lean: bool) -> float:
    """Bytes autograd saves for one full block (3 blocks minus 2: the last block is lighter), in units
    of tokens x width x 4 bytes (exact, from autograd's saved-tensor hooks)."""
    from model.profiling import saved_tensor_bytes
    from model.transformer import ExpertTransformer, TransformerConfig

    x, text, t = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 8, 8), torch.tensor([5])
    saved = []
    for layers in (2, 3):
        torch.manual_seed(0)
        cfg = TransformerConfig.tiny(num_heads=2, head_dim=16, num_layers=layers, time_embed_dim=16, text_embed_dim=8,
                                     use_rope=True)
        model = ExpertTransformer(cfg)
        model.selective_recompute = lean
        out, n = saved_tensor_bytes(lambda: model(x, text, t))
        out.square().mean().backward()  # the saved tensors are the ones backward uses
        saved.append(n)
    tokens, width = 4 * 8 * 8 + 8, cfg.dim
    return (saved[1] - saved[0]) / (tokens * width * 4)


def test_lean_blocks_save_less_for_backward():
    """Per block the default saves ~14 x tokens x width (inputs, q/k/v, SDPA's q/k/out, the out
    projection, the FFN input and its 4x-wide pre-activation, fc2's output) against ~22 keeping
    everything: fails if the GELU output (4 units) or the normalised / concatenated copies (4) come back."""
    lean, keep = _saved_per_block(True), _saved_per_block(False)
    assert lean < 16 and keep > 20, (lean, keep)
