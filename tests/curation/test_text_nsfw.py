"""Text (RapidOCR PP-OCRv4 detection) and NSFW (NudeNet 320n) scorers with the real models the wheels
ship: rendered text of known size gives the expected area, natural and synthetic videos score ~0,
the NSFW score equals NudeNet's own detections on real frames, rules, columns and config errors.
No explicit imagery anywhere: the NSFW tests use ordinary frames only."""
from __future__ import annotations

import os

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageFont

from curation import tables
from curation.filter import build_stages, scores_schema, todo_clips
from curation.filters.config import FilterConfig
from curation.filters.decode import decode_clip
from curation.stage import run_local
from curation.storage import Storage
from curation.synth import Scene, _texture, make_video

W, H = 640, 360

# name -> text lines (x, y, font size, text); what a clip of each kind shows on every frame.
TEXT = {
    "none": [],
    "subtitle": [(150, 296, 17, "I told you we should have left the house"),
                 (170, 322, 17, "before the storm came in")],
    "logo": [(575, 12, 16, "TV5")],
    "title": [(90, 130, 84, "THE END")],
    "slide": [(40, 25 + 44 * i, 26, f"- point {i}: more words on the slide") for i in range(7)],
}


def draw(kind: str, seed: int = 3) -> tuple[np.ndarray, float]:
    """A frame with TEXT[kind] drawn in PIL's default font, and the share of it the text's bboxes cover."""
    img = Image.fromarray(_texture(seed, H, W)[:H, :W])
    d = ImageDraw.Draw(img)
    mask = np.zeros((H, W), bool)
    for x, y, size, text in TEXT[kind]:
        font = ImageFont.load_default(size=size)
        d.text((x, y), text, font=font, fill="white", stroke_width=2, stroke_fill="black")
        x0, y0, x1, y1 = d.textbbox((x, y), text, font=font, stroke_width=2)
        mask[y0:y1, x0:x1] = True
    return np.asarray(img), float(mask.mean())


def write_clip(path: str, frame: np.ndarray, frames: int = 24) -> None:
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for _ in range(frames):
            for p in st.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def clip_row(cid: str, path: str) -> dict:
    return dict(clip_id=cid, video_id="vid", source="/src.mp4", start_frame=0, end_frame=24, start_s=0.0, end_s=1.0,
                width=W, height=H, fps=24.0, frames=24, bytes=1, path=path, status="ok", reason=None)


@pytest.fixture(scope="module")
def text_root(tmp_path_factory) -> tuple[str, dict[str, float]]:
    """One 1 s clip per TEXT kind (the text on every frame) and the expected text area of each."""
    root = str(tmp_path_factory.mktemp("text"))
    os.makedirs(os.path.join(root, "clips"))
    rows, expected = [], {}
    for kind in TEXT:
        frame, expected[kind] = draw(kind)
        write_clip(os.path.join(root, "clips", f"{kind}.mp4"), frame)
        rows.append(clip_row(kind, f"clips/{kind}.mp4"))
    tables.write_part(Storage(root), "clips", rows, tables.CLIPS)
    return root, expected


def score(root: str, cfg: FilterConfig) -> dict[str, dict]:
    dec, sco, _ = build_stages(root, cfg)
    todo, _ = todo_clips(Storage(root), False)
    return {r["clip_id"]: r for r in run_local([dec, sco], todo)}


def text_cfg(**kw) -> FilterConfig:
    return FilterConfig(scorers={"ocr": {"type": "text", "frames": 1, **kw,
                                                           "thresholds": {"area_mean": {"max": 0.06}}}})


@pytest.fixture(scope="module")
def cpu_rows(text_root) -> dict[str, dict]:
    return score(text_root[0], text_cfg())


