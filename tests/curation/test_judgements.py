"""Picture judgements on synthetic videos of known degradation: black borders (and the crop every other
scorer and the loader apply), sharpness, exposure, frozen frames, BRISQUE. Accuracy on real footage is
bench/judgement.py's job; these check the mechanics."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from curation.filter import build_stages
from curation.filters.config import FilterConfig

SCORERS = {"borders": {"type": "borders"}, "sharpness": {"type": "sharpness"}, "exposure": {"type": "exposure"},
           "frozen": {"type": "frozen"}, "quality": {"type": "quality", "frames": 2}}


def picture(width: int, height: int, frames: int, seed: int = 0, pan: float = 3.0) -> np.ndarray:
    """(frames, H, W, 3) uint8: a panning multi-scale noise texture (sharp detail, mid-grey level)."""
    import cv2

    rng = np.random.default_rng(seed)
    big_h, big_w = height + 16, width + int(pan * frames) + 16
    acc = np.zeros((big_h, big_w), np.float32)
    for k, amp in ((32, 1.0), (8, 0.6), (2, 0.4)):
        small = rng.random((max(2, big_h // k), max(2, big_w // k))).astype(np.float32)
        acc += amp * cv2.resize(small, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    acc = (acc - acc.min()) / (acc.max() - acc.min())
    tex = (40 + 175 * acc).astype(np.uint8)
    out = np.stack([tex[8:8 + height, int(j * pan):int(j * pan) + width] for j in range(frames)])
    return np.repeat(out[..., None], 3, axis=3)


def write(path: str, frames: np.ndarray, fps: float = 24.0) -> str:
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.height, st.width = frames.shape[1:3]
        st.pix_fmt, st.options = "yuv420p", {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def bars(frames: np.ndarray, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0) -> np.ndarray:
    """The picture shrunk into black bars of these sizes (pixels), frame size unchanged."""
    import cv2

    n, h, w = frames.shape[:3]
    out = np.zeros_like(frames)
    for i, f in enumerate(frames):
        out[i, top:h - bottom, left:w - right] = cv2.resize(f, (w - left - right, h - top - bottom),
                                                            interpolation=cv2.INTER_AREA)
    return out


def scores(tmp_path, videos: dict[str, np.ndarray], scorers: dict | None = None) -> dict[str, dict]:
    """Score each synthetic video through the filter stage's decode step (the production path)."""
    cfg = FilterConfig.model_validate({"scorers": scorers or SCORERS})
    dec, _, _ = build_stages(str(tmp_path), cfg)
    dec.setup()
    out = {}
    for name, frames in videos.items():
        write(str(tmp_path / f"{name}.mp4"), frames)
        row = dec.process_row({"clip_id": name, "path": f"{name}.mp4"})[0]
        out[name] = {k: v for k, v in row.items() if k != "_frames"}
    return out


def test_borders_found_and_other_scorers_see_only_the_picture(tmp_path):
    pic = picture(320, 192, 48)
    dark = (pic * 0.35).astype(np.uint8)  # a dark picture: dark is not a bar
    one_side = pic.copy()
    one_side[:, :, -40:] = 0  # one black side alone (a dark edge of the picture) is not a bar
    s = scores(tmp_path, {"plain": pic, "letterbox": bars(pic, top=24, bottom=24),
                          "pillarbox": bars(pic, left=40, right=40), "window": bars(pic, 16, 16, 32, 32),
                          "dark": dark, "one_side": one_side}, {k: v for k, v in SCORERS.items() if k != "quality"})
    assert s["plain"]["borders_kind"] == "none" and s["plain"]["borders_area"] == 0
    assert s["dark"]["borders_kind"] == "none" and s["one_side"]["borders_kind"] == "none"
    lb, pb, wb = s["letterbox"], s["pillarbox"], s["window"]
    assert lb["borders_kind"] == "letterbox" and pb["borders_kind"] == "pillarbox" and wb["borders_kind"] == "windowbox"
    # The box is within about one analysis pixel (1/144 of the short side) of the true bars, and never inside the picture.
    for got, true in ((lb["borders_top"], 24 / 192), (lb["borders_bottom"], 24 / 192), (pb["borders_left"], 40 / 320),
                      (pb["borders_right"], 40 / 320), (wb["borders_top"], 16 / 192), (wb["borders_left"], 32 / 320)):
        assert true - 0.002 <= got <= true + 2 / 144, (got, true)
    assert lb["borders_left"] == lb["borders_right"] == 0
    # Exposure and sharpness read the picture alone: bars change them little; uncropped, the bars would
    # put ~25% of the pixels at black.
    for k in ("letterbox", "pillarbox", "window"):
        assert s[k]["exposure_dark"] < 0.01, (k, s[k]["exposure_dark"])
        assert abs(s[k]["exposure_mean"] - s["plain"]["exposure_mean"]) < 0.03
        assert abs(s[k]["sharpness_blur"] - s["plain"]["sharpness_blur"]) < 0.1


