"""Any OpenAI-compatible chat endpoint: `vllm serve`, `transformers serve`, a hosted API.

Requests of a batch go out concurrently (at most `openai.concurrency` in flight; the server batches
them), each with a timeout and retries with exponential backoff and jitter on connection errors,
timeouts, 429 and 5xx. Other 4xx (a prompt too long, a bad model name) fail at once: retrying cannot
help. The API key is read from the environment variable named in the config and only ever placed in
the Authorization header: it is never logged, printed or stored.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time

from captioning.config import CaptionConfig
from captioning.engines.base import (CaptionRequest, Engine, Generation, SamplingParams, TextEngine, TextRequest,
                                    request_seed, text_messages)
from captioning.prompts import Prompt

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def chat_payload(model: str, req: CaptionRequest, prompt: Prompt, params: SamplingParams,
                 video_as: str = "frames", structured: str = "response_format") -> dict:
    """The /v1/chat/completions body for one clip: frames as data-URL images (or the mp4), then the prompt."""
    if video_as == "video_url":
        if req.video is None:
            raise ValueError(f"clip {req.clip_id}: video_as=video_url but the clip bytes were not loaded")
        url = "data:video/mp4;base64," + base64.b64encode(req.video).decode()
        parts: list[dict] = [{"type": "video_url", "video_url": {"url": url}}]
    else:
        parts = [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(f).decode()}}
                 for f in req.frames]
    prompt = req.prompt or prompt
    parts.append({"type": "text", "text": prompt.user})
    msgs = [{"role": "system", "content": prompt.system}] if prompt.system else []
    body = {"model": model, "messages": msgs + [{"role": "user", "content": parts}],
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
    if params.temperature > 0:  # the request's own seed: vLLM gives a seeded request its own generator
        body["seed"] = request_seed(params.seed, req.clip_id)
    if params.json_schema is not None and structured == "vllm":  # vLLM's own: compact JSON only
        body["structured_outputs"] = {"regex": params.regex} if params.regex else {"json": params.json_schema}
    elif params.json_schema is not None:  # OpenAI's structured output; `vllm serve` enforces it while decoding
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "caption_fields", "schema": params.json_schema}}
    if params.logprobs:  # the yes/no answers of caption.checks are read from the first token's candidates
        body["logprobs"], body["top_logprobs"] = True, params.logprobs
    return body


def parse_response(data: dict) -> Generation:
    """A Generation from a chat-completion response body."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    usage = data.get("usage") or {}
    first = ((choice.get("logprobs") or {}).get("content") or [None])[0]
    tops = {x["token"]: x["logprob"] for x in first.get("top_logprobs") or []} if first else None
    return Generation(text=msg.get("content") or "", finish_reason=choice.get("finish_reason"),
                      tokens_in=usage.get("prompt_tokens"), tokens_out=usage.get("completion_tokens"),
                      first_logprobs=tops)


class ChatClient:
    """Concurrent chat-completion requests to one endpoint with timeouts, retries and backoff.

    One event loop for the client's life, so the connection pool is reused across batches. The API key
    only ever sits in the Authorization header of the httpx client.
    """

    def __init__(self, o: "object") -> None:
        import httpx

        self.o = o
        self.url = o.base_url.rstrip("/") + "/chat/completions"
        headers = {}
        key = os.environ.get(o.api_key_env) if o.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.retries = 0  # re-sends so far: a health signal of the server and the network
        self._loop = asyncio.new_event_loop()
        limits = httpx.Limits(max_connections=o.concurrency, max_keepalive_connections=o.concurrency)
        self.http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(o.timeout_s, connect=10.0), limits=limits)

    def run(self, bodies: list[dict | Generation], keys: list[str]) -> list[Generation]:
        """POST every body (at most `concurrency` in flight); a Generation in place of a body passes through."""
        return self._loop.run_until_complete(self._batch(bodies, keys))

    async def _batch(self, bodies: list[dict | Generation], keys: list[str]) -> list[Generation]:
        sem = asyncio.Semaphore(self.o.concurrency)

        async def one(body: dict | Generation, key: str) -> Generation:
            if isinstance(body, Generation):
                return body
            async with sem:
                return await self.post(body, key)

        return list(await asyncio.gather(*(one(b, k) for b, k in zip(bodies, keys))))

    async def post(self, body: dict, key: str) -> Generation:
        """One request with retries; `key` (the clip) is named in the log, never the body or the headers."""
        import httpx

        t0 = time.perf_counter()
        err = ""
        for attempt in range(self.o.max_retries + 1):
            if attempt:
                self.retries += 1
                log.debug("%s: retry %d after %s", key, attempt, err)
                delay = self.o.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                await asyncio.sleep(delay)
            try:
                r = await self.http.post(self.url, json=body)
            except httpx.TimeoutException as e:
                err = f"timeout after {self.o.timeout_s:.0f}s ({type(e).__name__})"
                continue
            except httpx.TransportError as e:
                err = f"connection error: {type(e).__name__}: {e}"
                continue
            if r.status_code == 200:
                g = parse_response(r.json())
                g.latency_s = time.perf_counter() - t0
                return g
            err = f"HTTP {r.status_code}: {r.text[:300]}"
            if r.status_code not in _RETRY_STATUS:
                break
        log.warning("%s: no answer from %s after %d attempt(s): %s", key, self.url, attempt + 1, err)
        return Generation(error=f"{err} (after {attempt + 1} attempt(s))", latency_s=time.perf_counter() - t0)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.http.aclose())
            self._loop.close()


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(cfg)
        self.o = cfg.openai
        self.client = ChatClient(cfg.openai)
        self.url = self.client.url
        self._client = self.client.http

    def __repr__(self) -> str:  # never show the headers (the key)
        return f"OpenAIEngine(url={self.url!r}, model={self.model!r})"

    @property
    def retries(self) -> int:
        return self.client.retries

    def generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams) -> list[Generation]:
        bodies: list[dict | Generation] = []
        for r in requests:
            try:
                bodies.append(chat_payload(self.model, r, prompt, params, "frames" if r.as_images else self.o.video_as,
                                           self.o.structured))
            except ValueError as e:
                bodies.append(Generation(error=str(e)))
        return self.client.run(bodies, [f"clip {r.clip_id}" for r in requests])

    def close(self) -> None:
        self.client.close()


def text_payload(model: str, req: TextRequest, params: SamplingParams) -> dict:
    """The /v1/chat/completions body of a text-only request."""
    body = {"model": model, "messages": text_messages(req), "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p}
    if params.temperature > 0:
        body["seed"] = request_seed(params.seed, req.key)
    return body


class OpenAITextEngine(TextEngine):
    """A text LM behind any OpenAI-compatible server (`vllm serve`, a hosted API)."""

    name = "openai"

    def __init__(self, cfg: "object") -> None:
        super().__init__(cfg)
        self.client = ChatClient(cfg.openai)

    def __repr__(self) -> str:
        return f"OpenAITextEngine(url={self.client.url!r}, model={self.model!r})"

    def generate_text(self, requests: list[TextRequest], params: SamplingParams) -> list[Generation]:
        return self.client.run([text_payload(self.model, r, params) for r in requests],
                               [f"clip {r.key}" for r in requests])

    def close(self) -> None:
        self.client.close()