def test_text_area_of_rendered_text_and_default_rule(text_root, cpu_rows):
    root, expected = text_root
    rows = cpu_rows
    assert rows["none"]["ocr_area_mean"] == 0.0 and rows["none"]["ocr_boxes_max"] == 0
    for kind in ("subtitle", "title", "slide"):  # (the logo's few pixels get a relatively wide margin: 1.6x)
        got = rows[kind]["ocr_area_mean"]
        # Detection boxes are the text lines with DBNet's margin: 1.0-1.4x the glyphs' bounding boxes here.
        assert expected[kind] * 0.9 <= got <= expected[kind] * 1.5, (kind, got, expected[kind])
        assert rows[kind]["ocr_boxes_max"] == len(TEXT[kind])
        assert rows[kind]["ocr_area_max"] == pytest.approx(got)  # one scored frame: mean = max
    assert rows["subtitle"]["passed"] is True and rows["logo"]["passed"] is True
    assert 0 < rows["logo"]["ocr_area_mean"] < 0.01
    for kind in ("title", "slide"):
        assert rows[kind]["passed"] is False and rows[kind]["reasons"] == ["ocr_area_mean>0.06"]


def test_text_model_step_and_recognition(text_root, cpu_rows):
    """step: model ships only `frames` frames to the actor and gives the same areas; recognize reads the text."""
    root, _ = text_root
    cfg = text_cfg(step="model", recognize=True, frames=2)
    dec, sco, scorers = build_stages(root, cfg)
    assert dec.ship == {"rgb24480": 2} and sco.stateful
    assert scores_schema(scorers).field("ocr_text").type == pa.string()
    todo, _ = todo_clips(Storage(root), False)
    rows = {r["clip_id"]: r for r in run_local([dec, sco], [t for t in todo if t["clip_id"] in ("none", "title")])}
    assert rows["title"]["ocr_area_mean"] == pytest.approx(cpu_rows["title"]["ocr_area_mean"], abs=1e-6)
    assert "THE END" in rows["title"]["ocr_text"].upper() and rows["none"]["ocr_text"] == ""


def test_natural_and_synthetic_videos_have_no_text(tmp_path, testdata):
    from curation.filters.text import TextScorer

    cfg = text_cfg(frames=2).scorers["ocr"]
    sc = TextScorer("ocr", cfg)
    sc.setup()
    make_video(str(tmp_path / "syn.mp4"), [Scene(48, 2.0, 1), Scene(48, 0.0, 2)], 320, 192, 24.0)
    for path in ("bbb/bigbuckbunny.mp4", "decord/flipping_a_pancake.mkv", str(tmp_path / "syn.mp4")):
        clip = decode_clip(os.path.join(testdata, path), sc.frame_specs(), 1.0, 64)
        got = sc.score(clip)
        # Near zero against the 0.06 threshold (the pancake's striped shirt gets one 3% box on one frame).
        assert got["area_mean"] < 0.02 and got["area_max"] < 0.04, (path, got)


def moving_clip(path: str, kind: str, frames: int = 24) -> None:
    """TEXT[kind] drawn on every frame of a panning texture (overlays stay put while the picture moves)."""
    tex = _texture(3, H, W)  # (2H, 2W, 3)
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for j in range(frames):
            img = Image.fromarray(np.ascontiguousarray(tex[2 * j:2 * j + H, 3 * j:3 * j + W]))
            d = ImageDraw.Draw(img)
            for x, y, size, text in TEXT[kind]:
                d.text((x, y), text, font=ImageFont.load_default(size=size), fill="white", stroke_width=2,
                       stroke_fill="black")
            for p in st.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_text_kinds_band_persist_corner(text_root, tmp_path):
    """Per-kind metrics on rendered overlays over a moving picture: subtitles sit in the bottom band, a corner
    logo stays put in its corner, a title stays put mid-frame, no text gives none of them. On a still,
    detailed picture a line that stays put may be scene text (a screen, a sign): not counted."""
    from curation.filters.text import TextScorer

    sc = TextScorer("ocr", FilterConfig(scorers={"ocr": {"type": "text", "frames": 2}}).scorers["ocr"])
    sc.setup()
    got = {}
    for k in ("none", "subtitle", "logo", "title"):
        moving_clip(str(tmp_path / f"{k}.mp4"), k)
        got[k] = sc.score(decode_clip(str(tmp_path / f"{k}.mp4"), sc.frame_specs(), 2.0, 64))
    assert got["subtitle"]["band"] == 1.0 and got["title"]["band"] == 0.0 and got["logo"]["band"] == 0.0
    assert got["logo"]["corner"] == 1.0 and got["logo"]["persist"] == 1.0  # "TV5": ambiguous shape, read by the recogniser
    assert got["title"]["persist"] == 1.0 and got["title"]["corner"] == 0.0
    assert all(v == 0 for v in got["none"].values())
    assert sc.det.limit_side_len == H  # 360p clips: the detector ran at 360, never upscaled to 480
    still = sc.score(decode_clip(os.path.join(text_root[0], "clips", "logo.mp4"), sc.frame_specs(), 2.0, 64))
    assert still["boxes_max"] == 1 and still["persist"] == 0.0 and still["corner"] == 0.0


