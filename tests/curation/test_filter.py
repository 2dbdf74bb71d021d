"""Filter stage: motion on known synthetic motion, model scorers with tiny random models, the saved
layout equal to the in-memory model, determinism, errors as rows, resume, config errors, plugins."""
from __future__ import annotations

import os
import textwrap
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import tables
from curation.filter import build_stages, rules_of, run, scores_schema, todo_clips
from curation.filters.config import FilterConfig
from curation.stage import run_local
from curation.storage import Storage
from curation.synth import Scene, make_video

warnings.filterwarnings("ignore", category=RuntimeWarning)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random CLIP (open_clip hub layout) + LAION-architecture MLP, written like the demo's."""
    from curation.filters.make_tiny import make_tiny

    return make_tiny(str(tmp_path_factory.mktemp("models")), seed=0)


def model_cfg(models: dict[str, str], **kw) -> FilterConfig:
    return FilterConfig(clip={"model": models["clip"]}, scorers={
        "motion": {"type": "motion", "thresholds": {"mean": {"min": 0.01}}},
        "aesthetic": {"type": "aesthetic", "weights": models["aesthetic"], "thresholds": {"mean": {"min": 4.5}}},
        "neg": {"type": "clip_zero_shot"},
    }, **kw)


def motion_cfg(**motion) -> FilterConfig:
    return FilterConfig(scorers={"motion": {"type": "motion", **motion}})


def clip_row(clip_id: str, path: str, status: str = "ok") -> dict:
    return dict(clip_id=clip_id, video_id="vid", source="/src/vid.mp4", start_frame=0, end_frame=72, start_s=0.0,
                end_s=3.0, width=160, height=96, fps=24.0, frames=72, bytes=1, path=path, status=status, reason=None)


def make_root(root: str, clips: dict[str, float], extra: list[dict] = (), size: tuple[int, int] = (160, 96)) -> Storage:
    """Clips `name -> motion (px/frame)` under <root>/clips/vid/, plus their clips-table rows."""
    os.makedirs(os.path.join(root, "clips", "vid"), exist_ok=True)
    rows = []
    for i, (name, motion) in enumerate(clips.items()):
        make_video(os.path.join(root, "clips", "vid", f"{name}.mp4"), [Scene(72, motion, 4 + i)], *size, 24.0)
        rows.append(clip_row(name, f"clips/vid/{name}.mp4"))
    st = Storage(root)
    tables.write_part(st, "clips", rows + list(extra), tables.CLIPS)
    return st


def score(root: str, cfg: FilterConfig) -> dict[str, dict]:
    dec, sco, _ = build_stages(root, cfg)
    todo, _ = todo_clips(Storage(root), False)
    return {r["clip_id"]: r for r in run_local([dec, sco], todo)}


@pytest.mark.parametrize("method", ["flow", "mv"])
def test_still_dropped_moving_passes(tmp_path, method):
    make_root(str(tmp_path), {"still": 0.0, "slow": 0.5, "moving": 3.0})
    cfg = FilterConfig(scorers={"motion": {"type": "motion", "method": method,
                                                             "thresholds": {"mean": {"min": 0.01}}}})
    rows = score(str(tmp_path), cfg)
    assert rows["still"]["motion_mean"] < 0.002 and rows["still"]["motion_still_share"] == 1.0
    assert rows["still"]["passed"] is False and rows["still"]["reasons"] == ["motion_mean<0.01"]
    for name in ("slow", "moving"):
        assert rows[name]["passed"] is True and rows[name]["reasons"] == []
        assert rows[name]["motion_still_share"] == 0.0
    # Known motion: the pattern moves (m, 2m/3) px per frame at 24 fps on a 160x96 frame.
    for name, m in (("slow", 0.5), ("moving", 3.0)):
        true = np.hypot(m, 2 * m / 3) * 24 / np.hypot(160, 96)
        assert rows[name]["motion_mean"] == pytest.approx(true, rel=0.25)
        assert rows[name]["motion_min_patch"] <= rows[name]["motion_mean"] * 1.01


def test_farneback_separates_still_from_moving(tmp_path):
    # Farneback under-reads this smooth synthetic texture at 64 px (0.007-0.036 for a true 0.077; ~0 on the
    # coarser 160x96 pattern, where DIS and codec vectors stay within 10%): why DIS is the flow default.
    make_root(str(tmp_path), {"still": 0.0, "a": 1.0}, size=(320, 192))
    true = np.hypot(1.0, 2 / 3) * 24 / np.hypot(320, 192)
    dis = score(str(tmp_path), motion_cfg(flow="dis"))
    fb = score(str(tmp_path), motion_cfg(flow="farneback"))
    assert dis["a"]["motion_mean"] == pytest.approx(true, rel=0.15)
    assert fb["still"]["motion_mean"] < 0.002 and fb["a"]["motion_mean"] > 5 * fb["still"]["motion_mean"]
    assert fb["a"]["motion_mean"] < true  # it never over-reads here: it misses motion