def test_blur_exposure_and_frozen_separate_degraded_from_clean(tmp_path):
    import cv2

    pic = picture(320, 192, 48)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in pic])
    held = picture(320, 192, 120, seed=1)
    held[36:72] = held[36]  # a frame held 1.5 s at 24 fps inside a 5-s clip that moves
    still = np.repeat(pic[:1], 48, axis=0)  # nothing ever changes: a frozen picture
    # A tripod shot of a still scene: the same picture, but every frame has its own sensor noise.
    noise = np.random.default_rng(3).normal(0, 2.0, still.shape[:3])[..., None]
    tripod = np.clip(still + noise, 0, 255).astype(np.uint8)
    s = scores(tmp_path, {"clean": pic, "blur": blurred, "under": np.clip(pic * 0.3 - 20.0, 0, 255).astype(np.uint8),
                          "over": np.clip(pic.astype(np.float32) * 2.5, 0, 255).astype(np.uint8), "held": held,
                          "still": still, "tripod": tripod})
    clean = s["clean"]
    assert s["blur"]["sharpness_blur"] > clean["sharpness_blur"] + 0.15
    assert s["blur"]["quality_brisque"] > clean["quality_brisque"] + 10
    assert s["under"]["exposure_mean"] < 0.1 < 0.3 < clean["exposure_mean"] < 0.7 < s["over"]["exposure_mean"]
    assert s["under"]["exposure_dark"] > 0.1 > clean["exposure_dark"]
    assert s["under"]["exposure_highlight"] < 0.2 < 0.6 < clean["exposure_highlight"]
    assert s["over"]["exposure_bright"] > 0.2 > clean["exposure_bright"]
    assert clean["frozen_longest_s"] == 0 and clean["frozen_share"] == 0
    # Held 1.5 s: 2-3 sampled pairs; the first may still carry the encoder's refinement of the freshly cut-in
    # detailed frame (0.065 grey levels here, over eps): at least one held pair, above the 0.4-s default rule.
    assert s["held"]["frozen_longest_s"] >= 0.5 and s["held"]["frozen_jumps"] == 1  # the picture moves on
    assert s["still"]["frozen_longest_s"] >= 0.9 and s["still"]["frozen_share"] > 0.6
    assert s["tripod"]["frozen_longest_s"] == 0 and s["tripod"]["frozen_share"] == 0  # noise: a camera, not a freeze