def scene_text_clip(path: str, kind: str, shift: tuple[int, int], frames: int = 24) -> None:
    """TEXT[kind] painted on the scene (the texture), filmed by a camera that jumps by `shift` px halfway:
    the text moves with the picture, a little (it still overlaps itself: IoU > 0.4)."""
    tex = Image.fromarray(_texture(3, H, W))
    d = ImageDraw.Draw(tex)
    for x, y, size, text in TEXT[kind]:
        d.text((x + 40, y + 40), text, font=ImageFont.load_default(size=size), fill="white", stroke_width=2,
               stroke_fill="black")
    tex = np.asarray(tex)
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for j in range(frames):
            ox, oy = (40 + shift[0], 40 + shift[1]) if j >= frames // 4 else (40, 40)
            img = np.ascontiguousarray(tex[oy:oy + H, ox:ox + W])
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_scene_text_moving_with_the_camera_is_not_an_overlay(tmp_path):
    """Camera-compensated stability: text that moves with the camera (a sign in a jittered shot) stays close
    enough to itself to pass the IoU test, but the camera fit (RANSAC on tracked corners) predicts where it
    went: it is scene text, neither persistent nor in the band. Overlays on a panning picture (the clips of
    test_text_kinds_band_persist_corner) still stay put; with camera: false the old IoU test is fooled."""
    from curation.filters.text import TextScorer, _camera, _persistent

    cfg = FilterConfig(scorers={"ocr": {"type": "text", "frames": 2}}).scorers["ocr"]
    sc = TextScorer("ocr", cfg)
    sc.setup()
    off = TextScorer("ocr", cfg.model_copy(update={"camera": False}))
    off.setup()
    for kind, shift in (("subtitle", (-12, -4)), ("title", (-24, -10))):
        scene_text_clip(str(tmp_path / f"{kind}.mp4"), kind, shift)
        clip = decode_clip(str(tmp_path / f"{kind}.mp4"), sc.frame_specs(), 2.0, 64)
        got, fooled = sc.score(clip), off.score(clip)
        assert fooled["persist"] == 1.0, (kind, fooled)  # the IoU test alone: "stays put" (what GoldenEye did)
        assert got["persist"] == 0.0 and got["band"] == 0.0 and got["boxes_max"] >= 1, (kind, got)
    moving_clip(str(tmp_path / "logo.mp4"), "logo")
    frames = decode_clip(str(tmp_path / "logo.mp4"), sc.frame_specs(), 2.0, 64).frames[sc.frame_specs()[0].key][:2]
    cams = _camera(frames.astype(np.float32).mean(axis=3), [np.zeros((0, 4))] * 2)
    # moving_clip pans the texture by (3, 2) px a frame: 12 frames between the two samples, the picture
    # moves the other way by (36, 24) px at 360p, (48, 32) in these frames decoded at 480.
    assert cams[0, 1][:2, 2] == pytest.approx([-48, -32], abs=1.0) and cams[1, 0][:2, 2] == pytest.approx([48, 32], abs=1.0)
    assert cams[0, 1][:2, :2] == pytest.approx(np.eye(2), abs=0.01)  # no zoom, no roll
    rects = [np.array([[575.0, 12, 605, 30]])] * 2  # a box that stays put while the camera moves: an overlay
    stays, scene = _persistent(rects, 0.4, cams, 2.0)
    assert stays[0].all() and not scene[0].any()
    moved = [rects[0], rects[0] + [-48, -32, -48, -32]]  # ... and one that the camera took along: scene text
    stays, scene = _persistent(moved, 0.0, cams, 2.0)
    assert scene[0].all() and scene[1].all() and not stays[0].any()


