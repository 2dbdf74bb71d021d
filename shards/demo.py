"""A small synthetic dataset root (clips, scores, captions tables + clip files) for tests and the bench.

Built directly with curation.synth and curation.tables.write_part, so the shard writer and loader can
be exercised without running the split, filter and caption stages.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from curation import tables
from curation.storage import Storage
from curation.synth import Scene, make_video

SCORES = pa.schema([("clip_id", pa.string()), ("passed", pa.bool_()), ("reasons", pa.list_(pa.string())),
                    ("aesthetic", pa.float64()), ("motion", pa.float64())])
CAPTIONS = pa.schema([("clip_id", pa.string()), ("text", pa.string()), ("model", pa.string()),
                      ("engine", pa.string()), ("prompt_hash", pa.string()), ("flags", pa.list_(pa.string())),
                      ("error", pa.string())])


@dataclass
class Demo:
    """What was built, and which clips the shard writer must keep."""

    root: str
    kept: list[str] = field(default_factory=list)  # ok, passed, captioned in the latest run
    excluded: dict[str, str] = field(default_factory=dict)  # clip_id -> why it must not appear
    captions: dict[str, str] = field(default_factory=dict)  # kept clip -> caption text


def build(root: str, videos: int = 3, clips_per_video: int = 4, frames: int = 48, fps: float = 24.0,
          sizes: tuple[tuple[int, int], ...] = ((160, 96), (96, 96)), with_index: bool = True,
          exclusions: bool = True) -> Demo:
    """Write clips (mp4 + clips rows), scores and two captions runs ("old", then "new") under `root`.

    With `exclusions`, the first clips get every kind of reason to be left out: a dropped split piece,
    a failed filter, a caption error, no caption in the latest run, a flagged caption.
    """
    storage = Storage(root)
    demo = Demo(storage.root)
    clip_rows, score_rows, old_caps, new_caps = [], [], [], []
    n = 0
    for v in range(videos):
        vid = f"video{v:02d}"
        for c in range(clips_per_video):
            w, h = sizes[(v + c) % len(sizes)]
            start = c * frames
            cid = f"{vid}_{start}_{start + frames}"
            rel = f"clips/{vid}/{cid}.mp4"
            path = storage.local_path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            make_video(path, [Scene(frames, 2.0, v * 10 + c)], w, h, fps, with_index=with_index)
            status = "dropped" if exclusions and n == 0 else "ok"
            clip_rows.append({"clip_id": cid, "video_id": vid, "source": f"/raw/{vid}.mp4", "start_frame": start,
                              "end_frame": start + frames, "start_s": start / fps, "end_s": (start + frames) / fps,
                              "width": w, "height": h, "fps": fps, "frames": frames,
                              "bytes": os.path.getsize(path), "path": rel, "status": status,
                              "reason": "too short" if status != "ok" else None})
            passed = not (exclusions and n == 1)
            score_rows.append({"clip_id": cid, "passed": passed, "reasons": [] if passed else ["aesthetic < 4.5"],
                               "aesthetic": 5.0 + 0.1 * n, "motion": 1.0})
            text = f"a synthetic pattern drifting, clip {n} of {vid}"
            old_caps.append({"clip_id": cid, "text": "old caption", "model": "m0", "engine": "transformers",
                             "prompt_hash": "0" * 16, "flags": [], "error": None})
            cap = {"clip_id": cid, "text": text, "model": "tiny-vlm", "engine": "transformers",
                   "prompt_hash": "ab" * 8, "flags": [], "error": None}
            reason = None
            if status != "ok":
                reason = "dropped by split"
            elif not passed:
                reason = "filtered out"
            elif exclusions and n == 2:
                cap.update(text=None, error="engine timeout")
                reason = "caption error"
            elif exclusions and n == 3:
                cap = None
                reason = "no caption in the latest run"
            elif exclusions and n == 4:
                cap["flags"] = ["looping"]
                reason = "flagged caption"
            if cap is not None:
                new_caps.append(cap)
            if reason:
                demo.excluded[cid] = reason
            else:
                demo.kept.append(cid)
                demo.captions[cid] = text
            n += 1
    tables.write_part(storage, "clips", clip_rows, tables.CLIPS)
    tables.write_part(storage, "scores", score_rows, SCORES)
    tables.write_part(storage, "captions/old", old_caps, CAPTIONS)
    import time

    time.sleep(0.02)  # the "new" run is the latest by part modification time
    tables.write_part(storage, "captions/new", new_caps, CAPTIONS)
    return demo
