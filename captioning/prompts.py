"""Versioned caption prompts.

A template is never edited in place: a changed prompt gets a new name (dense-v2, ...), so captions of
different prompts never mix under one name. Each caption row also stores `prompt_hash`, the hash of
the exact text sent (system + user), which catches a custom `prompt_text` or an edited file too.
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, replace


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


# Key-frame captions of mode frames_then_summary: one image each, no placeholders.
TEMPLATES["frame-v1"] = Prompt("frame-v1", None,
                               "Describe this video frame in detail: the subjects, their appearance and pose, "
                               "the setting, lighting and colors. Write two or three sentences. Start directly "
                               "with the content.")

# Text-only templates: the user text is filled in with str.format placeholders (literal braces doubled).
# The CogVideoX recipe: dense per-frame image captions (with times) and a short video caption are
# summarised by a language model into one dense video caption.
_SUMMARY_V1 = (
    "Below are descriptions of key frames of one video clip of {duration} seconds, each with its time in "
    "seconds.\n\nFrames:\n{frames}\n{video_caption}\n"
    "Write one dense caption of the whole clip as a single fluent paragraph in the present tense: the "
    "main subjects and their appearance, what happens from beginning to end in order (use the times to "
    "order events, but do not mention timestamps), the setting, lighting and colors, and the camera "
    "movement. Describe only what the descriptions support. Start directly with the content; do not "
    "begin with \"The video shows\".")
# Caption enhancement (Cosmos-Curate's / NeMo Curator's refinement pass): keep the facts, fix the style.
_ENHANCE_V1 = (
    "Rewrite this video caption as {style}, about {target_words} words. Keep every fact it states and add "
    "none.{camera}\n\nCaption: {caption}\n\nAnswer with the rewritten caption only.")
# CogVideoX's prompt optimisation: a short user prompt expanded into the long style of training captions.
_EXPAND_V1 = (
    "Expand this short prompt for a text-to-video model into a detailed video description of about "
    "{target_words} words, written as {style}: the main subjects and their appearance, the action from "
    "beginning to end, the setting, lighting and colors, and the camera movement. Keep the prompt's "
    "content and invent nothing that contradicts it.\n\nPrompt: {prompt}\n\nAnswer with the description only.")
_TEXT_SYSTEM = "You write precise, visual descriptions of video clips for training a text-to-video model."

TEMPLATES["summary-v1"] = Prompt("summary-v1", _TEXT_SYSTEM, _SUMMARY_V1)
TEMPLATES["enhance-v1"] = Prompt("enhance-v1", _TEXT_SYSTEM, _ENHANCE_V1)
TEMPLATES["expand-v1"] = Prompt("expand-v1", _TEXT_SYSTEM, _EXPAND_V1)

# Placeholders each kind of text template may use (the kind is the name before the first "-").
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "summary": frozenset({"frames", "video_caption", "duration"}),
    "enhance": frozenset({"caption", "target_words", "style", "camera"}),
    "expand": frozenset({"prompt", "target_words", "style"}),
}


def placeholders_of(text: str) -> set[str]:
    """Field names of a str.format template; raises ValueError for `{}`, `{0}` or an unbalanced brace."""
    names = set()
    try:
        for _, field, _, _ in string.Formatter().parse(text):
            if field is None:
                continue
            if not field or field.isdigit():
                raise ValueError("positional placeholder '{}' (name it, or double the braces for a literal)")
            names.add(field.split(".")[0].split("[")[0])
    except ValueError as e:
        raise ValueError(f"template is not a valid format string: {e}") from None
    return names


def check_placeholders(text: str, template: str) -> None:
    """Raise ValueError naming any placeholder of `text` that a template of `template`'s kind cannot fill."""
    kind = template.split("-")[0]
    allowed = PLACEHOLDERS.get(kind)
    if allowed is None:
        raise ValueError(f"template {template!r} takes no placeholders; text templates are "
                         f"{', '.join(k + '-*' for k in PLACEHOLDERS)}")
    unknown = sorted(placeholders_of(text) - allowed)
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} for a {kind} "
                         f"template; known: {', '.join('{' + a + '}' for a in sorted(allowed))}")


def render(template: Prompt, **values: object) -> Prompt:
    """`template` with its placeholders filled (name and hash stay those of the template: the hash says which
    template was used, the filled text differs per clip)."""
    try:
        return replace(template, user=template.user.format_map(values))
    except KeyError as e:  # a template passed check_placeholders but the caller lacks the value: a bug
        raise ValueError(f"prompt {template.name!r}: no value for placeholder {{{e.args[0]}}}") from None


def combined_hash(*prompts: Prompt | None) -> str:
    """One hash for a caption made with several prompts (frame, video, summary)."""
    blob = "\x00".join(p.hash for p in prompts if p is not None).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def get_prompt(name: str, text: str | None = None) -> Prompt:
    """The prompt to send: `text` when given (a custom prompt), else the named template."""
    if text is not None:
        if not text.strip():
            raise ValueError("caption.prompt_text is empty")
        return Prompt("custom", None, text)
    if name not in TEMPLATES:
        raise ValueError(f"caption.prompt: unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def get_text_prompt(name: str, text: str | None = None, key: str = "caption.summary") -> Prompt:
    """A text-LM template (summary-*, enhance-*, expand-*) or a custom `text` checked against its kind;
    errors name the config key (`key`.prompt / `key`.prompt_text)."""
    if name not in TEMPLATES or name.split("-")[0] not in PLACEHOLDERS:
        known = sorted(n for n in TEMPLATES if n.split("-")[0] in PLACEHOLDERS)
        raise ValueError(f"{key}.prompt: unknown text template {name!r}; known: {', '.join(known)}")
    base = TEMPLATES[name]
    if text is None:
        return base
    if not text.strip():
        raise ValueError(f"{key}.prompt_text is empty")
    try:
        check_placeholders(text, name)
    except ValueError as e:
        raise ValueError(f"{key}.prompt_text: {e}") from None
    return Prompt("custom", base.system, text)
