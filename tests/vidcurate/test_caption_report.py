"""Caption quality in `python -m vidcurate inspect`: statistics of captions runs read straight from
Parquet, the camera-motion check, and two runs side by side with contact sheets."""
from __future__ import annotations

import os

import pytest

from captioning.camera import mentions_camera
from vidcurate.caption_report import caption_report, list_runs, read_run, run_stats
from curation.storage import Storage
from curation.synth import Scene, make_video
from curation.tables import CLIPS, write_part


def caption(cid: str, text: str | None, **kw) -> dict:
    return {"clip_id": cid, "text": text, "flags": kw.get("flags", []), "error": kw.get("error"),
            "tokens_out": kw.get("tokens", 10), "text_tokens": kw.get("tokens", 10), "mode": "video", "model": "m"}


@pytest.fixture
def root(tmp_path) -> str:
    """6 clips (real mp4s), a scores table with camera types, runs `a` (with a broken-captioner
    duplicate, a flag and an error re-done later) and `b`."""
    st = Storage(str(tmp_path / "root"))
    rows = []
    for k in range(6):
        rel = f"clips/v/c{k}.mp4"
        os.makedirs(os.path.dirname(st.path(rel)), exist_ok=True)
        make_video(st.path(rel), [Scene(12, 2.0, k)], 96, 64, 12.0)
        rows.append({"clip_id": f"c{k}", "video_id": "v", "source": "s", "start_frame": 0, "end_frame": 12,
                     "start_s": 0.0, "end_s": 1.0, "width": 96, "height": 64, "fps": 12.0, "frames": 12, "bytes": 1,
                     "path": rel, "status": "ok", "reason": None})
    write_part(st, "clips", rows, schema=CLIPS)
    cams = ["pan_left", "static", "zoom_in", "unknown", None, "tilt_up"]
    write_part(st, "scores", [{"clip_id": f"c{k}", "video_id": "v", "source": "s", "path": f"clips/v/c{k}.mp4",
                               "start_s": 0.0, "end_s": 1.0, "frames_sampled": 4, "motion_mean": 0.5,
                               "motion_camera_type": c, "passed": True, "reasons": [], "error": None}
                              for k, c in enumerate(cams)])
    dup = "A red car drives on a road."
    write_part(st, "captions/a", [
        caption("c0", "The camera pans left across a green valley with a river."),
        caption("c1", dup), caption("c2", dup), caption("c3", dup, flags=["looping"]),
        caption("c4", None, error="HTTP 500"), caption("c5", "A woman walks down a busy street at night.")])
    write_part(st, "captions/a", [caption("c4", "A dog runs on a sandy beach.", tokens=30)])  # the re-run
    write_part(st, "captions/b", [caption(f"c{k}", f"Clip {k}: the camera stays still while a {k} moves.")
                                  for k in range(6)])
    return st.root


def test_mentions_camera():
    assert mentions_camera("The camera pans slowly to the left.", "pan_left")
    assert mentions_camera("A locked-off, static shot of a lake.", "static")
    assert not mentions_camera("A man walks.", "zoom_in")
    assert mentions_camera("The view is zooming in on a face.", "zoom_in")
    assert mentions_camera("Anything.", "unknown") is None and mentions_camera("x", None) is None


def test_run_statistics(root):
    st = Storage(root)
    t = read_run(st, "a")
    assert t.num_rows == 6  # c4's error row lost to its later caption
    s = run_stats(t, {"c0": "pan_left", "c1": "static", "c2": "zoom_in", "c5": "tilt_up"})
    assert (s["clips"], s["captioned"], s["errors"], s["flagged"]) == (6, 6, 0, 1)
    assert s["flags"] == {"looping": 1} and s["distinct"] == 4
    assert s["shared"] == [("a red car drives on a road", 3)] and s["shared_clips"] == 3
    assert s["openings"][0] == ("a red car", 3)
    assert s["camera_known"] == 4 and s["camera_mentioned"] == 1  # only c0 names its motion
    assert s["words"][0] == 7 and s["words"][-1] == 11 and s["tokens"][-1] == 30


def test_inspect_prints_caption_quality_and_compares_two_runs(root, tmp_path, capsys):
    from curation.__main__ import main

    out = tmp_path / "report.html"
    assert main(["inspect", root, "--html", str(out), "--compare", "a", "b"]) == 0
    text = capsys.readouterr().out
    assert "captions run a: 6 clips, 6 captioned, 0 errors, 1 flagged" in text
    assert "shared by >= 2 clips: 1 texts covering 3 clips (50.0%)" in text
    assert "camera motion named: 1 of 4 clips" in text  # c3 is "unknown", c4 has no type
    assert "compare a vs b: 6 clips captioned in both, 0 identical" in text
    page = out.read_text()
    assert "<h2 id=captions>" in page and "Clip 3: the camera stays still" in page
    assert page.count("<img src='data:image/jpeg;base64,") >= 6  # a contact sheet next to each pair
    assert list_runs(Storage(root)) == ["a", "b"]
    assert main(["inspect", root, "--no-html"]) == 0  # every run, no comparison
    assert "captions run b:" in capsys.readouterr().out
    lines, html = caption_report(Storage(root), runs=["b"])
    assert lines[0].startswith("captions run b:") and "Run b" in html and "compare" not in html
    assert main(["inspect", root, "--no-html", "--compare", "a", "nope"]) == 2
    assert "no captions run 'nope'" in capsys.readouterr().err
