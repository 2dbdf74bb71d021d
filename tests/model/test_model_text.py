"""T5 text encoder wrapper: padding to 226 tokens, no attention mask, offline tiny config, folder loading."""
from __future__ import annotations

import torch

from model.text import TextEncoder


def test_tiny_pads_to_226_and_is_deterministic():
    te = TextEncoder.tiny()
    emb = te.encode(["a red fox jumps", "rain"])
    assert emb.shape == (2, 226, te.dim)
    again = TextEncoder.tiny().encode(["rain"])
    torch.testing.assert_close(again[0], emb[1])
    ids = te.tokenize(["rain"])
    assert ids.shape == (1, 226) and (ids[0, 5:] == te.tokenizer.pad_token_id).all()
    long = te.tokenize(["x" * 1000])
    assert long.shape == (1, 226)


def test_from_pretrained_local_folder(tmp_path):
    te = TextEncoder.tiny(max_length=16)
    te.encoder.save_pretrained(tmp_path / "text_encoder")
    te.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = TextEncoder.from_pretrained(str(tmp_path), max_length=16)  # CogVideoX pipeline layout
    torch.testing.assert_close(loaded.encode(["hello"]), te.encode(["hello"]))
    te.encoder.save_pretrained(tmp_path / "flat")
    te.tokenizer.save_pretrained(tmp_path / "flat")
    flat = TextEncoder.from_pretrained(str(tmp_path / "flat"), max_length=16)
    assert flat.encode("hello").shape == (1, 16, 32)
