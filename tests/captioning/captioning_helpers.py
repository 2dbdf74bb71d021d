"""Test data of the captioning tests (a module of its own: test files import it by name)."""
from __future__ import annotations

import os


def make_clip_root(root: str, n: int = 4, dropped: int = 1, seconds: float = 2.0, fps: float = 12.0) -> list[str]:
    """A dataset root holding `n` synthetic clips, their clips table and a scores table in which the
    last `dropped` clips did not pass. Returns the clip ids."""
    from curation.storage import Storage
    from curation.synth import Scene, make_video
    from curation.tables import CLIPS, write_part

    st = Storage(root)
    rows, scores = [], []
    frames = int(seconds * fps)
    for k in range(n):
        cid = f"vid0_{k * frames}_{(k + 1) * frames}"
        rel = f"clips/vid0/{cid}.mp4"
        os.makedirs(os.path.dirname(st.path(rel)), exist_ok=True)
        make_video(st.path(rel), [Scene(frames, 2.0, k + 1)], 96, 64, fps)
        rows.append({"clip_id": cid, "video_id": "vid0", "source": "synthetic", "start_frame": k * frames,
                     "end_frame": (k + 1) * frames, "start_s": k * seconds, "end_s": (k + 1) * seconds,
                     "width": 96, "height": 64, "fps": fps, "frames": frames, "bytes": os.path.getsize(st.path(rel)),
                     "path": rel, "status": "ok", "reason": None})
        scores.append({"clip_id": cid, "passed": k < n - dropped})
    write_part(st, "clips", rows, schema=CLIPS)
    write_part(st, "scores", scores)
    return [r["clip_id"] for r in rows]
