"""Versioned caption prompts.

A template is never edited in place: a changed prompt gets a new name (dense-v2, ...), so captions of
different prompts never mix under one name. Each caption row also stores `prompt_hash`, the hash of
the exact text sent (system + user), which catches a custom `prompt_text` or an edited file too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """What is sent with the frames of one clip."""

    name: str  # template name, or "custom"
    system: str | None  # system message (None: the model's chat template default)
    user: str  # user text, placed after the video/images

    @property
    def hash(self) -> str:
        """sha256 of the exact text sent, first 16 hex chars (stored with every caption)."""
        blob = f"{self.name}\x00{self.system or ''}\x00{self.user}".encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# The dense prompt follows CogVLM2-Caption ("Please describe this video in detail.") and spells out
# what a text-to-video model's captions need: subjects, actions in order, setting, camera, style,
# without boilerplate openings or speculation.
_DENSE_V1 = (
    "Please describe this video in detail. Describe the main subjects and their appearance, what "
    "they do from beginning to end in order, the setting and background, lighting and colors, and "
    "how the camera moves (static, pan, zoom, tracking). Write one fluent paragraph in the present "
    "tense. Start directly with the content: do not begin with phrases such as \"The video shows\" "
    "or \"In this video\". Describe only what is visible; do not guess names, brands or intentions."
)

TEMPLATES: dict[str, Prompt] = {
    "dense-v1": Prompt("dense-v1", None, _DENSE_V1),
    # One sentence: short captions for mixed short/dense caption training or quick previews.
    "short-v1": Prompt("short-v1", None,
                       "Describe this video in one sentence: the main subject, the action and the "
                       "setting. Start directly with the content."),
}


def get_prompt(name: str, text: str | None = None) -> Prompt:
    """The prompt to send: `text` when given (a custom prompt), else the named template."""
    if text is not None:
        if not text.strip():
            raise ValueError("caption.prompt_text is empty")
        return Prompt("custom", None, text)
    if name not in TEMPLATES:
        raise ValueError(f"caption.prompt: unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]