def test_models_deterministic_and_complete(tmp_path, tiny_models):
    make_root(str(tmp_path), {"still": 0.0, "moving": 3.0})
    cfg = model_cfg(tiny_models)
    a, b = score(str(tmp_path), cfg), score(str(tmp_path), cfg)
    cols = list(scores_schema(build_stages(str(tmp_path), cfg)[2]).names)
    for cid in a:
        for c in cols:
            if c not in ("decode_s", "score_s"):
                assert a[cid].get(c) == b[cid].get(c), c
    row = a["moving"]
    assert len(row["clip_embedding"]) == 32 and abs(np.linalg.norm(row["clip_embedding"]) - 1) < 1e-5
    probs = [row[f"neg_{c}"] for c in ("text", "lecture", "screen", "low_quality", "effects", "background")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert row["aesthetic_min"] <= row["aesthetic_mean"]
    assert row["frames_sampled"] == 6  # 3 s at 2 fps


def test_saved_layout_loads_through_production_path(tmp_path, tiny_models):
    """Weights in the real layout (open_clip hub folder + LAION state dict) give the in-memory scores."""
    import torch

    from curation.filters.base import FrameSpec
    from curation.filters.decode import decode_clip
    from curation.filters.make_tiny import CLIP_MEAN, CLIP_STD, TINY_CLIP_CFG, tiny_aesthetic, tiny_clip

    make_root(str(tmp_path), {"moving": 2.0})
    got = score(str(tmp_path), model_cfg(tiny_models))["moving"]
    model, mlp = tiny_clip(TINY_CLIP_CFG, seed=0), tiny_aesthetic(TINY_CLIP_CFG["embed_dim"], seed=0)
    size = TINY_CLIP_CFG["vision_cfg"]["image_size"]
    frames = decode_clip(str(tmp_path / "clips/vid/moving.mp4"), [FrameSpec("rgb24", size, True)]).frames
    frames = frames[f"rgb24{size}sq"][[0, 2, 3, 5]]  # clip.max_frames=4 of the 6 sampled, evenly spread
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        aest = mlp(emb).numpy()
    mean = emb.mean(0)
    np.testing.assert_allclose(got["clip_embedding"], (mean / mean.norm()).numpy(), atol=1e-5)
    assert got["aesthetic_mean"] == pytest.approx(float(aest.mean()), abs=1e-4)
    assert got["aesthetic_min"] == pytest.approx(float(aest.min()), abs=1e-4)


def test_zero_shot_thresholds_and_linear_probe(tmp_path, tiny_models):
    make_root(str(tmp_path), {"moving": 2.0})
    w = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", weight=w, bias=np.array([10.0, -10.0], np.float32))
    cfg = FilterConfig(clip={"model": tiny_models["clip"]}, scorers={
        "neg": {"type": "clip_zero_shot", "classes": {"any": {"prompts": ["a video"], "max": 0.0}}},
        "probe": {"type": "linear_probe", "path": str(tmp_path / "probe.npz"), "heads": ["hi", "lo"],
                  "thresholds": {"hi": {"max": 0.9}}}})
    row = score(str(tmp_path), cfg)["moving"]
    assert row["probe_hi"] > 0.99 and row["probe_lo"] < 0.01
    assert row["neg_any"] + row["neg_background"] == pytest.approx(1.0, abs=1e-5)
    assert row["passed"] is False and sorted(row["reasons"]) == ["neg_any>0", "probe_hi>0.9"]


def test_bad_clips_become_error_rows(tmp_path):
    root = str(tmp_path)
    os.makedirs(tmp_path / "clips/vid")
    (tmp_path / "clips/vid/garbage.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "clips/vid/empty.mp4").write_bytes(b"")
    make_root(root, {"ok": 2.0}, [clip_row("garbage", "clips/vid/garbage.mp4"), clip_row("empty", "clips/vid/empty.mp4"),
                                 clip_row("missing", "clips/vid/missing.mp4"), clip_row("skipme", None, "dropped")])
    rows = score(root, motion_cfg())
    assert set(rows) == {"ok", "garbage", "empty", "missing"}  # only status "ok" clips are scored
    for cid in ("garbage", "empty", "missing"):
        assert rows[cid]["passed"] is False and rows[cid]["reasons"] == ["error"]
        assert f"{cid}.mp4" in rows[cid]["error"]
    assert "No such file" in rows["missing"]["error"]
    assert rows["ok"]["error"] is None and rows["ok"]["passed"] is True


def test_run_on_ray_writes_schema_and_resumes(ray_local, tmp_path, tiny_models):
    """The real stage: two Ray steps, explicit schema with rules in its metadata, resume per clip."""
    from curation.config import PipelineConfig
    from curation.pipeline import RunContext

    root = str(tmp_path / "root")
    st = make_root(root, {"still": 0.0, "moving": 3.0}, [clip_row("bad", "clips/vid/nope.mp4")])
    # num_gpus on a CPU-only cluster: the model step falls back to the CPU instead of waiting forever.
    fcfg = model_cfg(tiny_models, model={"resources": {"num_gpus": 1, "batch_size": 4}})
    cfg = PipelineConfig(root=root, inputs=["x"], filter=fcfg, ray={"progress": False})
    counts = run(cfg, RunContext(cfg, st))
    assert counts == {"clips": 3, "skipped": 0, "scored": 3, "kept": 1, "dropped": 1, "errors": 1}
    parts = st.list("scores", ".parquet")
    schema = pq.read_schema(st.path(parts[0]))
    assert schema.field("motion_mean").type == "float" and str(schema.field("reasons").type) == "list<element: string>"
    assert str(schema.field("clip_embedding").type) == "list<element: float>"
    assert {r.column for r in rules_of(schema)} >= {"motion_mean", "aesthetic_mean", "neg_text"}
    # Second run: the two scored clips are skipped, the error is retried (and fails again).
    counts = run(cfg, RunContext(cfg, st))
    assert counts["skipped"] == 2 and counts["scored"] == 1 and counts["errors"] == 1
    t = tables.read_table(st, "scores")
    assert sorted(t.column("clip_id").to_pylist()) == ["bad", "moving", "still"]


def test_config_errors_name_the_key(tmp_path):
    from curation.config import ConfigError, load_config

    base = "root: r\ninputs: [x]\nfilter:\n  scorers:\n"
    cases = {
        "    m: {type: motion, methd: mv}\n": "scorers.m.methd: unknown key",
        "    m: {type: motion, thresholds: {speed: {min: 1}}}\n": "unknown metric(s) ['speed']",
        "    m: {type: nope}\n": "unknown scorer type 'nope'",
        "    m: {type: motion, thresholds: {mean: {}}}\n": "needs min, max or both",
        "    bad-name: {type: motion}\n": "must be an identifier",
    }
    for text, msg in cases.items():
        p = tmp_path / "p.yaml"
        p.write_text(base + text)
        with pytest.raises(ConfigError, match=r"filter\.scorers") as e:
            load_config(str(p), check_inputs=False)
        assert msg in str(e.value)
    p.write_text("root: r\ninputs: [x]\nfilter:\n  clip: {model: models/c}\n"
                 "  scorers: {a: {type: aesthetic, weights: w.pth}}\n")
    cfg = load_config(str(p), check_inputs=False)  # relative model paths: relative to the yaml file
    assert cfg.filter.clip.model == str(tmp_path / "models/c")
    assert cfg.filter.scorers["a"].weights == str(tmp_path / "w.pth")
    p.write_text("root: r\ninputs: [x]\nfilter:\n  clip: {model: ViT-L-14, pretrained: openai}\n")
    cfg = load_config(str(p), check_inputs=False)  # an architecture name and a tag stay names
    assert (cfg.filter.clip.model, cfg.filter.clip.pretrained) == ("ViT-L-14", "openai")


def test_new_filter_is_one_class_and_one_entry(tmp_path, monkeypatch):
    (tmp_path / "myfilters.py").write_text(textwrap.dedent('''
        import pyarrow as pa
        from curation.filters.base import FrameSpec, Scorer
        from curation.filters.config import ScorerConfig

        class BrightnessConfig(ScorerConfig):
            short_side: int = 32  # frame size the scorer reads

        class Brightness(Scorer):
            Config = BrightnessConfig
            def metrics(self):
                return {"mean": pa.float32()}
            def frame_specs(self):
                return [FrameSpec("gray", self.cfg.short_side)]
            def score(self, clip, embeddings=None):
                return {"mean": float(clip.frames[f"gray{self.cfg.short_side}"].mean() / 255)}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    make_root(str(tmp_path / "root"), {"a": 1.0})
    cfg = FilterConfig(scorers={
        "bright": {"type": "myfilters:Brightness", "thresholds": {"mean": {"max": 0.01}}}})
    row = score(str(tmp_path / "root"), cfg)["a"]
    assert 0.1 < row["bright_mean"] < 0.9 and row["reasons"] == ["bright_mean>0.01"]


def test_real_videos_every_clip_gets_a_row(testdata, tmp_path, tiny_models):
    """Every real test video as a clip (linked into the root, not copied): rows for all, errors reported."""
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    rows = []
    for folder in ("scenedetect", "decord", "sintel", "bbb"):
        for name in sorted(os.listdir(os.path.join(testdata, folder))):
            if name.endswith((".mp4", ".mov", ".mkv")) and name != "test_video_30s.mp4":
                link = root / "clips" / f"{folder}-{name}"
                os.symlink(os.path.join(testdata, folder, name), link)
                rows.append(clip_row(f"{folder}-{name}", f"clips/{folder}-{name}"))
    tables.write_part(Storage(str(root)), "clips", rows, tables.CLIPS)
    cfg = model_cfg(tiny_models, max_frames=16)
    got = score(str(root), cfg)
    assert set(got) == {r["clip_id"] for r in rows}
    errors = {k for k, r in got.items() if r["error"]}
    assert errors == {"decord-corrupted.mp4"}
    assert got["decord-corrupted.mp4"]["reasons"] == ["error"]
    for k, r in got.items():
        if k not in errors:
            assert r["frames_sampled"] >= 1 and r["aesthetic_mean"] is not None, k
    assert got["sintel-test_clip_10s.mp4"]["motion_mean"] > 0.01  # a trailer moves


@pytest.mark.heavy
def test_cli_demo_probe_split_filter_inspect(tmp_path):
    """The README flow: the repository's pipelines.yaml on demo videos, tiny models built on the fly."""
    import subprocess
    import sys

    from curation.synth import demo_videos

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    demo_videos(str(tmp_path / "raw"))
    env = {**os.environ, "PYTHONPATH": repo}
    sets = [f"root={tmp_path / 'root'}", f"inputs=[{tmp_path / 'raw'}/*.mp4]", f"demo.models={tmp_path / 'models'}",
            f"filter.clip.model={tmp_path / 'models/tiny-clip'}", "ray.progress=false", "ray.num_cpus=2",
            f"filter.scorers.aesthetic.weights={tmp_path / 'models/tiny-aesthetic.safetensors'}"]
    cmd = [sys.executable, "-m", "vidcurate", "run", os.path.join(repo, "pipelines.yaml"), "--stage", "probe,split,filter"]
    r = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "building tiny RANDOM demo models" in r.stderr
    r = subprocess.run([sys.executable, "-m", "vidcurate", "inspect", str(tmp_path / "root")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "frozen_longest_s>0.4" in r.stdout  # the still shot of still_then_moving.mp4 (no noise: frozen) is dropped
    assert (tmp_path / "root/report/index.html").exists()
    t = tables.read_table(Storage(str(tmp_path / "root")), "scores")
    ok = [c for c in tables.read_table(Storage(str(tmp_path / "root")), "clips").to_pylist() if c["status"] == "ok"]
    assert sorted(t.column("clip_id").to_pylist()) == sorted(c["clip_id"] for c in ok)


@pytest.mark.heavy
def test_real_videos_probe_split_filter(testdata, ray_local, tmp_path, tiny_models):
    """All real test videos through probe -> split -> filter on Ray: every ok clip gets a scores row,
    the corrupted file is reported (videos table and manifest), nothing crashes."""
    from curation.config import PipelineConfig
    from curation.pipeline import run_stages

    inputs = [os.path.join(testdata, d, "*.m[pok][4v]") for d in ("scenedetect", "decord", "sintel", "bbb")]
    cfg = PipelineConfig(root=str(tmp_path / "root"), inputs=inputs, ray={"progress": False},
                         split={"min_clip_s": 0.5}, filter=model_cfg(tiny_models))
    ctx = run_stages(cfg, ["probe", "split", "filter"])
    st = Storage(cfg.root)
    vids = tables.read_table(st, "videos").to_pylist()
    assert any("corrupted.mp4" in v["source"] and v["error"] for v in vids)
    assert any("corrupted.mp4" in e for e in ctx.stages["probe"]["errors"])
    ok = {c["clip_id"] for c in tables.read_table(st, "clips").to_pylist() if c["status"] == "ok"}
    scores = tables.read_table(st, "scores").to_pylist()
    assert len(ok) > 10 and {r["clip_id"] for r in scores} == ok
    assert not [r for r in scores if r["error"]], [r["error"] for r in scores if r["error"]]
    assert ctx.stages["filter"]["counts"]["scored"] == len(ok)
