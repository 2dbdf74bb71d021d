"""Motion scorer, camera and scene apart: synthetic shots of known camera motion (pan, tilt, zoom,
roll, handheld shake), a small square moving over a still scene, a still frame; truths from the
synthetic camera matrices, compared at the frames the decoder sampled."""
from __future__ import annotations

import numpy as np
import pytest

from curation.filters.decode import decode_clip
from curation.filters.motion import MotionConfig, MotionScorer
from curation.synth import Camera, make_camera_video

W, H, FPS = 320, 192, 24.0
DIAG = float(np.hypot(W, H))
CASES = {  # name -> (camera, expected camera_type)
    "still": (Camera(), "static"),
    "pan": (Camera(pan=2.0), "pan"),
    "tilt": (Camera(tilt=1.5), "tilt"),
    "zoom": (Camera(zoom=0.006), "zoom"),
    "rotate": (Camera(rotate=0.3), "rotate"),
    "shake": (Camera(shake=6.0, seed=3), "shaky"),  # 6 px rms jitter a frame: ~2% of the width
    "square": (Camera(square=1.0), "static"),
}


def truth(mats: list[np.ndarray], times: np.ndarray) -> dict[str, float]:
    """camera (mean model displacement) and shake (frame-to-frame camera-velocity jitter) of the true camera."""
    idx = np.round(times * FPS).astype(int)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    cam = []
    for a, b, dt in zip(idx[:-1], idx[1:], np.diff(times)):
        rel = mats[b] @ np.linalg.inv(mats[a])  # frame a pixels -> frame b pixels
        d = (rel @ pts)[:2] - pts[:2]
        cam.append(np.hypot(*d).mean() / DIAG / dt)
    # shake is measured frame to frame: at each sample but the last, the camera velocity over frames i -> i+1
    # and i+1 -> i+2 (the scorer's burst of 3), and the RMS of its change / sqrt 2.
    jumps = []
    for i in idx[:-1]:
        v = [_centre_shift(mats[i + k + 1] @ np.linalg.inv(mats[i + k])) * FPS / DIAG for k in range(2)]
        jumps.append(np.sum((v[1] - v[0]) ** 2))
    return {"camera": float(np.mean(cam)), "shake": float(np.sqrt(np.mean(jumps) / 2))}


def _centre_shift(rel: np.ndarray) -> np.ndarray:
    return (rel @ np.array([W / 2, H / 2, 1.0]))[:2] - [W / 2, H / 2]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    sc = MotionScorer("motion", MotionConfig(type="motion"))
    sc.setup()
    d = tmp_path_factory.mktemp("motion")
    out = {}
    for name, (cam, _) in CASES.items():
        path = str(d / f"{name}.mp4")
        frames = 96 if cam.shake else 48  # shake is a spread: 8 sampled pairs instead of 4
        mats = make_camera_video(path, cam, frames=frames, width=W, height=H, fps=FPS)
        clip = decode_clip(path, sc.frame_specs(), sample_fps=2.0)
        out[name] = (sc.score(clip), truth(mats, clip.times))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_known_motion(scored, name):
    got, true = scored[name]
    assert got["camera_type"] == CASES[name][1], got
    for m in ("camera", "object", "moving_area", "shake", "level", "mean"):
        assert isinstance(got[m], float) and got[m] >= 0
    if name in ("still", "square"):
        assert got["camera"] < 0.002 and got["shake"] < 0.002  # the camera does not move
    else:
        assert got["camera"] == pytest.approx(true["camera"], rel=0.25)
        assert got["object"] < 0.25 * got["camera"]  # a rigid scene: nothing moves but the camera
    if name == "shake":
        assert got["shake"] == pytest.approx(true["shake"], rel=0.25)
    elif name != "still":
        assert got["shake"] < 0.1 * max(got["camera"], got["object"])  # steady
    if name == "square":  # 1 px/frame at 24 fps over a still scene; the square is 3.75% of the frame
        assert got["object"] == pytest.approx(1.0 * FPS / DIAG, rel=0.25)
        swept = (48 * (48 + 12)) / (W * H)  # where it is in either frame of a sampled pair
        assert 0.8 * swept <= got["moving_area"] <= 2.0 * swept
        assert got["mean"] < 0.01 and got["level"] > 0.05  # the old mean calls it still; level does not
    if name == "still":
        assert got["level"] < 0.002 and got["moving_area"] < 0.01 and got["still_share"] == 1.0


def test_default_rules_keep_walkers_and_still_shots_drop_shaky(scored):
    from vidcurate.flow import load_config
    import os

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(repo, "pipelines.yaml"), check_inputs=False)
    m = cfg.filter.scorers["motion"]
    sc = MotionScorer("motion", m)
    verdict = {}
    for name, (got, _) in scored.items():
        row = {f"motion_{k}": v for k, v in got.items()}
        verdict[name] = [r for r in (rule.reason(row.get(rule.column)) for rule in sc.rules()) if r]
    # A still shot is not a motion reason by default (a static camera is training data); a frozen picture
    # is the frozen scorer's (tests/curation/test_judgements.py). The floor is still there to switch on.
    assert verdict["still"] == [] and "motion_level" not in {r.column for r in sc.rules()}
    floor = MotionScorer("motion", MotionConfig.model_validate({**m.model_dump(), "thresholds": {"level": {"min": 0.01}}}))
    assert floor.rules()[-1].reason(scored["still"][0]["level"]).startswith("motion_level<")
    assert verdict["square"] == [] and verdict["pan"] == [] and verdict["zoom"] == []  # walkers on a still camera stay
    assert any(r.startswith("motion_shake>") for r in verdict["shake"])


def test_labels_cannot_be_thresholded():
    with pytest.raises(ValueError, match="camera_type.*labels"):
        MotionScorer("motion", MotionConfig(type="motion", thresholds={"camera_type": {"min": 1}}))


def test_schema_has_the_label_column():
    import pyarrow as pa

    from curation.filter import scores_schema
    from curation.filters.base import ScorerSet

    s = scores_schema(ScorerSet([MotionScorer("motion", MotionConfig(type="motion"))]))
    assert s.field("motion_camera_type").type == pa.string()
    for m in ("camera", "object", "moving_area", "shake", "mean", "min_patch", "still_share"):
        assert s.field(f"motion_{m}").type == pa.float32()
