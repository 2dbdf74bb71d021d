"""bench/judgement.py cannot rot: its smoke mode runs end to end, and the labelled-set pieces do what they say."""
from __future__ import annotations

import os

import numpy as np
import pytest

from bench import judgement, judgement_set


def test_smoke_run_reports_every_judgement(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{judgement.DOC_BEGIN}\nold\n{judgement.DOC_END}\noutro\n")
    assert judgement.main(["--smoke", "--cache", str(tmp_path / "cache"), "--write-doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    for name in ("text", "nsfw", "shake", "still"):
        assert f"| {name} | report |" in text and f"| {name} | calibration |" in text
    assert "Whole default rule set, report part: keeps" in text
    # The dedup measurement has a row per kind of copy (one window per part: 2 pairs). (Its numbers on this
    # smooth synthetic texture are the known pHash weakness: ~24 of 64 bits differ after a re-encode.)
    for kind in judgement_set.DUPLICATES:
        assert f"| {kind} | 2 | " in text
    # A frozen synthetic clip is what the still judgement must catch, whatever else the smoke set says.
    assert "| still | report | 1 / 3 | 1.00 | 1.00 | 1.00 |" in text


def test_write_doc_needs_markers(tmp_path):
    p = tmp_path / "d.md"
    p.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        judgement.write_doc(str(p), "x")


def test_metrics_on_known_scores():
    assert judgement.auc([0.9, 0.8], [0.1, 0.8]) == pytest.approx(0.875)
    assert judgement.auc([], [0.1]) is None
    rule = judgement.Rule("ocr_area_mean", max=0.06)
    j = judgement.Judgement("text", [rule], "ocr_area_mean", 1.0, {"overlay_text"})
    clips = [judgement_set.Clip(f"c{i}", "", "s", "report", "w", kind, tags, 360, 360)
             for i, (kind, tags) in enumerate([("subtitles", ["overlay_text"]), ("logo", ["overlay_text"]),
                                               ("clean", []), ("clean", ["scene_text"])])]
    rows = {"c0": {"ocr_area_mean": 0.1}, "c1": {"ocr_area_mean": 0.01}, "c2": {"ocr_area_mean": 0.0},
            "c3": {"ocr_area_mean": 0.2}}
    r = judgement.evaluate(j, clips, rows, "report", 1.0)
    assert (r.n_pos, r.n_neg, r.precision, r.recall, r.f1) == (2, 2, 0.5, 0.5, 0.5)
    assert r.clean_drop == 0.5 and r.dropped_clean == ["c3"]


def test_degradations_change_what_they_claim():
    rng = np.random.default_rng(0)
    frames = np.full((12, 144, 256, 3), 90, np.uint8)
    sub, _ = judgement_set.subtitles(frames, rng, 12.0)
    diff = np.abs(sub.astype(int) - frames).max(axis=(0, 3))
    rows = np.nonzero(diff.max(axis=1))[0]
    assert rows.min() > 144 * 0.6  # subtitles live in the bottom band
    frozen, _ = judgement_set.hold(np.arange(12)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8), rng, 12.0, None)
    assert (frozen == frozen[0]).all()
    native = rng.integers(0, 255, (10, 120, 200, 3), np.uint8)
    shaky, params = judgement_set.jitter(native, (160, 96), rng, 10.0, 0.02)
    assert shaky.shape == (10, 96, 160, 3) and params["rms_diag"] == 0.02
    lb, p = judgement_set.bars(frames, rng, 12.0, "letterbox")
    bar = int(144 * p["bar_share"])
    assert lb[:, :bar - 1].max() == 0 and lb[:, 144 // 2].min() > 0


def test_split_by_source(testdata, tmp_path):
    """Every source video lands in one part only, and both parts hold sources (the tuning/report split)."""
    parts: dict[str, set[str]] = {}
    for s in judgement_set.SOURCES:
        assert os.path.exists(os.path.join(testdata, s.path)), s.path
        parts.setdefault(s.name, set()).add(s.part)
    assert all(len(p) == 1 for p in parts.values())
    assert {p for ps in parts.values() for p in ps} == {"calibration", "report"}
