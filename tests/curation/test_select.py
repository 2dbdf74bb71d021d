"""Select stage: budget, floors, quotas, determinism, and kept_clips meaning selected (tables only)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation import tables
from curation.dedup import DEDUP
from curation.kept import kept_clips
from curation.select import SelectConfig, choose, read_select, select
from curation.storage import Storage

CAMERA = ["static", "pan", "zoom"]


def make_root(path: str, n: int = 60, seed: int = 0) -> Storage:
    """clips + scores + dedup tables of n clips from 6 videos; clip 0..2 fail the filter, 3 is a duplicate."""
    rng = np.random.default_rng(seed)
    st = Storage(path)
    clips, scores, dedup = [], [], []
    for i in range(n):
        cid = f"v{i % 6}_{i:04d}"
        w, h = (1280, 720) if i % 4 else (720, 1280)
        frames = int(rng.integers(48, 480))
        clips.append({"clip_id": cid, "video_id": f"v{i % 6}", "source": f"v{i % 6}.mp4", "start_frame": 0,
                      "end_frame": frames, "start_s": 0.0, "end_s": frames / 24, "width": w, "height": h, "fps": 24.0,
                      "frames": frames, "bytes": 1000, "path": f"clips/{cid}.mp4", "status": "ok", "reason": None})
        scores.append({"clip_id": cid, "video_id": f"v{i % 6}", "source": f"v{i % 6}.mp4", "path": f"clips/{cid}.mp4",
                       "start_s": 0.0, "end_s": frames / 24, "frames_sampled": 4, "passed": i >= 3,
                       "reasons": [] if i >= 3 else ["aesthetic_mean<4.5"], "error": None,
                       "aesthetic_mean": float(rng.uniform(3, 7)),
                       "motion_mean": float(rng.uniform(0, 1)), "camera_type": CAMERA[i % 3]})
        dedup.append({"clip_id": cid, "cluster": i % 5, "group": cid, "duplicate_of": None, "similarity": None,
                      "method": None, "kept": True})
    dedup[3].update(kept=False, duplicate_of=clips[4]["clip_id"], group=clips[4]["clip_id"])
    tables.write_part(st, "clips", clips, tables.CLIPS)
    tables.write_part(st, "scores", scores)
    tables.write_part(st, "dedup", dedup, DEDUP)
    return st


def test_budget_floor_and_quotas_are_met_and_explained(tmp_path):
    st = make_root(str(tmp_path))
    cfg = SelectConfig(max_clips=20, floors={"motion_mean": 0.1}, quotas={"cluster": 0.25, "camera_type": 0.4})
    counts = select(st, cfg)
    t = read_select(st).to_pylist()
    assert len(t) == 56 and counts["selected"] == 20  # 60 - 3 filtered - 1 duplicate
    chosen = [r for r in t if r["selected"]]
    for key, share in (("cluster", 0.25), ("camera_type", 0.4)):
        per = {}
        for r in chosen:
            per[r[key]] = per.get(r[key], 0) + 1
        assert max(per.values()) <= int(share * 20)
        # a group that turned a clip away holds its cap exactly
        for r in t:
            if r["reason"] == f"quota {key}":
                assert per[r[key]] == int(share * 20)
    scores = {r["clip_id"]: r for r in tables.read_table(st, "scores").to_pylist()}
    for r in t:
        if r["reason"] and r["reason"].startswith("floor"):
            assert scores[r["clip_id"]]["motion_mean"] < 0.1 and r["rank"] is None
    # nothing better was left out for no reason: every unselected eligible clip names a limit
    assert all(r["reason"] in ("budget", "quota cluster", "quota camera_type") for r in t
               if not r["selected"] and r["rank"] is not None)
    # kept_clips now means selected
    assert {c["clip_id"] for c in kept_clips(st)} == {r["clip_id"] for r in chosen}
    assert len(kept_clips(st, selected=False)) == 56


def test_hours_budget_video_bucket_and_rerun_reports_change(tmp_path):
    st = make_root(str(tmp_path))
    first = select(st, SelectConfig(max_hours=0.1, quotas={"video": 0.3, "bucket": 0.6}))
    t = [r for r in read_select(st).to_pylist() if r["selected"]]
    assert sum(r["duration_s"] for r in t) <= 360 + 1e-6
    per_video: dict = {}
    for r in t:
        per_video[r["video_id"]] = per_video.get(r["video_id"], 0) + r["duration_s"]
    assert max(per_video.values()) <= 0.3 * 360 + 1e-6
    assert {r["bucket"] for r in t} <= {"1.78|4-8s", "1.78|8-16s", "1.78|16s+", "0.56|4-8s", "0.56|8-16s",
                                        "0.56|16s+", "1.78|0-4s", "0.56|0-4s"}
    second = select(st, SelectConfig(max_hours=0.2, quotas={"video": 0.3, "bucket": 0.6}))
    assert "added" not in first and second["added"] > 0 and second["selected"] > first["selected"]


def test_same_seed_same_selection_ties_follow_the_seed(tmp_path):
    st = make_root(str(tmp_path))
    cfg = SelectConfig(score="1", max_clips=10)  # every score ties: the seed decides
    select(st, cfg)
    a = read_select(st).to_pylist()
    select(st, cfg)
    assert read_select(st).to_pylist() == a
    select(st, SelectConfig(score="1", max_clips=10, seed=1))
    b = read_select(st).to_pylist()
    assert {r["clip_id"] for r in a if r["selected"]} != {r["clip_id"] for r in b if r["selected"]}


def test_greedy_is_the_optimum_for_one_quota():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 10
        score, group = rng.uniform(0, 1, n), rng.integers(0, 3, n)
        sel, _, _ = choose(score, np.ones(n), 5, {"g": group}, {"g": 0.4}, seed=0)
        best = max((sum(score[list(c)]) for k in range(6) for c in itertools.combinations(range(n), k)
                    if all(np.sum(group[list(c)] == g) <= 2 for g in range(3))), default=0)
        assert score[sel].sum() == pytest.approx(best)


def test_unconstrained_writes_no_table_and_bad_keys_are_named(tmp_path):
    st = make_root(str(tmp_path))
    select(st, SelectConfig(max_clips=5))
    assert read_select(st).num_rows == 56
    select(st, SelectConfig())
    assert read_select(st).num_rows == 0 and len(kept_clips(st)) == 56
    with pytest.raises(ValueError, match="select.quotas.colour"):
        select(st, SelectConfig(max_clips=5, quotas={"colour": 0.5}))
    with pytest.raises(ValueError, match="select.floors.nope"):
        select(st, SelectConfig(max_clips=5, floors={"nope": 1}))
    with pytest.raises(ValueError, match="select.score: .*no column 'aesthetic'"):
        select(st, SelectConfig(max_clips=5, score="aesthetic * 2"))
    with pytest.raises(ValueError, match="max_clips or max_hours"):
        SelectConfig(max_clips=5, max_hours=1)


def test_inspect_shows_distributions_before_and_after(tmp_path, capsys):
    from vidcurate import inspect

    st = make_root(str(tmp_path))
    select(st, SelectConfig(max_clips=12, quotas={"camera_type": 0.34}))
    assert inspect.main(str(tmp_path), html=str(tmp_path / "page.html")) == 0
    out = capsys.readouterr().out
    assert "selection: 12 of 56 kept clips" in out and "budget" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("camera_type"))
    assert "static" in line and "->" in line  # shares after: at most 4 of 12 per camera type
    assert "Selection (before / after)" in (tmp_path / "page.html").read_text()


def test_stage_entry_reports_what_a_budget_change_adds_and_removes(tmp_path, capsys):
    import os

    from curation.pipeline import RunContext
    from vidcurate.flow import load_config

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    st = make_root(str(tmp_path / "root"))
    from curation.select import run

    cfg = load_config(os.path.join(here, "pipelines.yaml"), [f"root={st.root}", "select.max_clips=10",
                      "select.quotas={video: 0.3}"], check_inputs=False)
    assert run(cfg, RunContext(cfg, st))["selected"] == 10
    cfg.select.max_clips = 15
    counts = run(cfg, RunContext(cfg, st))
    assert counts["added"] == 5 and counts["removed"] == 0
    assert "+5 -0" in capsys.readouterr().err
