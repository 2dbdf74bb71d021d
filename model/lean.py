"""Hand-written autograd for the expert block's memory-heavy pieces: each saves less for backward than
autograd would and recomputes only elementwise work there (no matmul is run twice, no dispatch mode).

    modulated_linear(video, text, norm, mods, weight, bias)
        expert AdaLN (one LayerNorm, shift/scale per modality) -> [text ; video] -> linear. Saves the two
        inputs, not the normalised, modulated and concatenated copies (two activations of the block's width).
    modulated_mlp(video, text, norm, mods, w1, b1, w2, b2)
        the same, then GELU(tanh) -> linear. Also saves fc1's pre-activation, not the GELU output (4x wide).

text may be None (video tokens only). mods = (shift, scale, text_shift, text_scale), each [B, 1, D]
(the text pair None without text). Standard aten ops only (CPU and CUDA, any float dtype); the same
forward ops as the module code (fp32 outputs bitwise equal; bf16 within an ulp: buffer layouts differ).
Backward recomputes the LayerNorm, modulation and GELU; a second backward through the same graph
(retain_graph) works, double backward (create_graph) does not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Mods = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def _modulated_input(video, text, w, b, eps: float, mods: Mods) -> torch.Tensor:
    """The linear's input [text ; video], each part shift + LN(part) * (1 + scale), written in place into
    one buffer (no per-part copies to concatenate: one LN output alive at a time besides it)."""
    shift, scale, t_shift, t_scale = mods
    d = video.shape[-1]
    if text is None:
        return torch.addcmul(shift, F.layer_norm(video, (d,), w, b, eps), 1 + scale)
    st = text.shape[1]
    x = video.new_empty(video.shape[0], st + video.shape[1], d)
    for part, sh, sc, out in ((text, t_shift, t_scale, x[:, :st]), (video, shift, scale, x[:, st:])):
        torch.addcmul(sh, F.layer_norm(part, (d,), w, b, eps), 1 + sc, out=out)
    return x


def _modulated_input_backward(g_x, video, text, w, b, eps: float, mods: Mods, needs) -> list:
    """Gradients of (video, text, norm weight, norm bias, shift, scale, text shift, text scale) from the
    gradient of the linear's input; `needs` is ctx.needs_input_grad for those eight. The LayerNorm is
    recomputed one modality at a time."""
    shift, scale, t_shift, t_scale = mods
    if text is None:
        parts = [(video, g_x, scale)]
    else:
        g_t, g_v = g_x.split([text.shape[1], video.shape[1]], dim=1)
        parts = [(video, g_v, scale), (text, g_t, t_scale)]
    grads: list = [None] * 8
    mask = [needs[0] or needs[1], needs[2], needs[3]]
    for i, (x, g, sc) in enumerate(parts):
        y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], w, b, eps)
        if needs[4 + 2 * i]:
            grads[4 + 2 * i] = g.sum(1, keepdim=True)
        if needs[5 + 2 * i]:
            grads[5 + 2 * i] = (g * y).sum(1, keepdim=True)
        del y
        g_x_in, g_w, g_b = torch.ops.aten.native_layer_norm_backward(g * (1 + sc), x, [x.shape[-1]], mean, rstd,
                                                                     w, b, mask)
        grads[i] = g_x_in
        for j, gp in ((2, g_w), (3, g_b)):
            if gp is not None:
                grads[j] = gp if grads[j] is None else grads[j] + gp
    return grads


def _weight_grads(g_out, x, need_w: bool, need_b: bool):
    """(grad weight, grad bias) of y = x @ weight.T + bias, flattening the leading dims."""
    g2 = g_out.reshape(-1, g_out.shape[-1])
    g_w = g2.t().mm(x.reshape(-1, x.shape[-1])) if need_w else None
    return g_w, g2.sum(0) if need_b else None


class _ModulatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, w, b, shift, scale, t_shift, t_scale, weight, bias, eps):
        mods = (shift, scale, t_shift, t_scale)
        ctx.eps = eps
        ctx.save_for_backward(video, text, w, b, shift, scale, t_shift, t_scale, weight)
        return F.linear(_modulated_input(video, text, w, b, eps, mods), weight, bias)

    @staticmethod
    def backward(ctx, g_out):
        video, text, w, b, shift, scale, t_shift, t_scale, weight = ctx.saved_tensors
        mods, needs = (shift, scale, t_shift, t_scale), ctx.needs_input_grad
        # the recomputed input lives only for the weight gradient: freed before the input gradient exists
        x = _modulated_input(video, text, w, b, ctx.eps, mods)
        g_w, g_b = _weight_grads(g_out, x, needs[8], needs[9])
        del x
        grads = [None] * 8
        if any(needs[:8]):
            grads = _modulated_input_backward(g_out.matmul(weight), video, text, w, b, ctx.eps, mods, needs[:8])
        return (*grads, g_w, g_b, None)


class _ModulatedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, w, b, shift, scale, t_shift, t_scale, w1, b1, w2, b2, eps):
        mods = (shift, scale, t_shift, t_scale)
        h = F.linear(_modulated_input(video, text, w, b, eps, mods), w1, b1)
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
        g_w2, g_b2 = _weight_grads(g_out, a, needs[10], needs[11])
        del a
        g_h = g_out.matmul(w2)
        torch.ops.aten.gelu_backward.grad_input(g_h, h, approximate="tanh", grad_input=g_h)
        x = _modulated_input(video, text, w, b, ctx.eps, mods)
        g_w1, g_b1 = _weight_grads(g_h, x, needs[8], needs[9])
        del x
        grads = [None] * 8
        if any(needs[:8]):
            g_x = g_h.matmul(w1)
            del g_h
            grads = _modulated_input_backward(g_x, video, text, w, b, ctx.eps, mods, needs[:8])
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
