"""vLLM's offline engine (`vllm.LLM`), one per Ray actor on a GPU node.

The caption stage hands the actor batches of pre-sampled frames (the CPU frame step decoded and
encoded them), so the engine only generates. A clip goes in as one video — a (T, H, W, 3) array with
its metadata (sampling fps, frame count, indices: vLLM needs them for a raw frame array, and Qwen-VL's
temporal positions come from the fps) — or as T images. The whole batch is one `LLM.generate` call,
which vLLM schedules with continuous batching.
"""
from __future__ import annotations

import time

from captioning.config import CaptionConfig
from captioning.engines.base import (CaptionRequest, Engine, Generation, SamplingParams, decode_frames, messages,
                                    video_metadata)
from captioning.prompts import Prompt


def video_item(frames: "list", fps: float) -> tuple:
    """(frames array, metadata) as vLLM takes a pre-decoded video."""
    import numpy as np

    arr = np.stack([np.asarray(f) for f in frames])
    return arr, video_metadata(len(arr), fps)


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(cfg)
        from transformers import AutoProcessor
        from vllm import LLM

        v = cfg.vllm
        kw = dict(model=cfg.model, tensor_parallel_size=v.tensor_parallel_size,
                  gpu_memory_utilization=v.gpu_memory_utilization, dtype=v.dtype, enforce_eager=v.enforce_eager,
                  seed=v.seed, limit_mm_per_prompt={"video": 1, "image": cfg.max_frames})
        if v.max_model_len:
            kw["max_model_len"] = v.max_model_len
        if v.max_num_seqs:
            kw["max_num_seqs"] = v.max_num_seqs
        self.llm = LLM(**kw)
        # The chat template comes from the model's own processor, as `vllm serve` would apply it.
        self.processor = AutoProcessor.from_pretrained(cfg.model)

    def generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams) -> list[Generation]:
        from vllm import SamplingParams as VSP

        if not requests:
            return []
        t0 = time.perf_counter()
        video = self.cfg.video_input == "video"
        inputs, gens = [], [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                frames = decode_frames(r.frames)
                text = self.processor.apply_chat_template(messages(prompt, len(frames), video),
                                                          add_generation_prompt=True, tokenize=False)
                mm = {"video": video_item(frames, r.fps)} if video else {"image": frames}
                inputs.append((i, {"prompt": text, "multi_modal_data": mm}))
            except Exception as e:  # a broken clip fails alone
                gens[i] = Generation(error=f"input: {type(e).__name__}: {e}")
        sp = VSP(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                 seed=params.seed if params.temperature > 0 else None)
        try:
            outs = self.llm.generate([x for _, x in inputs], sp, use_tqdm=False) if inputs else []
        except Exception as e:  # e.g. a prompt over max_model_len: retry one by one to isolate it
            if len(inputs) == 1:
                gens[inputs[0][0]] = Generation(error=f"generate: {type(e).__name__}: {e}")
                outs, inputs = [], []
            else:
                return [g if g is not None else self._single(r, prompt, params)
                        for g, r in zip(gens, requests)]
        dt = time.perf_counter() - t0
        for (i, _), o in zip(inputs, outs):
            c = o.outputs[0]
            gens[i] = Generation(text=c.text, finish_reason=c.finish_reason, tokens_in=len(o.prompt_token_ids or []),
                                 tokens_out=len(c.token_ids), latency_s=dt)
        return gens

    def _single(self, req: CaptionRequest, prompt: Prompt, params: SamplingParams) -> Generation:
        return self.generate([req], prompt, params)[0]

    def close(self) -> None:
        del self.llm
