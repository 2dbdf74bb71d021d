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
from captioning.engines.base import (CaptionRequest, Engine, Generation, SamplingParams, TextEngine, TextRequest,
                                    decode_frames, messages, request_seed, text_messages, video_metadata)
from captioning.prompts import Prompt


def vllm_sampling(params: SamplingParams, key: str = "") -> "object":
    """vLLM's SamplingParams of one request: seeded by `request_seed(params.seed, key)` when sampling (vLLM
    gives a seeded request its own generator, so its draws do not depend on the rest of the batch)."""
    from vllm import SamplingParams as VSP

    kw = {}
    if params.json_schema is not None:
        try:  # vLLM >= 0.10.2 names it structured_outputs; older releases guided_decoding
            from vllm.sampling_params import StructuredOutputsParams

            # the regex where given: compact JSON (see SamplingParams.regex)
            kw["structured_outputs"] = StructuredOutputsParams(regex=params.regex) if params.regex else \
                StructuredOutputsParams(json=params.json_schema)
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(regex=params.regex) if params.regex else \
                GuidedDecodingParams(json=params.json_schema)
    if params.logprobs:
        kw["logprobs"] = params.logprobs
    return VSP(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
               seed=request_seed(params.seed, key) if params.temperature > 0 else None, **kw)


def engine_kwargs(model: str, v: "object") -> dict:
    """vllm.LLM arguments of a VLLMEngineConfig."""
    kw = dict(model=model, tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
              dtype=v.dtype, enforce_eager=v.enforce_eager, seed=v.seed)
    if v.max_model_len:
        kw["max_model_len"] = v.max_model_len
    if v.max_num_seqs:
        kw["max_num_seqs"] = v.max_num_seqs
    if v.load_format != "auto":
        kw["load_format"] = v.load_format
    return kw


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

        kw = engine_kwargs(cfg.model, cfg.vllm)
        self.llm = LLM(**kw, limit_mm_per_prompt={"video": 1, "image": cfg.max_frames})
        # The chat template comes from the model's own processor, as `vllm serve` would apply it.
        self.processor = AutoProcessor.from_pretrained(cfg.model)

    def generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        t0 = time.perf_counter()
        inputs, gens = [], [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                video = self.wants_video(r)
                frames = decode_frames(r.frames)
                text = self.processor.apply_chat_template(messages(r.prompt or prompt, len(frames), video),
                                                          add_generation_prompt=True, tokenize=False)
                mm = {"video": video_item(frames, r.fps)} if video else {"image": frames}
                inputs.append((i, {"prompt": text, "multi_modal_data": mm}))
            except Exception as e:  # a broken clip fails alone
                gens[i] = Generation(error=f"input: {type(e).__name__}: {e}")
        sp = [vllm_sampling(params, requests[i].clip_id) for i, _ in inputs]  # one per prompt, in order
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
                                 tokens_out=len(c.token_ids), latency_s=dt,
                                 first_logprobs={x.decoded_token: x.logprob for x in c.logprobs[0].values()}
                                 if params.logprobs and c.logprobs else None)
        return gens

    def _single(self, req: CaptionRequest, prompt: Prompt, params: SamplingParams) -> Generation:
        return self.generate([req], prompt, params)[0]

    def close(self) -> None:
        del self.llm


class VLLMTextEngine(TextEngine):
    """A text-only LM in vLLM's offline engine: the batch as one `LLM.generate` call."""

    name = "vllm"

    def __init__(self, cfg: "object") -> None:
        super().__init__(cfg)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(cfg.model, cfg.vllm))
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)

    def generate_text(self, requests: list[TextRequest], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        t0 = time.perf_counter()
        prompts = [self.tokenizer.apply_chat_template(text_messages(r), add_generation_prompt=True, tokenize=False)
                   for r in requests]
        try:
            outs = self.llm.generate(prompts, [vllm_sampling(params, r.key) for r in requests], use_tqdm=False)
        except Exception as e:  # e.g. one prompt over max_model_len: one by one to isolate it
            if len(requests) == 1:
                return [Generation(error=f"generate: {type(e).__name__}: {e}")]
            return [self.generate_text([r], params)[0] for r in requests]
        dt = time.perf_counter() - t0
        return [Generation(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason,
                           tokens_in=len(o.prompt_token_ids or []), tokens_out=len(o.outputs[0].token_ids),
                           latency_s=dt) for o in outs]

    def close(self) -> None:
        del self.llm
