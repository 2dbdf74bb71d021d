"""Image-to-video layouts of the expert transformer against diffusers' CogVideoXTransformer3DModel:
5b-I2V (1.0: RoPE + a stored [text + video] position table, 2x latent channels in) and 1.5-5B-I2V
(2x2x2 patches, ofs embedding, 2x latent channels in). Tiny configs, random weights, fp32."""
from __future__ import annotations

import pytest
import torch

from model.convert import export_transformer, load_diffusers_transformer, save_diffusers, transformer_config_from_diffusers
from model_helpers import TINY_TRANSFORMER, diffusers_rope, diffusers_transformer

pytest.importorskip("diffusers")
TOL = 1e-5
_BASE = dict(TINY_TRANSFORMER, attention_head_dim=16, time_embed_dim=16, in_channels=8, out_channels=4,
             use_rotary_positional_embeddings=True)
I2V = {  # name: (diffusers kwargs, latent frames of the training grid)
    "5b-i2v": (dict(_BASE, use_learned_positional_embeddings=True), 2),  # sample_frames 8 -> 2 latent frames
    "1.5-i2v": (dict(_BASE, patch_size_t=2, patch_bias=False, ofs_embed_dim=16), 4),
}


def _reference(name: str):
    kw, frames = I2V[name]
    ref = diffusers_transformer(kw)
    if kw.get("use_learned_positional_embeddings"):  # a "trained" table: text rows no longer zero
        with torch.no_grad():
            pe = ref.patch_embed.pos_embedding
            pe.add_(torch.randn(pe.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    return ref, frames


def _inputs(kw: dict, frames: int, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, frames, kw["in_channels"], 8, 8, generator=g)
    text = torch.randn(batch, kw["max_text_seq_length"], kw["text_embed_dim"], generator=g)
    ofs = torch.full((1,), 2.0) if kw.get("ofs_embed_dim") else None  # the pipelines' ofs value
    return latents, text, torch.tensor([3, 937][:batch]), ofs


def _theirs(ref, latents, text, t, ofs):
    rope = diffusers_rope(ref.config, latents.shape[1], latents.shape[3], latents.shape[4])
    return ref(latents, text, t, ofs=ofs, image_rotary_emb=rope, return_dict=False)[0]


def _ours(ref):
    return load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config))).eval()


@pytest.mark.parametrize("name,extra_frames", [("5b-i2v", 0), ("5b-i2v", 1), ("1.5-i2v", 0), ("1.5-i2v", 2)])
def test_i2v_forward_matches_diffusers(name, extra_frames):
    """At the training grid (the stored table) and at another frame count (sin-cos, as diffusers)."""
    ref, frames = _reference(name)
    ours = _ours(ref)
    latents, text, t, ofs = _inputs(ref.config, frames + extra_frames)
    with torch.no_grad():
        expected = _theirs(ref, latents, text, t, ofs)
        got = ours(latents, text, t, ofs)
    assert got.shape == latents.shape[:2] + (4,) + latents.shape[3:]  # v of the video channels only
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(I2V))
def test_i2v_gradients_match_diffusers(name):
    ref, frames = _reference(name)
    ours = _ours(ref)
    latents, text, t, ofs = _inputs(ref.config, frames)
    _theirs(ref, latents, text, t, ofs).square().mean().backward()
    ours(latents, text, t, ofs).square().mean().backward()
    w = ours.patch_proj.weight.grad
    torch.testing.assert_close(w, ref.patch_embed.proj.weight.grad, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.blocks[1].ff.fc2.weight.grad, ref.transformer_blocks[1].ff.net[2].weight.grad,
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(I2V))
def test_i2v_export_round_trip_and_diffusers_loads_ours(name, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    ref, frames = _reference(name)
    sd = ref.state_dict()
    ours = _ours(ref)
    back = export_transformer(ours)
    assert sorted(back) == sorted(sd)
    # (diffusers builds its position table in float64; ours is float32 like every other tensor)
    assert all(torch.equal(back[k], v.to(back[k].dtype)) for k, v in sd.items())
    save_diffusers(ours, str(tmp_path / "t"))
    again = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "t").eval()
    latents, text, t, ofs = _inputs(ref.config, frames)
    with torch.no_grad():
        torch.testing.assert_close(_theirs(again, latents, text, t, ofs), _theirs(ref, latents, text, t, ofs),
                                   atol=0, rtol=0)


def test_learned_positions_refuse_other_sizes_and_ofs_is_required():
    ref, frames = _reference("5b-i2v")
    latents, text, t, _ = _inputs(ref.config, frames)
    with pytest.raises(ValueError, match="learned positions"):
        _ours(ref)(latents[..., :6], text, t)
    ref15, frames15 = _reference("1.5-i2v")
    latents, text, t, _ = _inputs(ref15.config, frames15)
    with pytest.raises(ValueError, match="pass ofs"):
        _ours(ref15)(latents, text, t)
