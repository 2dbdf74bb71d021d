"""inspect: terminal summary, HTML report (checked in a real headless Chromium), speed on 100k clips."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest

from curation import inspect as insp
from curation import tables
from curation.filter import build_stages, scores_schema, todo_clips
from curation.filters.base import ScorerSet
from curation.filters.config import FilterConfig
from curation.stage import run_local
from curation.storage import Storage
from curation.synth import Scene, make_video

warnings.filterwarnings("ignore", category=RuntimeWarning)


@pytest.fixture(scope="module")
def scored_root(tmp_path_factory) -> str:
    """A root with 6 real clips (still ones dropped), one broken clip, scored by motion + tiny models."""
    from curation.filters.make_tiny import make_tiny

    root = str(tmp_path_factory.mktemp("root"))
    models = make_tiny(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "clips", "v"))
    rows = []
    for i, m in enumerate([0.0, 0.0, 0.3, 1.0, 2.0, 3.0]):
        rel = f"clips/v/c{i}.mp4"
        make_video(os.path.join(root, rel), [Scene(48, m, i)], 128, 96, 24.0)
        rows.append(dict(clip_id=f"v_{i:07d}", video_id="v", source=f"/raw/{'a' if i < 3 else 'b'}.mp4", start_frame=0,
                         end_frame=48, start_s=0.0, end_s=2.0, width=128, height=96, fps=24.0, frames=48, bytes=1,
                         path=rel, status="ok", reason=None))
    rows.append({**rows[0], "clip_id": "v_broken", "path": "clips/v/none.mp4"})
    st = Storage(root)
    tables.write_part(st, "clips", rows, tables.CLIPS)
    cfg = FilterConfig(demo_models=None, clip={"model": models["clip"]}, scorers={
        "motion": {"type": "motion", "thresholds": {"mean": {"min": 0.01}}},
        "aesthetic": {"type": "aesthetic", "weights": models["aesthetic"], "thresholds": {"mean": {"min": 4.5}}}})
    dec, sco, scorers = build_stages(root, cfg)
    out = run_local([dec, sco], todo_clips(st, False)[0])
    tables.write_part(st, "scores", out, scores_schema(scorers))
    return root


def test_terminal_summary_and_html(scored_root, capsys):
    assert insp.main(scored_root, html="") == 0
    text = capsys.readouterr().out
    assert "clips: 7 ok" in text
    assert "scores: 7 clips: kept 4 (57.1%), dropped 2, errors 1" in text
    assert re.search(r"motion_mean<0.01\s+2\s+28.6%", text)
    assert re.search(r"motion_mean\s.*>= 0.01", text) and "aesthetic_mean" in text
    assert "per source video (2 videos" in text and "/raw/a.mp4" in text
    page = open(os.path.join(scored_root, "report", "index.html")).read()
    assert page.count("<svg") == 10  # one histogram per numeric score column (motion 8, aesthetic 2)
    assert page.count('class="threshold"') == 2  # motion_mean and aesthetic_mean thresholds
    assert "motion_mean near its min 0.01" in page and "dropped: motion_mean&lt;0.01" in page
    assert page.count("data:image/jpeg;base64,") >= 6  # thumbnails of real clips
    assert "v_broken" in page  # listed under errors


def test_no_html_and_empty_root(scored_root, tmp_path, capsys):
    assert insp.main(scored_root, html=None) == 0
    assert insp.main(str(tmp_path), html="") == 1
    assert "no tables under" in capsys.readouterr().err


def test_fast_on_100k_clips(tmp_path, monkeypatch):
    """100k rows (with 512-d embeddings on disk): never reads embeddings, opens only sampled clips."""
    n = 100_000
    rng = np.random.default_rng(0)
    scorers = ScorerSet.from_config(FilterConfig(demo_models=None, scorers={
        "motion": {"type": "motion", "thresholds": {"mean": {"min": 0.01}}}}).enabled_scorers())
    schema = scores_schema(scorers)
    mean = rng.lognormal(-3, 1, n).astype(np.float32)
    reasons = [["motion_mean<0.01"] if v < 0.01 else [] for v in mean]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 512).astype(np.float32)), 512)
    t = pa.table({
        "clip_id": [f"c{i:06d}" for i in range(n)], "video_id": [f"v{i // 50}" for i in range(n)],
        "source": [f"/raw/v{i // 50}.mp4" for i in range(n)], "path": [f"clips/v/c{i}.mp4" for i in range(n)],
        "start_s": np.zeros(n), "end_s": np.full(n, 4.0), "frames_sampled": np.full(n, 8, np.int32),
        "motion_mean": mean, "motion_min_patch": mean * 0.5, "motion_still_share": rng.random(n).astype(np.float32),
        **{f"motion_{m}": rng.random(n).astype(np.float32) for m in ("camera", "object", "moving_area", "shake", "level")},
        "motion_camera_type": rng.choice(["static", "pan", "zoom"], n),
        "passed": [not r for r in reasons], "reasons": reasons, "clip_embedding": emb.cast(pa.list_(pa.float32())),
        "error": pa.nulls(n, pa.string()), "decode_s": np.zeros(n, np.float32), "score_s": np.zeros(n, np.float32),
    }, schema=schema)
    st = Storage(str(tmp_path))
    for i in range(0, n, 25_000):  # several parts, like a real run
        tables.write_part(st, "scores", t.slice(i, 25_000), schema)
    opened = []
    real = insp.thumbnail
    monkeypatch.setattr(insp, "thumbnail", lambda s, p, **kw: opened.append(p) or real(s, p, **kw))
    t0 = time.time()
    assert insp.main(str(tmp_path), html="") == 0
    took = time.time() - t0
    assert took < 30, f"inspect took {took:.1f}s on {n} clips"
    assert 0 < len(opened) <= 2 * insp.THUMBS_PER_SHEET  # one threshold sheet + one reason sheet
    assert os.path.getsize(tmp_path / "report" / "index.html") < 2_000_000


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(scored_root, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page = os.path.join(scored_root, "report", "index.html")
    if not os.path.exists(page):
        insp.main(scored_root, html="")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]
    dom = subprocess.run(flags + ["--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'id="thumbs-loaded">(\d+) of (\d+)<', dom)
    assert m, "the page script did not run (thumbnail counter missing)"
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= 6 and loaded == total, f"browser decoded {loaded} of {total} thumbnails"
    assert dom.count("<svg") == 10 and dom.count('class="threshold"') == 2
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", f"file://{page}"], capture_output=True, timeout=120)
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2400, 1200)
    # Not a blank page: the green "kept" bars and red threshold lines are drawn.
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((g > 150) & (r < 120) & (b < 120)).sum() > 200  # #4caf50 bars
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 50  # #d32f2f threshold lines
