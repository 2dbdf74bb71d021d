"""Caption clean-up and quality flags.

VLM captions often open with boilerplate ("The video shows ...") that teaches a text-to-video model
nothing, and sometimes come back empty, cut off at the token limit, or stuck in a loop. `clean`
strips the openings; `quality_flags` names what is wrong so the stage can retry once and flag what
stays bad (a flagged caption is kept, with its flags, for the user to filter on).
"""
from __future__ import annotations

import re
import zlib
from typing import Callable, Iterable

from captioning.engines.base import Generation, SamplingParams

# The caller's own checks of request i's cleaned text: the flags it adds (e.g. no_camera_motion).
Extra = Callable[[int, str], Iterable[str]]

# Openings removed from the start of a caption (case-insensitive), longest first where they overlap.
_OPENINGS = [
    r"(sure|certainly|of course)[,!.]?\s*(here(?:'s| is) (?:a |the )?(?:detailed )?description[^:]*:)?",
    r"here(?:'s| is) (?:a |the )?(?:detailed )?description(?: of (?:the|this) (?:video|clip))?\s*:",
    r"(?:the|this) (?:video|clip|footage|scene|sequence) (?:shows|depicts|features|captures|presents|"
    r"displays|showcases|portrays|is showing|begins with|starts with|opens with)(?: us)?",
    r"in (?:the|this) (?:video|clip|footage|scene)\s*,?\s*(?:we (?:see|can see)|there is|there are)?",
    r"(?:the|this) (?:video|clip) is (?:about|of)",
    r"we (?:see|can see)",
]
_OPENING_RE = re.compile(r"^\s*(?:" + "|".join(f"(?:{p})" for p in _OPENINGS) + r")[\s,:]*", re.IGNORECASE)

FLAGS = ("empty", "truncated", "looping")


def clean(text: str) -> str:
    """Strip boilerplate openings (repeatedly: "Sure! The video shows ...") and tidy whitespace."""
    text = " ".join(text.split())
    for _ in range(3):
        new = _OPENING_RE.sub("", text, count=1)
        if new == text:
            break
        text = new
    # "shows a man ..." -> "A man ...": the remainder starts mid-sentence.
    return text[:1].upper() + text[1:] if text else text


def is_looping(text: str) -> bool:
    """True when the text repeats itself: few distinct word 3-grams, or it compresses far too well.

    A dense caption of a few hundred characters keeps most of its 3-grams distinct and compresses to
    about half; a decoding loop ("a man walks. a man walks. ...", "!!!!!!") does neither.
    """
    words = text.lower().split()
    if len(words) >= 16:
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(set(grams)) / len(grams) < 0.5:
            return True
    raw = text.encode()
    return len(raw) >= 120 and len(zlib.compress(raw, 9)) / len(raw) < 0.25


def quality_flags(text: str, finish_reason: str | None) -> list[str]:
    """What is wrong with a cleaned caption: any of "empty", "truncated", "looping" (in that order)."""
    flags = []
    if not re.search(r"\w", text):
        flags.append("empty")
    if finish_reason == "length":
        flags.append("truncated")
    if text and is_looping(text):
        flags.append("looping")
    return flags


# Temperature of the re-generation of a bad caption: greedy decoding would repeat the same output.
RETRY_TEMPERATURE = 0.7


def judge(g: Generation, extra: Extra | None = None, i: int = 0) -> tuple[Generation, str, list[str]]:
    """(generation, cleaned text, flags); `extra(i, text) -> [flags]` adds the caller's own checks of
    request i (e.g. that an enhanced caption names the clip's camera motion)."""
    text = clean(g.text or "")
    if g.error:
        return g, text, []
    flags = quality_flags(text, g.finish_reason)
    return g, text, flags + (list(extra(i, text)) if extra else [])


def generate_judged(call: Callable[[list[int], SamplingParams], list[Generation]], n: int, params: SamplingParams,
                    retry_bad: int, extra: Extra | None = None) -> tuple[list[tuple], list[int]]:
    """Run `call(indices, params) -> [Generation]` for all n requests, then re-generate the bad ones (any
    flag) up to `retry_bad` times at RETRY_TEMPERATURE, keeping for each the result with fewest flags.

    Returns ([(generation, text, flags)] per request, [retries] per request). An exception of `call`
    becomes an error Generation for the whole batch (first call) or ends the retries (later calls).
    """
    from dataclasses import replace

    try:
        gens = call(list(range(n)), params)
    except Exception as e:  # the engine itself broke: every request of the batch gets the error
        gens = [Generation(error=f"engine: {type(e).__name__}: {e}") for _ in range(n)]
    results = [judge(g, extra, i) for i, g in enumerate(gens)]
    retries = [0] * n
    for attempt in range(1, retry_bad + 1):
        bad = [i for i, (g, _, flags) in enumerate(results) if g.error is None and flags]
        if not bad:
            break
        p = replace(params, temperature=max(params.temperature, RETRY_TEMPERATURE), seed=attempt)
        try:
            again = call(bad, p)
        except Exception:  # keep what we have: the flags say what is wrong
            break
        for i, g in zip(bad, again):
            retries[i] += 1
            new = judge(g, extra, i)
            if g.error is None and len(new[2]) <= len(results[i][2]):
                results[i] = new
    return results, retries
