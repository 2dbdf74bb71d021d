"""caption.checks: yes/no questions the VLM answers about each clip (Cosmos-Curate's rejection criteria by
default), scored as probabilities.

    clip frames ─► caption request
               └► one request per question (same frames, the question as its prompt, 1 new token,
                  top-k log-probabilities) ─► P(yes) = p(yes) / (p(yes) + p(no)) ─► check_<name>, check_<name>_yes

All questions of all clips of a batch go to the engine in one call right after the caption; with vLLM's
prefix caching the frames' KV cache of the caption request is reused by each question (the prompts share
the images and differ only in the last text). A probability, not just the answer, lets a user pick a
threshold by looking (inspect) and filter with it (shard.writer.drop_caption_checks).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from captioning.config import ChecksConfig
from captioning.engines.base import CaptionRequest, Generation, SamplingParams
from captioning.prompts import Prompt

_YES = {"yes", "y"}
_NO = {"no", "n"}


def question_prompt(name: str, question: str) -> Prompt:
    return Prompt(f"check-{name}", None, f"{question} Answer with yes or no.")


def p_yes(first_logprobs: dict[str, float] | None) -> float | None:
    """P(yes) among the yes/no readings of the first token's candidates; None when neither is among them."""
    if not first_logprobs:
        return None
    yes = sum(math.exp(lp) for t, lp in first_logprobs.items() if t.strip().strip(".,!").lower() in _YES)
    no = sum(math.exp(lp) for t, lp in first_logprobs.items() if t.strip().strip(".,!").lower() in _NO)
    return None if yes + no == 0 else yes / (yes + no)


def check_columns(generate: Callable[[list[CaptionRequest], SamplingParams], list[Generation]],
                  reqs: list[CaptionRequest], cfg: ChecksConfig) -> list[dict]:
    """check_<name> (P(yes), None when unanswered) and check_<name>_yes per request, from one engine call
    `generate(requests, params)` over every request x question."""
    names = list(cfg.questions)
    calls = [replace(r, prompt=question_prompt(n, cfg.questions[n])) for r in reqs for n in names]
    try:
        gens = generate(calls, SamplingParams(1, 0.0, 1.0, logprobs=cfg.logprobs))
    except Exception as e:  # the engine broke: the checks stay unanswered, the caption stands
        gens = [Generation(error=str(e)) for _ in calls]
    out = []
    for i in range(len(reqs)):
        row: dict = {}
        for j, n in enumerate(names):
            g = gens[i * len(names) + j]
            p = None if g.error else p_yes(g.first_logprobs)
            row[f"check_{n}"] = p
            row[f"check_{n}_yes"] = None if p is None else p >= cfg.threshold
        out.append(row)
    return out
