"""Expert transformer: parity with diffusers' CogVideoXTransformer3DModel through model/convert.py."""
from __future__ import annotations

import pytest
import torch

from model.convert import (export_transformer, load_diffusers_transformer, save_diffusers,
                           transformer_config_from_diffusers, transformer_key_to_diffusers)
from model.transformer import ExpertTransformer, TransformerConfig
from model_helpers import (TINY_TRANSFORMER, TRANSFORMER_VARIANTS, diffusers_forward, diffusers_transformer)

pytest.importorskip("diffusers")
TOL = 1e-5


def _inputs(kw: dict, frames: int, height: int = 8, width: int = 8, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, kw["in_channels"], height, width, generator=g)
    text = torch.randn(batch, kw["max_text_seq_length"], kw["text_embed_dim"], generator=g)
    t = torch.tensor([3, 937][:batch])
    return latents, text, t


@pytest.mark.parametrize("name", list(TRANSFORMER_VARIANTS))
def test_forward_matches_diffusers(name):
    kw, frames = TRANSFORMER_VARIANTS[name]
    ref = diffusers_transformer(kw)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config))).eval()
    latents, text, t = _inputs(kw, frames)
    with torch.no_grad():
        expected = diffusers_forward(ref, latents, text, t)
        got = ours(latents, text, t)
    assert got.shape == expected.shape == latents.shape[:2] + (kw["out_channels"],) + latents.shape[3:]
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name,size", [("tiny-sincos", (8, 12)), ("tiny-rope", (6, 10)), ("head64-rope", (4, 8)),
                                       ("head64-sincos", (12, 6))])
def test_other_resolutions_match_diffusers(name, size):
    """Sin-cos tables are rebuilt and RoPE positions spread over the crop region for non-default grids."""
    kw, frames = TRANSFORMER_VARIANTS[name]
    ref = diffusers_transformer(kw)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config))).eval()
    latents, text, t = _inputs(kw, frames + 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(latents, text, t), diffusers_forward(ref, latents, text, t), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["head64-rope", "tiny-1.5"])
def test_gradients_match_diffusers_and_checkpointing(name):
    kw, frames = TRANSFORMER_VARIANTS[name]
    ref = diffusers_transformer(kw)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config)))
    latents, text, t = _inputs(kw, frames)

    def grads(fn, model, ckpt=False, selective=True):
        model.gradient_checkpointing, model.selective_recompute = ckpt, selective
        x = latents.clone().requires_grad_(True)
        model.zero_grad()
        fn(x).square().mean().backward()
        return x.grad

    g_ref = grads(lambda x: diffusers_forward(ref, x, text, t), ref)
    g_ours = grads(lambda x: ours(x, text, t), ours)
    torch.testing.assert_close(g_ours, g_ref, atol=TOL, rtol=0)
    w_ref = ref.transformer_blocks[0].attn1.to_q.weight.grad
    torch.testing.assert_close(ours.blocks[0].attn.to_q.weight.grad, w_ref, atol=TOL, rtol=0)
    w_k, w_v = ref.transformer_blocks[0].attn1.to_k.weight.grad, ref.transformer_blocks[0].attn1.to_v.weight.grad
    torch.testing.assert_close(ours.blocks[0].attn.to_k.weight.grad, w_k, atol=TOL, rtol=0)  # fused q/k/v
    torch.testing.assert_close(ours.blocks[0].attn.to_v.weight.grad, w_v, atol=TOL, rtol=0)
    g_ckpt = grads(lambda x: ours(x, text, t), ours, ckpt=True)
    torch.testing.assert_close(g_ckpt, g_ours, atol=1e-6, rtol=0)
    # selective recomputation (the default) against keeping every activation
    g_keep = grads(lambda x: ours(x, text, t), ours, selective=False)
    torch.testing.assert_close(g_keep, g_ours, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["head64-sincos", "head64-rope", "tiny-1.5"])
