"""Probe: metadata of real and synthetic files; bad files become error rows, never crashes."""
import os

import pytest

from curation.probe import ProbeStage, probe_video
from curation.stage import run_local
from curation.video import video_id_for


def test_probe_synthetic(synth_dir):
    r = probe_video(os.path.join(synth_dir, "cuts.mp4"))
    assert (r["frames"], r["width"], r["height"], r["codec"], r["vfr"], r["rotation"]) == (148, 160, 96, "h264", False, 0)
    assert r["fps"] == pytest.approx(24.0)
    assert r["duration_s"] == pytest.approx(148 / 24, abs=0.05)
    assert r["video_id"] == video_id_for(os.path.join(synth_dir, "cuts.mp4")) and r["error"] is None


def test_bad_inputs_become_error_rows(tmp_path, synth_dir):
    empty, text = tmp_path / "empty.mp4", tmp_path / "text.mp4"
    empty.write_bytes(b"")
    text.write_text("not a video at all\n" * 10)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(open(os.path.join(synth_dir, "cuts.mp4"), "rb").read()[:3000])
    good = os.path.join(synth_dir, "moving.mp4")
    rows = run_local([ProbeStage()], [{"source": str(p)} for p in (empty, text, trunc, good)])
    by = {os.path.basename(r["source"]): r for r in rows}
    assert "empty file" in by["empty.mp4"]["error"]
    assert "text.mp4" in by["text.mp4"]["error"] and "cannot open" in by["text.mp4"]["error"]
    assert by["trunc.mp4"]["error"]
    assert by["moving.mp4"]["error"] is None and by["moving.mp4"]["frames"] == 72


@pytest.mark.testdata
def test_probe_real_videos(testdata):
    j = lambda *p: os.path.join(testdata, *p)  # noqa: E731
    r = probe_video(j("decord", "video_90.mov"))
    assert (r["rotation"], r["display_width"], r["display_height"], r["frames"]) == (90, 320, 568, 3)
    r = probe_video(j("scenedetect", "issue-195-aspect-ratio.mp4"))
    assert r["sar"] == pytest.approx(1.4545, abs=1e-3) and r["frames"] == 628
    r = probe_video(j("scenedetect", "goldeneye-vfr-drop3.mp4"))
    assert r["vfr"] and r["frames"] == 160
    r = probe_video(j("decord", "flipping_a_pancake.mkv"))
    assert (r["width"], r["height"], r["frames"], r["has_audio"]) == (426, 240, 310, True)
    assert probe_video(j("scenedetect", "delayed_start.mp4"))["frames"] > 0
    rows = run_local([ProbeStage()], [{"source": j("decord", "corrupted.mp4")}])
    assert rows[0]["error"] and "corrupted.mp4" in rows[0]["error"]
