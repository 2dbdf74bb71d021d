"""inspect: terminal summary, the HTML page of a real filter run (in a real headless Chromium), speed on 100k clips."""
from __future__ import annotations

import json
import os
import re
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest

from vidcurate import inspect as insp
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
    cfg = FilterConfig(clip={"model": models["clip"]}, scorers={
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
    meta = json.loads(re.search(r"<script type='application/json' id=meta>(.*?)</script>", page).group(1))
    cols = {c["name"]: c for c in meta["columns"]}
    motion = {f"motion_{m}" for m in ("mean", "min_patch", "still_share", "camera", "object", "moving_area", "shake",
                                      "level")}
    assert set(cols) == motion | {"aesthetic_mean", "aesthetic_min"}  # numbers only: camera_type is a label
    assert cols["motion_mean"]["min"] == 0.01 and cols["aesthetic_mean"]["min"] == 4.5
    assert cols["motion_mean"]["scorer"] == "motion" and cols["aesthetic_min"]["metric"] == "min"
    assert meta["n"] == 7 and meta["stored_kept"] == 4 and meta["clip_base"] == "../"  # clips read relative to the page
    assert "v_broken" in page and "No captions yet" in page  # listed under errors; the captions view


def test_no_html_and_empty_root(scored_root, tmp_path, capsys):
    assert insp.main(scored_root, html=None) == 0
    assert insp.main(str(tmp_path), html="") == 1
    assert "no tables under" in capsys.readouterr().err


def test_fast_on_100k_clips(tmp_path, monkeypatch):
    """100k rows (with 512-d embeddings on disk): never reads embeddings, opens only sampled clips."""
    n = 100_000
    rng = np.random.default_rng(0)
    scorers = ScorerSet.from_config(FilterConfig(scorers={
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
        "motion_camera": mean * 0.6, "motion_object": mean, "motion_moving_area": rng.random(n).astype(np.float32),
        "motion_shake": (rng.random(n) * 0.01).astype(np.float32), "motion_level": mean,
        "motion_camera_type": pa.array(["static"] * n, pa.string()),
        "passed": [not r for r in reasons], "reasons": reasons, "clip_embedding": emb.cast(pa.list_(pa.float32())),
        "error": pa.nulls(n, pa.string()), "decode_s": np.zeros(n, np.float32), "score_s": np.zeros(n, np.float32),
    }, schema=schema)
    st = Storage(str(tmp_path))
    for i in range(0, n, 25_000):  # several parts, like a real run
        tables.write_part(st, "scores", t.slice(i, 25_000), schema)
    import curation.video

    opened = []
    monkeypatch.setattr(curation.video, "open_container", lambda *a, **k: opened.append(a) or 1 / 0)
    t0 = time.time()
    assert insp.main(str(tmp_path), html="") == 0
    took = time.time() - t0
    assert took < 30, f"inspect took {took:.1f}s on {n} clips"
    assert not opened  # no clip is opened to build the page: the browser draws thumbnails lazily
    # 3 scores x 2 bytes + duration, flags and the deflated ids per clip, base64: ~11 MB for 100k clips
    size = os.path.getsize(tmp_path / "report" / "index.html")
    assert size < 150 * n, f"page is {size / 1e6:.1f} MB"


def test_page_of_a_real_run_in_headless_chromium(scored_root, tmp_path):
    """The page of real scored clips: thumbnails drawn by the browser from the clip files, bars and handles drawn."""
    from vidcurate.report.chromium import Chromium, chromium_exe

    exe = chromium_exe()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page = os.path.join(scored_root, "report", "index.html")
    if not os.path.exists(page):
        insp.main(scored_root, html="")
    with Chromium(exe, 1200, 1400) as b:
        b.goto(f"file://{page}")
        assert b.eval("document.getElementById('kept').textContent") == "4"
        numeric = insp.score_columns(insp.load_scores(Storage(scored_root))[0], "numeric")
        assert b.eval("document.querySelectorAll('svg.hist').length") == len(numeric)  # one per number column
        b.eval("window.inspect.settled()")
        for _ in range(200):  # thumbnails load as the sheets scroll into view
            d = b.eval("Object.assign({}, document.getElementById('thumbs').dataset)")
            if int(d["asked"]) and int(d["drawn"]) + int(d["failed"]) == int(d["asked"]):
                break
            b.eval("document.getElementById('sheets').scrollIntoView()")
            time.sleep(0.1)
        assert int(d["asked"]) >= 6 and int(d["drawn"]) == int(d["asked"]), d  # every clip near the thresholds
        b.eval("window.scrollTo(0, 0)")
        shot = str(tmp_path / "shot.png")
        b.screenshot(shot)
    import cv2

    img = cv2.imread(shot)
    assert img is not None and img.shape[:2] == (1400, 1200)
    bb, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((g > 150) & (r < 120) & (bb < 120)).sum() > 200  # #4caf50 "kept" bars
    assert ((r > 180) & (g < 80) & (bb < 80)).sum() > 50  # #d32f2f min handles


def test_page_data_of_odd_columns(tmp_path):
    """Infinite scores, an all-missing score, an integer score and a string score: the page still builds;
    codes round-trip to the values (lossless below 65,535 distinct values)."""
    from test_inspect_rules import scores_table, write_root

    from vidcurate.report.page import MISSING8

    t, schema = scores_table(400, seed=4)
    mean = t.column("motion_mean").to_numpy(zero_copy_only=False).copy()
    mean[:3] = [np.inf, -np.inf, np.inf]
    t = t.set_column(t.schema.get_field_index("motion_mean"), schema.field("motion_mean"), pa.array(mean, pa.float32()))
    t = t.set_column(t.schema.get_field_index("aesthetic_min"), schema.field("aesthetic_min"), pa.nulls(400, pa.float32()))
    i = schema.get_field_index("passed")
    schema = schema.insert(i, pa.field("motion_frames", pa.int32()))
    t = t.add_column(i, "motion_frames", pa.array(np.arange(400) % 7, pa.int32()))
    c = schema.get_field_index("motion_camera_type")  # the motion scorer's label column, with a missing value
    t = t.set_column(c, "motion_camera_type", pa.array(["pan", None, "static", "zoom"] * 100, pa.string()))
    write_root(str(tmp_path), t, schema)
    assert insp.main(str(tmp_path), html="") == 0
    page = open(tmp_path / "report" / "index.html").read()
    meta = json.loads(re.search(r"<script type='application/json' id=meta>(.*?)</script>", page).group(1))
    cols = {c["name"]: c for c in meta["columns"]}
    assert cols["aesthetic_min"] == {**cols["aesthetic_min"], "empty": True}
    assert "motion_camera_type" not in cols and [c["name"] for c in meta["categories"]] == ["motion_camera_type"]
    assert meta["categories"][0]["values"] == ["pan", "static", "zoom"]

    def blob(bid: str) -> bytes:
        import base64
        import zlib

        m = re.search(rf'<script type="application/octet-stream" id="{bid}"( data-z=1)?>(.*?)</script>', page)
        raw = base64.b64decode(m.group(2))
        return zlib.decompress(raw) if m.group(1) else raw

    for name in ("motion_mean", "motion_frames"):
        c = cols[name]
        assert c["lossless"] and c["missing"] == MISSING8 or c["nbins"] >= MISSING8
        codes = np.frombuffer(blob(c["code"]), np.uint8 if c["missing"] == MISSING8 else np.uint16)
        lo = np.frombuffer(blob(c["lo"]), np.float32 if c["f"] == 4 else np.float64)
        v = t.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        ok = ~np.isnan(v)
        assert (codes[~ok] == c["missing"]).all() and (lo[codes[ok]] == v[ok]).all()
    assert np.isfinite(cols["motion_mean"]["range"]).all() and cols["motion_frames"]["f"] == 8
    lines = blob(meta["ids"]).decode().split("\n")
    assert lines[0] == "c0000000\tclips/v0/c0000000.mp4" and len(lines) == 401 and lines[-1] == ""  # one per row
