"""How captions name the camera motion the motion scorer detected (scores column `motion_camera_type`).

One rule for two readers: caption enhancement (captioning/enhance.py) states the detected motion in its
prompt and checks the rewrite names it, and the caption report (`python -m vidcurate inspect`) counts the
captions that name it.
"""
from __future__ import annotations

import re

from curation import tables
from curation.storage import Storage

CAMERA_COLUMN = "motion_camera_type"  # the motion scorer's column in the scores table

# Words that name each kind of camera motion in a caption (a type is matched by its first word:
# "pan_left" -> pan). A type not listed here is matched by its own first word and inflections.
CAMERA_WORDS: dict[str, tuple[str, ...]] = {
    "static": ("static", "still", "stationary", "fixed", "locked", "steady", "does not move", "motionless"),
    "pan": ("pan", "pans", "panning", "panned", "sweeps"),
    "tilt": ("tilt", "tilts", "tilting", "tilted"),
    "zoom": ("zoom", "zooms", "zooming", "zoomed", "push in", "pulls back", "pull back"),
    "track": ("track", "tracks", "tracking", "follows", "following", "dolly"),
    "dolly": ("dolly", "dollies", "tracking", "moves forward", "moves backward"),
    "roll": ("roll", "rolls", "rolling", "rotates"),
    "handheld": ("handheld", "hand-held", "shaky", "shakes"),
}
_UNKNOWN_CAMERA = {"", "unknown", "none", "null", "nan", "error", "mixed", "complex"}


def camera_phrase(camera_type: str | None) -> str | None:
    """'pan_left' -> 'pan left'; None for a missing or undetermined type."""
    if camera_type is None or str(camera_type).strip().lower() in _UNKNOWN_CAMERA:
        return None
    return re.sub(r"[_\-]+", " ", str(camera_type).strip().lower())


def mentions_camera(text: str | None, camera_type: str | None) -> bool | None:
    """Whether `text` names the camera motion `camera_type`; None when the type is unknown."""
    phrase = camera_phrase(camera_type)
    if phrase is None:
        return None
    head = phrase.split()[0]
    words = CAMERA_WORDS.get(head, (head,))
    low = (text or "").lower()
    return any(re.search(rf"\b{re.escape(w)}\w*\b" if " " not in w else re.escape(w), low) for w in words)


def camera_types(storage: Storage) -> dict[str, str]:
    """clip id -> detected camera motion type, from the scores table (empty when it has no such column)."""
    return tables.column_by_clip(storage, "scores", CAMERA_COLUMN)
