"""A tiny, randomly initialised Qwen2 text LM saved as a complete local model folder.

The text-only side of captioning (the summary of frame captions, caption enhancement, prompt expansion)
runs through real engines in tests, bench/caption.py and the demo without downloading anything: this
builds a 2-layer Qwen2ForCausalLM with the tiny VLM's locally trained byte-level BPE tokenizer and Qwen's
chat template. Head dim 64, as vLLM's CPU attention needs (see tiny_vlm.py).
"""
from __future__ import annotations

import json
import os

from captioning.tiny_vlm import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer


def build_tiny_text_lm(out_dir: str, seed: int = 0, vocab_size: int = 512) -> str:
    """Write a tiny random Qwen2 causal LM (model, tokenizer, chat template) to `out_dir`; returns it.

    Idempotent: a folder that already holds a finished model is left as it is.
    """
    marker = os.path.join(out_dir, ".tiny-text-lm-complete")
    if os.path.exists(marker):
        return out_dir
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    raw = train_tokenizer(vocab_size)
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer = Qwen2TokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, chat_template=CHAT_TEMPLATE)
    config = Qwen2Config(vocab_size=raw.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, tie_word_embeddings=False,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:  # older readers look here
        json.dump({"chat_template": CHAT_TEMPLATE}, f)
    with open(marker, "w") as f:
        f.write("ok\n")
    return out_dir