def test_cards_are_not_judged_for_exposure_or_freezing_and_night_keeps_highlights(tmp_path):
    """A title card on black is not underexposed footage nor a frozen picture (the text filter's); a black
    screen is black footage; a dark scene with lit spots (night) keeps its highlights, unlike a dimmed one."""
    import cv2

    card = np.zeros((48, 192, 320, 3), np.uint8)
    for f in card:
        cv2.putText(f, "THE TITLE", (40, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    pic = picture(320, 192, 48)
    night = (pic * 0.5).astype(np.float32)
    night[:, 30:60, 50:90] = 240  # a lamp and a lit window: 3% of the frame
    night[:, 120:135, 190:240] = 220
    dimmed = (night * 0.2).astype(np.uint8)  # the same scene 2.3 stops darker: the lamps go dim too
    night = night.astype(np.uint8)
    s = scores(tmp_path, {"card": card, "black": np.zeros_like(card), "night": night, "dimmed": dimmed},
               {"exposure": {"type": "exposure"}, "frozen": {"type": "frozen"}})
    assert s["card"]["exposure_mean"] is None and s["card"]["frozen_longest_s"] is None
    assert s["black"]["exposure_mean"] < 0.01 and s["black"]["exposure_dark"] > 0.95
    assert s["night"]["exposure_mean"] < 0.3 and s["dimmed"]["exposure_mean"] < 0.06
    assert s["night"]["exposure_highlight"] > 0.5 > 0.235 > s["dimmed"]["exposure_highlight"]  # 0.235: the default


def test_sharpness_does_not_depend_on_resolution(tmp_path):
    """The same sharp picture at 144p and 576p reads about the same: frames are never upscaled for it."""
    import cv2

    big = picture(1024, 576, 12, pan=6.0)
    small = np.stack([cv2.resize(f, (256, 144), interpolation=cv2.INTER_AREA) for f in big])
    blur_big = np.stack([cv2.GaussianBlur(f, (0, 0), 0.008 * 576) for f in big])
    s = scores(tmp_path, {"big": big, "small": small, "blur_big": blur_big},
               {"sharpness": {"type": "sharpness"}})
    assert abs(s["big"]["sharpness_blur"] - s["small"]["sharpness_blur"]) < 0.1
    assert s["blur_big"]["sharpness_blur"] > max(s["big"]["sharpness_blur"], s["small"]["sharpness_blur"]) + 0.1


def test_brisque_shim_matches_the_package_on_rgb():
    """The repaired scaling gives the package's own score wherever the package still runs: compare
    with its features scaled the way it meant (float of each feature)."""
    import skimage.color
    import skimage.data

    from curation.filters.quality import brisque_model

    m = brisque_model()
    rgb = skimage.data.astronaut()[::2, ::2]
    gray = skimage.color.rgb2gray(rgb)
    ours = m.score_gray(gray)
    assert 0 <= ours < 40  # a clean photograph
    feats = np.concatenate((m.calculate_brisque_features(gray, 7, 7 / 6), m.calculate_brisque_features(
        __import__("cv2").resize(gray, None, fx=0.5, fy=0.5, interpolation=__import__("cv2").INTER_CUBIC), 7, 7 / 6)))
    lo, hi = np.asarray(m.scale_params["min_"], float), np.asarray(m.scale_params["max_"], float)
    by_hand = -1 + 2.0 / (hi - lo) * (np.array([float(np.ravel(f)[0]) for f in feats]) - lo)
    assert np.allclose(m.scale_features(feats), by_hand)
    noisy = np.clip(gray + np.random.default_rng(0).normal(0, 0.1, gray.shape), 0, 1)
    assert m.score_gray(noisy) > ours + 15


def test_brisque_scores_the_best_tile():
    """What BRISQUE misreads as distortion in part of a clean frame does not decide the frame: each frame's
    score is its best tile's; a picture distorted everywhere has no good tile."""
    import skimage.data

    from curation.filters.config import FilterConfig
    from curation.filters.quality import QualityScorer

    q = QualityScorer("quality", FilterConfig.model_validate({"scorers": {"quality": {"type": "quality"}}}).scorers["quality"])
    q.setup()
    clean = skimage.data.camera()[::2, ::2].astype(np.float64)  # 256 x 256
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255)
    mixed = noisy.copy()
    mixed[:128, :128] = clean[:128, :128]  # one clean quadrant
    whole = q.model.score_gray(mixed.astype(np.uint8))
    assert q.best_tile(mixed.astype(np.uint8)) < whole - 10
    assert q.best_tile(noisy.astype(np.uint8)) > q.best_tile(mixed.astype(np.uint8)) + 10


@pytest.mark.parametrize("bad", [{"borders": {"type": "borders", "limit": -1}},
                                 {"frozen": {"type": "frozen", "thresholds": {"longest": {"max": 1}}}},
                                 {"sharpness": {"type": "sharpness", "short_sid": 100}}])
def test_config_errors_name_the_key(bad):
    with pytest.raises(ValueError, match=rf"scorers\.{next(iter(bad))}"):
        FilterConfig.model_validate({"scorers": bad})


def test_every_new_score_reaches_the_inspect_page(tmp_path):
    """Scores rows of the new scorers, written as the filter stage writes them, give the inspect page a
    histogram (with its threshold handles) per numeric metric and a category view of the border kind."""
    from curation import tables
    from curation.filter import decide, scores_schema
    from vidcurate.inspect import build_page, load_scores, score_columns, summarize, table_counts
    from vidcurate.report.page import build_data
    from curation.storage import Storage

    pic = picture(192, 112, 24)
    cfg = FilterConfig.model_validate({"scorers": {**SCORERS, "frozen": {"type": "frozen", "thresholds": {
        "longest_s": {"max": 0.9}}}}})
    dec, sco, scorers = build_stages(str(tmp_path), cfg)
    dec.setup()
    rows = []
    for name, frames in {"plain": pic, "boxed": bars(pic, top=16, bottom=16)}.items():
        write(str(tmp_path / f"{name}.mp4"), frames)
        r = dec.process_row({"clip_id": name, "video_id": "v", "source": "s", "path": f"{name}.mp4",
                             "start_s": 0.0, "end_s": 1.0})[0]
        r.pop("_frames")
        rows.append(decide(r, scorers.rules()))
    st = Storage(str(tmp_path))
    tables.write_part(st, "scores", rows, scores_schema(scorers))
    t, rules = load_scores(st)
    new = {f"{s}_{m}" for s, ms in (("borders", ["left", "top", "right", "bottom", "area"]), ("sharpness", ["blur", "laplacian"]),
                                   ("exposure", ["mean", "dark", "bright", "highlight"]), ("frozen", ["longest_s", "share", "jumps"]),
                                   ("quality", ["brisque"])) for m in ms}
    assert new <= set(score_columns(t, "numeric")) and "borders_kind" in score_columns(t, "string")
    meta, _ = build_data(t, rules, score_columns(t, "numeric"), score_columns(t, "string"), st, None)
    cols = {c["name"]: c for c in meta["columns"]}
    assert new <= set(cols) and cols["frozen_longest_s"]["max"] == 0.9
    assert "borders_kind" in str(meta["categories"])
    page = build_page(st, t, rules, table_counts(st), summarize(t, rules), None).decode()
    assert "borders_kind" in page and "quality_brisque" in page
