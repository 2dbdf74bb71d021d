"""The engine contract: a batch of clips (sampled JPEG frames + prompt) in, one generation per clip out.

Engines never raise for one bad clip: a failure is a `Generation` with `error` set, so the stage
writes an error row for that clip and a re-run retries exactly those.
"""
from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass

from captioning.config import CaptionConfig
from captioning.prompts import Prompt


@dataclass
class CaptionRequest:
    """One clip to caption, as the CPU frame step prepared it."""

    clip_id: str
    frames: list[bytes]  # JPEG frames in time order (all the same size)
    fps: float  # rate the frames were sampled at (the model's video metadata)
    video: bytes | None = None  # the clip's mp4, only when openai.video_as == "video_url"
    as_images: bool = False  # send the frames as separate images whatever video_input says (key frames)
    prompt: Prompt | None = None  # a prompt of its own (a caption.checks question); None: the batch's prompt


@dataclass
class SamplingParams:
    """Decoding settings of one call (a retry of a bad caption samples at a higher temperature)."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int = 0  # with temperature > 0: each request samples from its own stream, seeded by
    # request_seed(seed, request key), so its text does not depend on which requests share its batch
    json_schema: dict | None = None  # answer must be JSON of this schema: vLLM (offline or served) constrains
    # decoding to it (structured outputs); transformers generates freely and the caller validates
    regex: str | None = None  # vLLM only: the same answer as one regular expression (compact JSON, no free
    # whitespace); used instead of json_schema where set, since vLLM's JSON grammar lets a weak model stall
    # in whitespace until max_tokens
    logprobs: int | None = None  # also return this many top log-probabilities of the first new token


@dataclass
class Generation:
    """What an engine returns for one clip."""

    text: str = ""  # raw model output (post-processing happens in the stage)
    finish_reason: str | None = None  # "stop" or "length" (OpenAI's names)
    tokens_in: int | None = None  # prompt tokens, visual tokens included
    tokens_out: int | None = None  # generated tokens
    latency_s: float = 0.0  # wall time this clip waited (for a batched engine: its batch's time)
    error: str | None = None  # set when no caption came back; the clip is retried on re-run
    first_logprobs: dict[str, float] | None = None  # with SamplingParams.logprobs: token text -> log-probability
    # of the first generated token's top candidates (yes/no answers of caption.checks)


def request_seed(seed: int, key: str) -> int:
    """The sampling seed of one request: a hash of the call's seed and the request's key (clip id).

    Every engine seeds each request on its own (never one stream for a whole batch), so a sampled caption
    (a retry of a bad one) is the same whichever clips Ray's scheduling put in its batch, and two clips of
    one retry batch do not draw the same noise."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & (2 ** 31 - 1)  # 31 bits: every server's seed field takes it


class Engine(ABC):
    """Common shape of every engine. Built once per worker (Ray actor); `generate` is called per batch."""

    name: str = "engine"

    def __init__(self, cfg: CaptionConfig) -> None:
        self.cfg = cfg
        self.model = cfg.model

    @abstractmethod
    def generate(self, requests: list[CaptionRequest], prompt: Prompt, params: SamplingParams) -> list[Generation]:
        """One Generation per request, in order."""

    def close(self) -> None:
        """Release servers, clients or GPU memory."""

    def wants_video(self, req: CaptionRequest) -> bool:
        """Whether `req` goes in as one video (else as images)."""
        return self.cfg.video_input == "video" and not req.as_images


@dataclass
class TextRequest:
    """One text-only generation: a clip's summary or rewrite, or a prompt to expand."""

    key: str  # clip id (or prompt index): named in errors
    system: str | None  # system message (None: the chat template's default)
    user: str  # the filled-in template


class TextEngine(ABC):
    """A text-only language model behind the same contract: one Generation per request, never raising
    for one request. Built once per worker from a TextLMConfig (`caption.summary`, `caption.enhance`)."""

    name: str = "text-engine"

    def __init__(self, cfg: "object") -> None:
        self.cfg = cfg
        self.model = cfg.model

    @abstractmethod
    def generate_text(self, requests: list[TextRequest], params: SamplingParams) -> list[Generation]:
        """One Generation per request, in order."""

    def close(self) -> None:
        """Release clients or GPU memory."""


def text_messages(req: TextRequest) -> list[dict]:
    """Chat messages of a text request (plain string contents: every chat template takes them)."""
    msgs = [{"role": "system", "content": req.system}] if req.system else []
    return msgs + [{"role": "user", "content": req.user}]


def decode_frames(frames: list[bytes]) -> "list":
    """JPEG bytes -> RGB PIL images (local engines; the remote one sends the bytes as they are)."""
    from PIL import Image

    out = []
    for b in frames:
        im = Image.open(io.BytesIO(b))
        out.append(im.convert("RGB"))
    return out


def video_metadata(n_frames: int, fps: float) -> dict:
    """Metadata of a pre-sampled video, in the shape HF video processors and vLLM take: the frames are
    all there is (no further sampling) and `fps` places them in time (Qwen-VL's temporal positions)."""
    return {"fps": float(fps), "duration": n_frames / float(fps), "total_num_frames": n_frames,
            "frames_indices": list(range(n_frames)), "video_backend": "opencv", "do_sample_frames": False}


def messages(prompt: Prompt, n_images: int | None, video: bool) -> list[dict]:
    """Chat messages in the HF chat-template shape: the video (or images) first, then the prompt."""
    parts: list[dict] = [{"type": "video"}] if video else [{"type": "image"} for _ in range(n_images or 0)]
    parts.append({"type": "text", "text": prompt.user})
    msgs = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return msgs + [{"role": "user", "content": parts}]
