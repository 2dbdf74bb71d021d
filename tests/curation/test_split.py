"""Split: cuts where the synthetic video has them, frame-accurate clips, clip rules, real videos."""
import os

import av
import numpy as np
import pytest

from curation.probe import probe_video
from curation.config import SplitConfig
from curation.split import split_video
from curation.storage import Storage
from curation.synth import Scene, make_video, read_index_marker
from curation.video import iter_frames


def split(src: str, root: str, tmp: str, **kw) -> list[dict]:
    params = SplitConfig(**{"min_clip_s": 0.1, "max_clip_s": 1000, **kw})
    return split_video(probe_video(src), params, Storage(root), tmp)


def frames_of(path: str) -> list[np.ndarray]:
    return [f for _, _, f in iter_frames(path)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_cuts_and_frame_accuracy(tmp_path):
    src = str(tmp_path / "cuts.mp4")  # frames carry their own index in a corner marker
    assert make_video(src, [Scene(48, 2, 1), Scene(60, 3, 2), Scene(40, 1, 3)], 160, 96, 24.0, with_index=True) == [48, 108]
    rows = split(src, str(tmp_path / "root"), str(tmp_path))
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 48), (48, 108), (108, 148)]
    source = frames_of(src)
    for r in rows:
        clip = frames_of(str(tmp_path / "root" / r["path"]))
        assert len(clip) == r["frames"] == r["end_frame"] - r["start_frame"]
        # first and last frames are the source frames at the clip's start / end index, not neighbours
        assert psnr(clip[0], source[r["start_frame"]]) > 35
        assert psnr(clip[-1], source[r["end_frame"] - 1]) > 35
        assert [read_index_marker(f) for f in clip] == list(range(r["start_frame"], r["end_frame"]))
        assert r["start_s"] == pytest.approx(r["start_frame"] / 24, abs=1e-3)
        assert r["clip_id"].endswith(f"_{r['start_frame']:07d}_{r['end_frame']:07d}")


def test_clip_rules(tmp_path):
    src = str(tmp_path / "v.mp4")
    make_video(src, [Scene(24, 2, 1), Scene(120, 2, 2), Scene(30, 2, 3)], 96, 64, 24.0)
    rows = split(src, str(tmp_path / "root"), str(tmp_path), min_clip_s=1.5, max_clip_s=2.0, trim_frames=2)
    got = [(r["start_frame"], r["end_frame"], r["status"]) for r in rows]
    # scene 1 [0,24) trimmed at its end -> 22 frames < 1.5 s: dropped; scene 2 [24,144) trimmed to [26,142)
    # and windowed by 48 frames; scene 3 [144,174) trimmed at its start -> [146,174) 28 frames: dropped.
    assert got == [(0, 22, "dropped"), (26, 74, "ok"), (74, 122, "ok"), (122, 142, "dropped"), (146, 174, "dropped")]
    assert all("too short" in r["reason"] for r in rows if r["status"] == "dropped")
    assert all(r["path"] is None for r in rows if r["status"] == "dropped")
    assert sorted(os.listdir(tmp_path / "root" / "clips" / rows[0]["video_id"])) == sorted(
        os.path.basename(r["path"]) for r in rows if r["status"] == "ok")


def test_stride_and_resolution_and_fps(tmp_path):
    src = str(tmp_path / "v.mp4")
    make_video(src, [Scene(96, 2, 1)], 320, 192, 24.0)
    rows = split(src, str(tmp_path / "root"), str(tmp_path), detector="stride", stride_s=1.0,
                 max_width=160, max_height=160, max_fps=12)
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 24), (24, 48), (48, 72), (72, 96)]
    for r in rows:
        with av.open(str(tmp_path / "root" / r["path"])) as c:
            st = c.streams.video[0]
            assert (st.codec_context.width, st.codec_context.height) == (160, 96)
            assert sum(1 for _ in c.decode(st)) == r["frames"] == 12


@pytest.mark.testdata
@pytest.mark.parametrize("name,cuts", [("testvideo.mp4", [30, 180, 394]), ("fades.mp4", [])])
def test_real_cuts_match_pyscenedetect(testdata, tmp_path, name, cuts):
    rows = split(os.path.join(testdata, "scenedetect", name), str(tmp_path / "root"), str(tmp_path))
    assert [r["start_frame"] for r in rows][1:] == cuts


@pytest.mark.testdata
def test_real_vfr_cut_times(testdata, tmp_path):
    rows = split(os.path.join(testdata, "scenedetect", "goldeneye-vfr-drop3.mp4"), str(tmp_path / "r"), str(tmp_path))
    starts = [r["start_s"] for r in rows][1:]
    assert len(starts) == 2
    assert starts[0] == pytest.approx(3.754, abs=1 / 23.976) and starts[1] == pytest.approx(8.759, abs=1 / 23.976)


