"""Salvage: a video whose decoding fails mid-stream keeps the clips before the damage (flagged truncated),
and the videos table names the file and the decode error."""
import os

from curation import tables
from curation.config import load_config
from curation.pipeline import run_stages
from curation.probe import probe_video
from curation.config import SplitConfig
from curation.split import split_video
from curation.storage import Storage
from curation.synth import Scene, make_video, read_index_marker
from curation.video import iter_frames


def damaged_copy(src: str, dst: str, at: float = 0.5, n: int = 2000) -> None:
    """`src` with `n` zero bytes at fraction `at` of the file (inside the video data of a small mp4)."""
    d = bytearray(open(src, "rb").read())
    i = int(len(d) * at)
    d[i:i + n] = bytes(n)
    with open(dst, "wb") as f:
        f.write(d)


def test_probe_keeps_a_video_damaged_mid_stream(tmp_path):
    src, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    make_video(src, [Scene(48, 2, 1), Scene(48, 3, 7)], 128, 80, 24.0)
    damaged_copy(src, bad)
    row = probe_video(bad)
    assert row["truncated"] is True and 24 < row["frames"] < 96
    assert row["error"].startswith(f"{bad}: decode failed after {row['frames']} frames") and "InvalidData" in row["error"]
    assert probe_video(src)["truncated"] is False and probe_video(src)["error"] is None


def test_split_keeps_clips_before_the_damage(tmp_path):
    src, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    make_video(src, [Scene(48, 2, 1), Scene(48, 3, 7)], 128, 80, 24.0, with_index=True)
    damaged_copy(src, bad, at=0.7)  # damage inside the second shot: the first is whole
    row = probe_video(bad)
    clips = split_video(row, SplitConfig(min_clip_s=0.1, max_clip_s=1000), Storage(str(tmp_path / "root")),
                        str(tmp_path))
    ok = [c for c in clips if c["status"] == "ok"]
    assert [(c["start_frame"], c["end_frame"]) for c in ok][0] == (0, 48)
    assert ok[-1]["end_frame"] <= row["frames"] < 96
    assert all(c["reason"].startswith("truncated: decode stopped at frame") for c in ok)
    first = [read_index_marker(f) for _, _, f in iter_frames(str(tmp_path / "root" / ok[0]["path"]))]
    assert first == list(range(48))  # the salvaged frames are the source's frames, in order


def test_run_salvages_and_does_not_reprobe(ray_local, tmp_path):
    raw = tmp_path / "raw"
    os.makedirs(raw)
    make_video(str(raw / "good.mp4"), [Scene(48, 2, 1), Scene(48, 3, 7)], 128, 80, 24.0)
    damaged_copy(str(raw / "good.mp4"), str(raw / "bad.mp4"), at=0.7)
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                        "split: {min_clip_s: 0.5}\n")
    cfg = load_config(str(cfg_path))
    ctx = run_stages(cfg, ["probe", "split"])
    st = Storage(cfg.root)
    videos = {os.path.basename(v["source"]): v for v in tables.read_table(st, "videos", tables.VIDEOS).to_pylist()}
    assert videos["bad.mp4"]["truncated"] and "decode failed after" in videos["bad.mp4"]["error"]
    clips = [c for c in tables.read_table(st, "clips", tables.CLIPS).to_pylist() if c["status"] == "ok"]
    bad = [c for c in clips if c["video_id"] == videos["bad.mp4"]["video_id"]]
    assert bad and all(c["reason"].startswith("truncated:") for c in bad) and bad[0]["end_frame"] == 48
    assert ctx.stages["probe"]["counts"]["truncated"] == 1 and ctx.stages["probe"]["counts"]["errors"] == 0
    again = run_stages(cfg, ["probe", "split"])
    assert again.stages["probe"]["counts"]["probed"] == 0 and again.stages["split"]["counts"]["split"] == 0
