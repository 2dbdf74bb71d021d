"""Text encoder wrapper: any transformers T5 encoder + tokenizer, prompts padded to 226 tokens and encoded
without an attention mask (as CogVideoX was trained: the padding tokens' states are part of the
conditioning). `TextEncoder.tiny()` builds a random 2-layer T5 with the byte-level ByT5 tokenizer, which
needs no files, for offline tests.
"""
from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 226):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @classmethod
    def from_pretrained(cls, path_or_name: str, max_length: int = 226, dtype: torch.dtype | None = None,
                        device=None) -> "TextEncoder":
        """A local folder or hub name holding a T5 encoder: either a CogVideoX pipeline folder (with
        text_encoder/ and tokenizer/ subfolders) or a plain T5 / T5EncoderModel checkpoint."""
        import os

        from transformers import AutoTokenizer, T5EncoderModel

        pipeline_layout = os.path.isdir(os.path.join(path_or_name, "text_encoder"))
        if not os.path.isdir(path_or_name):  # a hub name: a pipeline repo (THUDM/CogVideoX-*) or a T5 repo
            from huggingface_hub import list_repo_files

            pipeline_layout = any(f.startswith("text_encoder/") for f in list_repo_files(path_or_name))
        enc_kw, tok_kw = ({"subfolder": "text_encoder"}, {"subfolder": "tokenizer"}) if pipeline_layout else ({}, {})
        if dtype is not None:
            enc_kw["dtype"] = dtype
        encoder = T5EncoderModel.from_pretrained(path_or_name, **enc_kw)
        tokenizer = AutoTokenizer.from_pretrained(path_or_name, **tok_kw)
        te = cls(encoder, tokenizer, max_length)
        return te.to(device) if device is not None else te

    @classmethod
    def tiny(cls, max_length: int = 226, d_model: int = 32, seed: int = 0) -> "TextEncoder":
        """Random 2-layer T5 encoder (d_model 32) + ByT5 byte tokenizer: offline, for tests."""
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        cfg = T5Config(vocab_size=384, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                       relative_attention_max_distance=32, dropout_rate=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = T5EncoderModel(cfg)
        return cls(encoder, ByT5Tokenizer(), max_length)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        return ids

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """prompts -> [B, max_length, d_model] last hidden states (no attention mask)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        device = next(self.encoder.parameters()).device
        return self.encoder(self.tokenize(prompts).to(device))[0]

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts)
