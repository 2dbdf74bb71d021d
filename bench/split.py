"""Split-stage benchmark against PySceneDetect and ffmpeg, on the same input in one run.

    .venv/bin/python bench/split.py [VIDEO ...]

Default input: the 30 s 854x480 Sintel excerpt of ../shared/testdata (or a synthetic 30 s 854x480
video when that folder is absent). For each input it times:
  ours-split      this project's split stage (detect + frame-accurate libx264 clips, one decode pass)
  psd-cli         `scenedetect -i X detect-content split-video` (libx264 veryfast, crf 22)
  bare-decode     `ffmpeg -i X -f null -`
  ffmpeg-floor    one ffmpeg pass decoding and re-encoding the whole video with the same encoder settings
  psd-detect      PySceneDetect's detection alone (Python API, ContentDetector)
  ours-detect     our detection alone
and prints the cut lists and the ratios the targets are stated in.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curation.probe import probe_video  # noqa: E402
from curation.split import SplitParams, detect_scenes, split_video  # noqa: E402
from curation.storage import Storage  # noqa: E402

CRF, PRESET = 22, "veryfast"  # PySceneDetect split-video's libx264 settings


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def default_inputs() -> list[str]:
    td = os.environ.get("VIDEO_TESTDATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "testdata"))
    p = os.path.join(td, "sintel", "test_video_30s.mp4")
    if os.path.exists(p):
        return [p]
    from curation.synth import Scene, make_video

    out = os.path.join(tempfile.gettempdir(), "bench_split_synth.mp4")
    if not os.path.exists(out):
        make_video(out, [Scene(180, 2, k) for k in range(4)], 854, 480, 24.0)
    return [out]


def bench(src: str) -> None:
    scenedetect = shutil.which("scenedetect") or os.path.join(os.path.dirname(sys.executable), "scenedetect")
    row = probe_video(src)
    p = SplitParams(min_clip_s=0.01, max_clip_s=1e6, max_width=10000, max_height=10000, crf=CRF, preset=PRESET)
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        res["ours-split"], rows = timed(lambda: split_video(row, p, Storage(os.path.join(tmp, "ours")), tmp))
        ours_cuts = [r["start_frame"] for r in rows][1:]
        psd_out = os.path.join(tmp, "psd")
        res["psd-cli"], _ = timed(lambda: subprocess.run(
            [scenedetect, "-i", src, "-o", psd_out, "detect-content", "split-video", "-q", "--preset", PRESET,
             "-crf", str(CRF)], check=True, capture_output=True))
        res["bare-decode"], _ = timed(lambda: subprocess.run(
            ["ffmpeg", "-v", "error", "-i", src, "-f", "null", "-"], check=True))
        res["ffmpeg-floor"], _ = timed(lambda: subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", src, "-an", "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
             os.path.join(tmp, "floor.mp4")], check=True))
    from scenedetect import ContentDetector, detect

    res["psd-detect"], scenes = timed(lambda: detect(src, ContentDetector()))
    psd_cuts = [s[0].frame_num for s in scenes][1:]
    res["ours-detect"], det_cuts = timed(lambda: detect_scenes(src, p, row["fps"]))
    print(f"\n== {os.path.basename(src)}: {row['width']}x{row['height']}, {row['frames']} frames, "
          f"{row['duration_s']:.1f}s")
    print(f"cuts  ours: {ours_cuts}\ncuts  pyscenedetect: {psd_cuts}\nsame cuts: {ours_cuts == psd_cuts}"
          f" (detection-only run agrees: {det_cuts == ours_cuts})")
    for k, v in res.items():
        print(f"  {k:13s} {v:7.2f} s")
    print(f"ratio psd-cli / ours-split        = {res['psd-cli'] / res['ours-split']:.2f}x  (target >= 2)")
    print(f"ratio ours-split / ffmpeg-floor   = {res['ours-split'] / res['ffmpeg-floor']:.2f}x")
    print(f"ratio ours-detect / bare-decode   = {res['ours-detect'] / res['bare-decode']:.2f}x  (target <= 2)")
    print(f"ratio psd-detect / bare-decode    = {res['psd-detect'] / res['bare-decode']:.2f}x")


if __name__ == "__main__":
    for s in sys.argv[1:] or default_inputs():
        bench(s)
