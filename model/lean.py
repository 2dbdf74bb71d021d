"""Hand-written autograd for the expert block's memory-heavy pieces: each saves less for backward than
autograd would and recomputes only elementwise work there (no matmul is run twice, no dispatch mode).

    modulated_linear(video, text, norm, mods, weight, bias)
        expert AdaLN (one LayerNorm, shift/scale per modality) -> [text ; video] -> linear. Saves the two
        inputs, not the normalised, modulated and concatenated copies (two activations of the block's width).
    modulated_mlp(video, text, norm, mods, w1, b1, w2, b2)
        the same, then GELU(tanh) -> linear. Also saves fc1's pre-activation, not the GELU output (4x wide).

text may be None (video tokens only). mods = (shift, scale, text_shift, text_scale), each [B, 1, D]
(the text pair None without text). Standard aten ops only (CPU and CUDA, any float dtype); the same
forward ops as the autograd path, so outputs are bitwise those of the module code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Mods = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def _norm_mod(x: torch.Tensor, w, b, eps: float, shift, scale):
    """(shift + LN(x) * (1 + scale), LN(x), mean, rstd)."""
    y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], w, b, eps)
    return torch.addcmul(shift, y, 1 + scale), y, mean, rstd


def _modulated_input(video, text, w, b, eps: float, mods: Mods):
    """The linear's input [text ; video] and, per modality, what its backward needs (LN output, mean, rstd)."""
    shift, scale, t_shift, t_scale = mods
    h_v, *stats_v = _norm_mod(video, w, b, eps, shift, scale)
    if text is None:
        return h_v, [stats_v]
    h_t, *stats_t = _norm_mod(text, w, b, eps, t_shift, t_scale)
    return torch.cat([h_t, h_v], dim=1), [stats_t, stats_v]


def _modulated_input_backward(g_x, video, text, w, b, mods: Mods, stats, needs) -> list:
    """Gradients of (video, text, norm weight, norm bias, shift, scale, text shift, text scale) from the
    gradient of the linear's input; `needs` is ctx.needs_input_grad for those eight."""
    shift, scale, t_shift, t_scale = mods
    if text is None:
        parts = [(video, g_x, scale, stats[0])]
    else:
        g_t, g_v = g_x.split([text.shape[1], video.shape[1]], dim=1)
        parts = [(video, g_v, scale, stats[1]), (text, g_t, t_scale, stats[0])]
    grads: list = [None] * 8
    mask = [needs[0] or needs[1], needs[2], needs[3]]
    for i, (x, g, sc, (y, mean, rstd)) in enumerate(parts):
        if needs[4 + 2 * i]:
            grads[4 + 2 * i] = g.sum(1, keepdim=True)
        if needs[5 + 2 * i]:
            grads[5 + 2 * i] = (g * y).sum(1, keepdim=True)
        g_x_in, g_w, g_b = torch.ops.aten.native_layer_norm_backward(g * (1 + sc), x, [x.shape[-1]], mean, rstd,
                                                                     w, b, mask)
        grads[i] = g_x_in
        for j, gp in ((2, g_w), (3, g_b)):
            if gp is not None:
                grads[j] = gp if grads[j] is None else grads[j] + gp
    return grads


def _linear_backward(g_out, x, weight, need_x: bool, need_w: bool, need_b: bool):
    """(grad input, grad weight, grad bias) of y = x @ weight.T + bias, flattening the leading dims."""
    g2 = g_out.reshape(-1, g_out.shape[-1])
    g_w = g2.t().mm(x.reshape(-1, x.shape[-1])) if need_w else None
    g_b = g2.sum(0) if need_b else None
    g_x = g_out.matmul(weight) if need_x else None
    return g_x, g_w, g_b


class _ModulatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, w, b, shift, scale, t_shift, t_scale, weight, bias, eps):
        mods = (shift, scale, t_shift, t_scale)
        x, _ = _modulated_input(video, text, w, b, eps, mods)
        ctx.eps = eps
        ctx.save_for_backward(video, text, w, b, shift, scale, t_shift, t_scale, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g_out):
        video, text, w, b, shift, scale, t_shift, t_scale, weight = ctx.saved_tensors
        mods, needs = (shift, scale, t_shift, t_scale), ctx.needs_input_grad
        x, stats = _modulated_input(video, text, w, b, ctx.eps, mods)
        g_x, g_w, g_b = _linear_backward(g_out, x, weight, any(needs[:8]), needs[8], needs[9])
        del x
        grads = _modulated_input_backward(g_x, video, text, w, b, mods, stats, needs[:8]) if g_x is not None else [None] * 8
        return (*grads, g_w, g_b, None)


class _ModulatedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, w, b, shift, scale, t_shift, t_scale, w1, b1, w2, b2, eps):
        mods = (shift, scale, t_shift, t_scale)
        x, _ = _modulated_input(video, text, w, b, eps, mods)
        h = F.linear(x, w1, b1)
        del x
        ctx.eps = eps
        ctx.save_for_backward(video, text, w, b, shift, scale, t_shift, t_scale, w1, w2, h)
        return F.linear(F.gelu(h, approximate="tanh"), w2, b2)

    @staticmethod
    def backward(ctx, g_out):
        video, text, w, b, shift, scale, t_shift, t_scale, w1, w2, h = ctx.saved_tensors
        mods, needs = (shift, scale, t_shift, t_scale), ctx.needs_input_grad
        # one 4x-wide buffer at a time: the GELU output for fc2's weight gradient, freed before the
        # gradient of fc1's output, which GELU's backward then overwrites in place
        a = F.gelu(h, approximate="tanh")
        _, g_w2, g_b2 = _linear_backward(g_out, a, w2, False, needs[10], needs[11])
        del a
        g_h = g_out.matmul(w2)
        torch.ops.aten.gelu_backward.grad_input(g_h, h, approximate="tanh", grad_input=g_h)
        x, stats = _modulated_input(video, text, w, b, ctx.eps, mods)
        g_x, g_w1, g_b1 = _linear_backward(g_h, x, w1, any(needs[:8]), needs[8], needs[9])
        del x, g_h
        grads = _modulated_input_backward(g_x, video, text, w, b, mods, stats, needs[:8]) if g_x is not None else [None] * 8
        return (*grads, g_w1, g_b1, g_w2, g_b2, None)


def modulated_linear(video: torch.Tensor, text: torch.Tensor | None, norm: nn.LayerNorm, mods: Mods,
                     weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """linear([LN_t(text) ; LN_v(video)], weight, bias) with each LN modulated by its shift/scale."""
    return _ModulatedLinear.apply(video, text, norm.weight, norm.bias, *mods, weight, bias, norm.eps)


def modulated_mlp(video: torch.Tensor, text: torch.Tensor | None, norm: nn.LayerNorm, mods: Mods,
                  fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """fc2(gelu_tanh(fc1([LN_t(text) ; LN_v(video)]))) with each LN modulated by its shift/scale."""
    return _ModulatedMLP.apply(video, text, norm.weight, norm.bias, *mods, fc1.weight, fc1.bias, fc2.weight,
                               fc2.bias, norm.eps)
