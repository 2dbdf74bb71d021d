"""A tiny, randomly initialised Qwen2.5-VL saved as a complete local model folder.

Tests, bench/caption.py and the README demo caption through real engines (transformers, `vllm serve`,
`vllm.LLM`, `transformers serve`) without downloading anything: this builds the model, a byte-level
BPE tokenizer trained here on a small text, the chat template and the image/video processor configs.

Attention head dim is 64 in both towers: vLLM's CPU attention supports head dims 32, 64, 80, ... only
(with 16 the server reports ready and dies on the first request). Frames are processed at most
`max_pixels` (112x112 by default: 16 visual tokens per image, per 2 video frames), so a clip of a few
frames fits a 2048-token context.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tokenizers and transformers load when the demo model is built
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

# Qwen2-VL's special tokens, in Qwen's order (the model config refers to them by id).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL's chat template (images and videos placed where they appear in a message).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the tokenizer: caption-like English, so common words get their own tokens.
_CORPUS = """A man in a red jacket rides a bicycle along a coastal road at sunset.
The camera pans slowly from left to right across a green valley with a river.
Two dogs run across a sandy beach while waves roll onto the shore.
A woman walks through a busy city street at night, lit by neon signs and passing cars.
Close-up of hands slicing vegetables on a wooden cutting board in a bright kitchen.
A drone shot flies over a snowy mountain ridge under a clear blue sky.
Please describe this video in detail. Describe the main subjects, their actions, the setting,
the lighting and colors, and how the camera moves. The scene is static; the camera zooms in.
A child plays with a ball in a park, trees sway in the wind, and clouds drift overhead.
"""


def train_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer (like Qwen's) trained on the small corpus above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    return tok


def build_tiny_qwen25_vl(out_dir: str, seed: int = 0, max_pixels: int = 112 * 112,
                         vocab_size: int = 512, sizes: dict | None = None) -> str:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor, chat template) to `out_dir`.

    `sizes` ({"text": {...}, "vision": {...}} config overrides) makes a full-size layout instead; then
    only the config, tokenizer and processor are written (no weights: vLLM's load_format "dummy" makes
    them), for throughput checks without a download (bench/gpu.py).
    Returns `out_dir`. Idempotent: a folder that already holds a finished model is left as it is.
    """
    marker = os.path.join(out_dir, ".tiny-qwen25-vl-complete")
    if os.path.exists(marker):
        return out_dir
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor)

    os.makedirs(out_dir, exist_ok=True)
    raw = train_tokenizer(vocab_size)
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer = Qwen2TokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, chat_template=CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=max_pixels, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    try:  # transformers >= 4.53 has a separate video processor
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": 28 * 28, "longest_edge": max_pixels},
                                                patch_size=14, merge_size=2, temporal_patch_size=2)
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    except ImportError:
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=CHAT_TEMPLATE)

    hidden, heads = 128, 2  # text head dim 64
    text_over, vision_over = (sizes or {}).get("text", {}), (sizes or {}).get("vision", {})
    hidden = text_over.get("hidden_size", hidden)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=raw.get_vocab_size(), hidden_size=hidden, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=1,
            max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
            # M-RoPE splits the 32 rotary frequencies of a 64-dim head over time/height/width.
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ) | text_over,
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=1, out_hidden_size=hidden,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[1], tokens_per_second=2, in_channels=3,
        ) | vision_over,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if sizes:  # full size: config only (GiBs of random weights would be written for nothing)
        config.save_pretrained(out_dir)
        GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<|endoftext|>"], do_sample=False).save_pretrained(out_dir)
        return _finish_folder(out_dir, processor, tokenizer, marker)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    return _finish_folder(out_dir, processor, tokenizer, marker)


def _finish_folder(out_dir: str, processor: ProcessorMixin, tokenizer: PreTrainedTokenizerBase, marker: str) -> str:
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # Older readers (vLLM's pinned transformers, `transformers serve`) look for the template here too.
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
        json.dump({"chat_template": CHAT_TEMPLATE}, f)
    with open(marker, "w") as f:
        f.write("ok\n")
    return out_dir