@pytest.mark.parametrize("selective", [True, False])
def test_every_weight_gradient_matches_diffusers(name, selective):
    """The last block computes only what reaches the video output (no text queries, text out-projection
    or text feed-forward): every parameter's gradient is still diffusers', those of that block included."""
    kw, frames = TRANSFORMER_VARIANTS[name]
    ref = diffusers_transformer(kw)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config)))
    ours.selective_recompute = selective
    latents, text, t = _inputs(kw, frames)
    diffusers_forward(ref, latents, text, t).square().mean().backward()
    ours(latents, text, t).square().mean().backward()
    theirs = {k: p.grad for k, p in ref.named_parameters()}
    checked = 0
    for k, p in ours.named_parameters():
        g_ref = theirs[transformer_key_to_diffusers(k)]
        if g_ref is None:  # a parameter diffusers' forward never reads (its grad stays None on both sides)
            assert p.grad is None or not p.grad.any(), k
            continue
        torch.testing.assert_close(p.grad, g_ref, atol=TOL, rtol=1e-4, msg=lambda m: f"{k}: {m}")
        checked += 1
    assert checked > 30


@pytest.mark.parametrize("name", ["tiny-sincos", "head64-rope", "head64-1.5"])
def test_export_round_trip_reproduces_state_dict(name):
    kw, _ = TRANSFORMER_VARIANTS[name]
    ref = diffusers_transformer(kw)
    sd = ref.state_dict()
    back = export_transformer(load_diffusers_transformer(sd, transformer_config_from_diffusers(dict(ref.config))))
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def test_loads_save_pretrained_folder_and_diffusers_loads_ours(tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    kw, frames = TRANSFORMER_VARIANTS["head64-rope"]
    ref = diffusers_transformer(kw)
    ref.save_pretrained(tmp_path / "transformer")  # diffusers' folder layout: config.json + safetensors
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    ours = load_diffusers_transformer(tmp_path).eval()  # a pipeline folder: finds transformer/
    assert ours.config.use_rope and ours.config.head_dim == 64
    latents, text, t = _inputs(kw, frames)
    with torch.no_grad():
        expected = diffusers_forward(ref, latents, text, t)
        torch.testing.assert_close(ours(latents, text, t), expected, atol=TOL, rtol=0)
        save_diffusers(ours, str(tmp_path / "export"))
        again = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "export").eval()
        torch.testing.assert_close(diffusers_forward(again, latents, text, t), expected, atol=0, rtol=0)


def test_named_configs_build_and_expose_blocks():
    for make, layers, rope in [(TransformerConfig.cogvideox_2b, 30, False), (TransformerConfig.cogvideox_5b, 42, True),
                               (TransformerConfig.cogvideox_1_5_5b, 42, True)]:
        cfg = make()
        assert cfg.num_layers == layers and cfg.use_rope == rope and cfg.head_dim == 64
    model = ExpertTransformer(TransformerConfig.tiny())
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 2
    assert model.gradient_checkpointing is False
    out = model(torch.randn(1, 3, 4, 8, 8), torch.randn(1, 8, 8), torch.tensor([5]))
    assert out.shape == (1, 3, 4, 8, 8)


def test_2b_parameter_count_matches_diffusers_meta():
    """The full-size 2b graph (built on the meta device) has the published parameter names and shapes."""
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        ref = CogVideoXTransformer3DModel()
        ours = ExpertTransformer(TransformerConfig.cogvideox_2b())
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    mine = {k: v.shape for k, v in export_transformer(ours).items()}
    assert mine == theirs
    assert abs(ours.num_params() / 1e9 - 1.69) < 0.05


def test_loads_sharded_safetensors(tmp_path):
    """The published 5b transformer is split into several safetensors files plus an index."""
    kw, frames = TRANSFORMER_VARIANTS["head64-sincos"]
    ref = diffusers_transformer(kw)
    ref.save_pretrained(tmp_path, max_shard_size="200KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and list(tmp_path.glob("*.index.json"))
    ours = load_diffusers_transformer(tmp_path).eval()
    latents, text, t = _inputs(kw, frames)
    with torch.no_grad():
        torch.testing.assert_close(ours(latents, text, t), diffusers_forward(ref, latents, text, t), atol=TOL, rtol=0)