@pytest.mark.testdata
def test_real_rotation_upright(testdata, tmp_path):
    rows = split(os.path.join(testdata, "decord", "video_90.mov"), str(tmp_path / "r"), str(tmp_path), min_clip_s=0.01)
    (r,) = rows
    assert (r["width"], r["height"]) == (320, 568)
    clip = frames_of(str(tmp_path / "r" / r["path"]))
    src = frames_of(os.path.join(testdata, "decord", "video_90.mov"))
    assert clip[0].shape == src[0].shape == (568, 320, 3) and psnr(clip[0], src[0]) > 30


@pytest.mark.testdata
def test_real_adaptive_detector(testdata, tmp_path):
    rows = split(os.path.join(testdata, "scenedetect", "testvideo.mp4"), str(tmp_path / "r"), str(tmp_path),
                 detector="adaptive", threshold=3.0, max_width=320, max_height=320)
    assert [r["start_frame"] for r in rows][1:] == [30, 180, 394, 691]


def _pts_video(path: str, pts: list[int], rate: int = 24) -> None:
    """A video whose frames carry the given pts (time base 1/rate): late starts, gaps."""
    from fractions import Fraction

    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=rate)
        st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"
        st.time_base = st.codec_context.time_base = Fraction(1, rate)
        for k, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((64, 96, 3), (k * 7) % 250, np.uint8), format="rgb24")
            f.pts, f.time_base = p, Fraction(1, rate)
            for pkt in st.encode(f):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def _source_times(path: str) -> list[float]:
    with av.open(path) as c:
        return [float(f.time) for f in c.decode(video=0)]


def test_clip_times_are_the_source_timestamps(tmp_path):
    # The stream starts one frame late and skips 3 frames after frame 30: index / fps would drift.
    src = str(tmp_path / "late.mp4")
    _pts_video(src, [1 + k + (3 if k >= 30 else 0) for k in range(72)])
    times = _source_times(src)
    assert times[0] > 0.04 and times[30] - times[29] > 0.16  # the file really is late and gapped
    rows = split(src, str(tmp_path / "root"), str(tmp_path), detector="stride", stride_s=1.0)
    assert [(r["start_frame"], r["end_frame"]) for r in rows][:2] == [(0, 24), (24, 45)]
    for r in rows:
        assert r["start_s"] == pytest.approx(times[r["start_frame"]], abs=1e-6)
        end = times[r["end_frame"]] if r["end_frame"] < len(times) else times[-1] + 1 / 24
        assert r["end_s"] == pytest.approx(end, abs=1e-6)
        # the clip file keeps the source's frame spacing
        clip = _source_times(str(tmp_path / "root" / r["path"]))
        src_t = times[r["start_frame"]:r["end_frame"]]
        assert np.allclose(np.diff(clip), np.diff(src_t), atol=1e-3)


def test_failed_split_is_retried_next_run(ray_local, tmp_path):
    from curation import tables
    from curation.config import load_config
    from curation.pipeline import run_stages

    raw = tmp_path / "raw"
    raw.mkdir()
    good, flaky = str(raw / "a.mp4"), str(raw / "b.mp4")
    for p in (good, flaky):
        make_video(p, [Scene(48, 2, 1), Scene(48, 3, 2)], 96, 64, 24.0)
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\nray: {{num_cpus: 2, progress: false}}\n"
                        "split: {min_clip_s: 0.5}\n")
    cfg = load_config(str(cfg_path))
    run_stages(cfg, ["probe"])
    data = open(flaky, "rb").read()
    open(flaky, "wb").write(b"\0" * 4096)  # broken between probe and split
    ctx = run_stages(cfg, ["split"])
    assert ctx.stages["split"]["counts"]["errors"] == 1
    assert any("b.mp4" in e for e in ctx.stages["split"]["errors"])
    open(flaky, "wb").write(data)  # fixed: the next run retries it and only it
    ctx = run_stages(cfg, ["split"])
    c = ctx.stages["split"]["counts"]
    assert (c["skipped"], c["retried"], c["split"], c["clips"], c["errors"]) == (1, 1, 1, 2, 0)
    assert ctx.stages["split"]["errors"] == []
    rows = tables.read_table(Storage(cfg.root), "clips", tables.CLIPS).to_pylist()
    assert sorted((os.path.basename(r["source"]), r["start_frame"]) for r in rows if r["status"] == "ok") == [
        ("a.mp4", 0), ("a.mp4", 48), ("b.mp4", 0), ("b.mp4", 48)]
    ctx = run_stages(cfg, ["split"])  # and then nothing is left to do
    assert ctx.stages["split"]["counts"]["split"] == 0 and ctx.stages["split"]["counts"]["retried"] == 0
