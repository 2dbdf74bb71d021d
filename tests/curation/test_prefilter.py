"""Probe-level prefilters: metadata rules (no decode); a video breaking one is recorded with its reasons,
never split, and counted by inspect."""
from __future__ import annotations

import os

import pytest

from curation.prefilter import PrefilterConfig, prefilter_reasons
from curation.probe import ProbeStage
from curation.stage import run_local
from curation.synth import Scene, make_video


def test_rules_name_what_they_break():
    ok = {"display_width": 640, "display_height": 360, "fps": 24.0, "duration_s": 10.0, "bpp": 0.05}
    cfg = PrefilterConfig(min_short_side=128)
    assert prefilter_reasons(ok, cfg) == []
    assert prefilter_reasons({**ok, "display_width": 100, "display_height": 56}, cfg) == ["short_side<128"]
    assert prefilter_reasons({**ok, "display_width": 360, "display_height": 640}, cfg) == []  # portrait alike
    assert prefilter_reasons({**ok, "fps": 5.0}, cfg) == ["fps<10"]
    assert prefilter_reasons({**ok, "fps": 240.0}, cfg) == ["fps>121"]
    assert prefilter_reasons({**ok, "duration_s": 1.0}, cfg, min_clip_s=2.0) == ["duration_s<2"]
    assert prefilter_reasons({**ok, "duration_s": 1.0}, cfg) == []  # no minimum given
    assert prefilter_reasons({**ok, "display_width": 1280, "display_height": 360}, cfg) == ["aspect>3"]
    assert prefilter_reasons({**ok, "bpp": 0.001}, cfg) == ["bpp<0.003"]
    assert prefilter_reasons({**ok, "bpp": None, "fps": None}, cfg) == []  # unknown: cannot judge, keeps
    off = PrefilterConfig(min_short_side=None, min_fps=None, max_fps=None, max_aspect=None, min_bpp=None)
    assert prefilter_reasons({**ok, "display_width": 8, "display_height": 8, "fps": 1.0, "bpp": 0.0}, off) == []
    with pytest.raises(ValueError, match="min_fps"):
        PrefilterConfig(min_fps=0)


def test_probe_stage_records_reasons_and_bpp(tmp_path):
    small, ok = str(tmp_path / "small.mp4"), str(tmp_path / "ok.mp4")
    make_video(small, [Scene(48, 2.0, 1)], 64, 48, 24.0)
    make_video(ok, [Scene(48, 2.0, 2)], 160, 96, 8.0)
    stage = ProbeStage(prefilter=PrefilterConfig(min_short_side=96, min_fps=10), min_clip_s=2.0)
    rows = {os.path.basename(r["source"]): r for r in run_local([stage], [{"source": small}, {"source": ok}])}
    assert rows["small.mp4"]["reasons"] == ["short_side<96"]
    assert rows["ok.mp4"]["reasons"] == ["fps<10"]
    assert 0 < rows["small.mp4"]["bpp"] < 5


@pytest.mark.heavy
def test_prefiltered_videos_are_not_split_and_inspect_counts_them(ray_local, tmp_path):
    """Ray: probe and split stages as a run does them (80 s on the loaded 2-core machine: heavy)."""
    from curation import tables
    from vidcurate.inspect import table_counts, terminal_report
    from curation.pipeline import run_stages
    from curation.storage import Storage
    from vidcurate.flow import load_config

    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(str(raw / "tiny.mp4"), [Scene(72, 2.0, 1)], 48, 32, 24.0)
    make_video(str(raw / "good.mp4"), [Scene(72, 2.0, 2)], 160, 96, 24.0)
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines.yaml"),
                      [f"root={tmp_path / 'root'}", f"inputs=[{raw}/*.mp4]", "ray.progress=false"])
    run_stages(cfg, ["probe", "split"])
    st = Storage(str(tmp_path / "root"))
    videos = {os.path.basename(r["source"]): r for r in tables.read_table(st, "videos", tables.VIDEOS).to_pylist()}
    assert videos["tiny.mp4"]["reasons"] == ["short_side<64"] and videos["good.mp4"]["reasons"] == []
    clips = tables.read_table(st, "clips", tables.CLIPS).to_pylist()
    assert clips and {c["video_id"] for c in clips} == {videos["good.mp4"]["video_id"]}
    counts = table_counts(st)
    assert counts["videos"]["prefiltered"] == 1 and counts["videos"]["prefilter_reasons"] == {"short_side<64": 1}
    assert "1 prefiltered: short_side<64 1" in terminal_report(str(tmp_path), counts, {"clips": 0})