def grainy_still_clip(path: str, kind: str, overlay: bool, frames: int = 24) -> None:
    """A still, detailed picture (the texture from a tripod) whose pixels change a little from frame to frame
    (grain: gaussian noise, sigma 1.5: below the 2 grey levels of `move_eps`), with TEXT[kind] on a
    semi-opaque dark bar (alpha 190, as lower thirds and channel badges are) either laid over the grain (an
    overlay: it passes a quarter of the grain) or painted in the scene (the grain covers it like the rest)."""
    rng = np.random.default_rng(0)
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for x, y, size, text in TEXT[kind]:
        font = ImageFont.load_default(size=size)
        x0, y0, x1, y1 = d.textbbox((x, y), text, font=font, stroke_width=2)
        d.rectangle([x0 - 6, y0 - 4, x1 + 6, y1 + 4], fill=(20, 20, 90, 190))
    for x, y, size, text in TEXT[kind]:
        d.text((x, y), text, font=ImageFont.load_default(size=size), fill="white", stroke_width=2, stroke_fill="black")
    scene = Image.fromarray(_texture(3, H, W)[:H, :W]).convert("RGBA")
    base = np.asarray((scene if overlay else Image.alpha_composite(scene, layer)).convert("RGB")).astype(np.float32)
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for _ in range(frames):
            img = Image.fromarray(np.clip(base + rng.normal(0, 1.5, base.shape[:2])[..., None], 0, 255).astype(np.uint8))
            if overlay:
                img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
            for p in st.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_overlay_on_a_still_picture_damps_its_grain(tmp_path):
    """On a still, detailed picture a line that stays put counts as an overlay only when it damps the
    picture's own small changes beneath it (a semi-opaque badge or bar passes a quarter of the grain; scene
    text is grainy like the rest). test_text_kinds_band_persist_corner's frozen clip (no change at all)
    gives no evidence: kept."""
    from curation.filters.text import TextScorer

    sc = TextScorer("ocr", FilterConfig(scorers={"ocr": {"type": "text"}}).scorers["ocr"])
    sc.setup()
    got = {}
    for kind in ("subtitle", "logo"):
        for overlay in (True, False):
            p = str(tmp_path / f"{kind}-{overlay}.mp4")
            grainy_still_clip(p, kind, overlay)
            got[kind, overlay] = sc.score(decode_clip(p, sc.frame_specs(), 2.0, 64))
    assert got["subtitle", True]["persist"] == 1.0 and got["subtitle", True]["band"] == 1.0, got
    assert got["logo", True]["persist"] == 1.0 and got["logo", True]["corner"] == 1.0, got
    for kind in ("subtitle", "logo"):
        assert got[kind, False]["boxes_max"] >= 1 and got[kind, False]["persist"] == 0.0, got
    assert got["subtitle", False]["band"] == 0.0, got


def test_texture_boxes_are_not_text_lines(testdata):
    """Sintel's snowy mountain (0-2 s): the detector returns texture boxes; none is shaped or read like a line."""
    from curation.filters.text import TextScorer

    sc = TextScorer("ocr", FilterConfig(scorers={"ocr": {"type": "text"}}).scorers["ocr"])
    sc.setup()
    clip = decode_clip(os.path.join(testdata, "sintel/test_video_30s.mp4"), sc.frame_specs(), 2.0, 64)
    frames = clip.frames[sc.frame_specs()[0].key][:4]
    raw = sum(len(sc.detect(f)) for f in frames)
    kept = sum(len(sc.lines(f)[0]) for f in frames)
    assert raw >= 1 and kept == 0, (raw, kept)


def test_text_config_errors(monkeypatch):
    with pytest.raises(ValueError, match="not numeric"):
        FilterConfig(scorers={"ocr": {"type": "text", "recognize": True, "thresholds": {"text": {"max": 1}}}})
    with pytest.raises(ValueError, match="scorers.ocr.frames"):
        FilterConfig(scorers={"ocr": {"type": "text", "frames": 0}})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m in ("rapidocr_onnxruntime", "nudenet")
                        else real(m, *a))
    with pytest.raises(ValueError, match="scorers.ocr: type text needs the package rapidocr-onnxruntime"):
        FilterConfig(scorers={"ocr": {"type": "text"}})
    with pytest.raises(ValueError, match="scorers.safe: type nsfw needs the package nudenet"):
        FilterConfig(scorers={"safe": {"type": "nsfw"}})


