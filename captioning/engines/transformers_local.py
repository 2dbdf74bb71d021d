"""transformers in this process: small models, CPU runs, and the default when nothing is served.

A batch is one padded `generate` call (left padding, so every row's new tokens start at the same
column). Sampling (temperature > 0: a retry of a bad caption) never draws from one random stream for the
whole batch: each row samples from its own generator, seeded per request (`KeyedSampler`), so a clip's
caption does not depend on which clips share its batch. Clips go in as one video each (with the sampling fps, so temporal positions are right) or
as a list of images, as `caption.video_input` says.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from captioning.config import CaptionConfig
from captioning.engines.base import (CaptionRequest, Engine, Generation, SamplingParams, TextEngine, TextRequest,
                                    decode_frames, messages, request_seed, text_messages, video_metadata)
from captioning.prompts import Prompt

if TYPE_CHECKING:  # torch and transformers load in the engine's worker, not at import
    import torch
    from transformers import BatchEncoding, PreTrainedTokenizerBase


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(cfg)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        t = cfg.transformers
        self.torch = torch
        self.device, dtype = torch_device_dtype(t)
        kw = {"attn_implementation": t.attn_implementation} if t.attn_implementation else {}
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        self.processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype, **kw)
        self.hf_model = model.to(self.device).eval()
        gc = self.hf_model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad = self.processor.tokenizer.pad_token_id

    def generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        videos = [self.wants_video(r) for r in requests]
        if any(videos) and not all(videos):  # one processor call takes either videos or images: split
            out: dict[int, Generation] = {}
            for want in (True, False):
                idx = [i for i, v in enumerate(videos) if v == want]
                out.update(zip(idx, self.generate([requests[i] for i in idx], prompt, params)))
            return [out[i] for i in range(len(requests))]
        return self._generate(requests, prompt, params, videos[0])

    def _generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams,
                  video: bool) -> list[Generation]:
        t0 = time.perf_counter()
        frames = [decode_frames(r.frames) for r in requests]
        texts = [self.processor.apply_chat_template(messages(r.prompt or prompt, len(f), video),
                                                    add_generation_prompt=True, tokenize=False)
                 for f, r in zip(frames, requests)]
        if video:
            inputs = self.processor(text=texts, videos=frames, padding=True, return_tensors="pt",
                                    videos_kwargs={"do_sample_frames": False, "video_metadata": [
                                        {k: v for k, v in video_metadata(len(f), r.fps).items()
                                         if k != "do_sample_frames"} for f, r in zip(frames, requests)]})
        else:
            inputs = self.processor(text=texts, images=[img for f in frames for img in f], padding=True,
                                    return_tensors="pt")
        inputs = inputs.to(self.device)
        with self.torch.inference_mode():
            out = self.hf_model.generate(**inputs, max_new_tokens=params.max_tokens,
                                         **decode_kwargs(params, [r.clip_id for r in requests]),
                                         output_scores=bool(params.logprobs), return_dict_in_generate=True)
        gens = split_generations(out.sequences, inputs, self.eos, self.processor.tokenizer, time.perf_counter() - t0)
        if params.logprobs:
            for g, tops in zip(gens, first_token_logprobs(out.scores[0], params.logprobs, self.processor.tokenizer)):
                g.first_logprobs = tops
        return gens


class KeyedSampler:
    """A logits processor that turns greedy decoding into sampling with one random stream per row.

    HF's own sampling draws the whole batch's tokens from the global generator, so a row's draw depends on
    the rows beside it (and on their count): the same clip got a different retry caption whenever Ray
    batched it differently. Here each row has its own `torch.Generator` (seeded by `request_seed`) and the
    Gumbel-max trick samples from it: argmax(logits / T + Gumbel noise) over the top-p set is a draw from
    softmax(logits / T) restricted to that set. The noise is drawn on the CPU whatever the device, so a
    request's stream is the same on CPU and GPU."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        import torch
        from transformers.generation.logits_process import TopPLogitsWarper

        self.torch = torch
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        torch = self.torch
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.gens]).to(scores.device)
        return scores - torch.log(-torch.log(u.clamp_min(1e-20)))  # + Gumbel(0, 1) noise


def decode_kwargs(params: SamplingParams, keys: list[str]) -> dict:
    """`generate` arguments of `params` for requests with these keys: greedy at temperature 0, else greedy
    over per-row Gumbel-perturbed logits (`KeyedSampler`), never HF's batch-wide random stream."""
    kw: dict = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if params.temperature > 0:
        from transformers import LogitsProcessorList

        sampler = KeyedSampler([request_seed(params.seed, k) for k in keys], params.temperature, params.top_p)
        kw["logits_processor"] = LogitsProcessorList([sampler])
    return kw


def first_token_logprobs(scores: torch.Tensor, k: int, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, float]]:
    """Top-k (token text -> log-probability) of the first generation step's logits, per row."""
    import torch

    lp = torch.log_softmax(scores.float(), dim=-1)
    vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    out = []
    for v, i in zip(vals.tolist(), ids.tolist()):
        tops: dict[str, float] = {}
        for tok, x in zip(tokenizer.convert_ids_to_tokens(i), v):  # raw tokens: "Yes", "Ġyes", ...
            text = tokenizer.convert_tokens_to_string([tok])
            tops[text] = max(tops.get(text, -1e30), x)
        out.append(tops)
    return out


def split_generations(out: torch.Tensor, inputs: BatchEncoding, eos: set[int], tokenizer: PreTrainedTokenizerBase,
                      dt: float) -> list[Generation]:
    """One Generation per row of a left-padded `generate` output: text up to the first EOS, token counts."""
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    n_in = inputs["attention_mask"].sum(dim=1).tolist()
    gens = []
    for row, nin in zip(new, n_in):
        stop = next((i for i, tok in enumerate(row) if tok in eos), None)
        toks = row if stop is None else row[:stop]
        text = tokenizer.decode(toks, skip_special_tokens=True)
        gens.append(Generation(text=text, finish_reason="stop" if stop is not None else "length",
                               tokens_in=int(nin), tokens_out=len(toks) + (stop is not None), latency_s=dt))
    return gens


def torch_device_dtype(t: "object") -> tuple[str, torch.dtype]:
    """(device, dtype) of a TransformersEngineConfig: "auto" = cuda when present; bf16 on GPU, fp32 on CPU."""
    import torch

    device = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if t.dtype == "auto":
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32
    return device, getattr(torch, t.dtype)


class TransformersTextEngine(TextEngine):
    """A text-only causal LM in this process: one padded, left-aligned `generate` per batch."""

    name = "transformers"

    def __init__(self, cfg: "object") -> None:
        super().__init__(cfg)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device, dtype = torch_device_dtype(cfg.transformers)
        attn = cfg.transformers.attn_implementation
        kw = {"attn_implementation": attn} if attn else {}
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self.tokenizer.padding_side = "left"
        self.hf_model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kw).to(self.device).eval()
        gc = self.hf_model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def generate_text(self, requests: list[TextRequest], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        t0 = time.perf_counter()
        texts = [self.tokenizer.apply_chat_template(text_messages(r), add_generation_prompt=True, tokenize=False)
                 for r in requests]
        inputs = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False).to(self.device)
        with self.torch.inference_mode():
            out = self.hf_model.generate(**inputs, max_new_tokens=params.max_tokens,
                                         **decode_kwargs(params, [r.key for r in requests]))
        return split_generations(out, inputs, self.eos, self.tokenizer, time.perf_counter() - t0)