# ------------------------------------------------------------------------------------------- NSFW ---

def test_nsfw_equals_nudenet_on_real_frames(testdata):
    """Per class, our score is the highest confidence NudeNet's own NudeDetector.detect reports (>= 0.25)."""
    from nudenet import NudeDetector

    from curation.filters.nsfw import LABELS, NsfwScorer

    sc = NsfwScorer("nsfw", FilterConfig(scorers={"nsfw": {"type": "nsfw"}}).scorers["nsfw"])
    sc.setup()
    det = NudeDetector()
    found = set()
    for path in ("decord/flipping_a_pancake.mkv", "bbb/bigbuckbunny.mp4"):
        frames = decode_clip(os.path.join(testdata, path), sc.frame_specs(), 1.0, 6).frames["rgb24320"]
        ours = sc.class_scores(frames)
        for f, mine in zip(frames, ours):
            theirs: dict[str, float] = {}
            for d in det.detect(np.ascontiguousarray(f[..., ::-1])):
                theirs[d["class"]] = max(theirs.get(d["class"], 0.0), d["score"])
            assert {LABELS[i]: round(float(v), 4) for i, v in enumerate(mine) if v >= 0.25} == \
                {k: round(v, 4) for k, v in theirs.items()}
            found |= set(theirs)
        if "pancake" in path:  # a person in ordinary clothes: below the default max 0.5 (0.21 here)
            assert ours[:, [LABELS.index(c) for c in sc.cfg.classes]].max() < 0.5
    # Faces and feet are detected, so the comparison saw real detections. (Big Buck Bunny's cartoon
    # rabbit scores up to 0.76 on an exposed class: a false positive of the model, see docs/measurements.md.)
    assert {"FACE_FEMALE", "FEET_EXPOSED"} <= found


def test_nsfw_scores_ordinary_clips_low_and_rule(tmp_path):
    os.makedirs(tmp_path / "clips")
    make_video(str(tmp_path / "clips" / "a.mp4"), [Scene(48, 2.0, 1)], 320, 192, 24.0)
    tables.write_part(Storage(str(tmp_path)), "clips", [clip_row("a", "clips/a.mp4")], tables.CLIPS)
    cfg = FilterConfig(scorers={"nsfw": {"type": "nsfw"}})
    dec, sco, scorers = build_stages(str(tmp_path), cfg)
    assert [r.__dict__ for r in scorers.rules()] == [{"column": "nsfw_score", "min": None, "max": 0.5}]
    assert scores_schema(scorers).field("nsfw_score").type == pa.float32()
    row = score(str(tmp_path), cfg)["a"]
    assert 0.0 < row["nsfw_score"] < 0.05 and row["passed"] is True
    strict = FilterConfig(scorers={"nsfw": {"type": "nsfw", "step": "model",
                                                              "thresholds": {"score": {"max": 0.0}}}})
    row = score(str(tmp_path), strict)["a"]
    assert row["passed"] is False and row["reasons"] == ["nsfw_score>0"]
    with pytest.raises(ValueError, match="unknown NudeNet class"):
        FilterConfig(scorers={"nsfw": {"type": "nsfw", "classes": ["NOT_A_CLASS"]}})


def test_nsfw_cartoon_rabbit_kept_by_box_size_and_frames(testdata):
    """Big Buck Bunny's rabbit is an exposed-breast misfire with small boxes (issue 21): the defaults keep it,
    and switching min_box / min_frames off brings the misfire back (so the rule, not luck, keeps it)."""
    from curation.filters.nsfw import NsfwScorer

    scores = {}
    for label, kw in (("default", {}), ("off", {"min_box": 0.0, "min_frames": 1})):
        sc = NsfwScorer("nsfw", FilterConfig(scorers={"nsfw": {"type": "nsfw", **kw}}).scorers["nsfw"])
        sc.setup()
        clip = decode_clip(os.path.join(testdata, "bbb/bigbuckbunny.mp4"), sc.frame_specs(), 2.0, 64)
        scores[label] = sc.score(clip)["score"]
    assert scores["off"] > 0.7 and scores["default"] < 0.5, scores
