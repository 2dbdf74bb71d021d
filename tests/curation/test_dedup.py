"""Dedup stage: copies of a clip (re-encoded, rescaled, cropped) found by pHash, other scenes not; the
embedding signal with k-means partitions; the keep rule; determinism and re-runs; the shard writer
leaving duplicates out; config errors."""
from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pytest

from curation import tables
from curation.dedup import DEDUP, DedupConfig, dedup, read_dedup
from curation.storage import Storage


def transcode(src: str, outs: dict[str, dict]) -> dict[str, int]:
    """One decode of src; each output path gets frames [start, end) re-encoded with libx264 at its own
    crf, scale and crop (another bitrate, size, a few pixels less). Returns frames written per path."""
    writers: dict[str, tuple] = {}
    counts = {p: 0 for p in outs}
    with av.open(src) as inp:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        last = max(kw.get("end") or 10**9 for kw in outs.values())
        for i, fr in enumerate(inp.decode(ist)):
            if i >= last:
                break
            img = None
            for path, kw in outs.items():
                if i < kw.get("start", 0) or i >= (kw.get("end") or 10**9):
                    continue
                img = fr.to_ndarray(format="rgb24") if img is None else img
                _encode(writers, path, img, kw, ist)
                counts[path] += 1
    for out, st in writers.values():
        for p in st.encode():
            out.mux(p)
        out.close()
    return counts


def _encode(writers: dict, path: str, img: np.ndarray, kw: dict, ist: "av.video.stream.VideoStream") -> None:
    c = kw.get("crop", 0)
    if c:
        img = img[c:-c, c:-c]
    h, w = img.shape[:2]
    w2, h2 = int(round(w * kw.get("scale", 1.0) / 2)) * 2, int(round(h * kw.get("scale", 1.0) / 2)) * 2
    if path not in writers:
        out = av.open(path, "w")
        st = out.add_stream("libx264", rate=Fraction(ist.average_rate or 24).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = w2, h2, "yuv420p"
        st.options = {"crf": str(kw.get("crf", 20)), "preset": "ultrafast"}
        writers[path] = (out, st)
    out, st = writers[path]
    for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(w2, h2)):
        out.mux(p)


def clip_row(cid: str, path: str, frames: int, fps: float = 24.0) -> dict:
    return dict(clip_id=cid, video_id=cid.split("_")[0], source="/src.mp4", start_frame=0, end_frame=frames,
                start_s=0.0, end_s=frames / fps, width=160, height=96, fps=fps, frames=frames, bytes=1, path=path,
                status="ok", reason=None)


SCORES = pa.schema([("clip_id", pa.string()), ("passed", pa.bool_()), ("error", pa.string()),
                    ("aesthetic_mean", pa.float32()), ("clip_embedding", pa.list_(pa.float32()))])


def write_root(root: str, clips: dict[str, tuple[str, int]], aesthetic: dict[str, float] | None = None,
               emb: dict[str, np.ndarray] | None = None) -> Storage:
    """Clips table (name -> (path relative to root, frames)) and a scores table where every clip passed."""
    st = Storage(root)
    tables.write_part(st, "clips", [clip_row(c, p, n) for c, (p, n) in clips.items()], tables.CLIPS)
    tables.write_part(st, "scores", [{"clip_id": c, "passed": True, "error": None,
                                      "aesthetic_mean": (aesthetic or {}).get(c, 5.0),
                                      "clip_embedding": None if emb is None else emb[c].tolist()} for c in clips],
                      SCORES)
    return st


def natural_video(path: str, scenes: int, frames: int, w: int = 320, h: int = 192) -> None:
    """Scenes of panning 1/f noise (the spectrum of natural images; curation.synth's smooth sinusoids
    put their energy in a few DCT coefficients, which no perceptual hash can be stable on)."""
    import cv2

    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for k in range(scenes):
            rng = np.random.default_rng(k)
            img = sum(cv2.resize(rng.normal(size=(2 * h // c, 2 * w // c, 3)).astype(np.float32), (2 * w, 2 * h),
                                 interpolation=cv2.INTER_CUBIC) * c for c in (4, 8, 16, 32, 64))
            img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
            for j in range(frames):
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[j * 2:j * 2 + h, j * 3:j * 3 + w]), "rgb24")
                for p in st.encode(f):
                    out.mux(p)
        for p in st.encode():
            out.mux(p)


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> tuple[str, dict[str, tuple[str, int]]]:
    """Three scenes of one video, plus copies of scene b: re-encoded, rescaled, cropped 4 px."""
    root = str(tmp_path_factory.mktemp("dedup"))
    os.makedirs(os.path.join(root, "clips"))
    src = os.path.join(root, "src.mp4")
    natural_video(src, 3, 48)
    spec = {"v_a": dict(start=0, end=48), "v_b": dict(start=48, end=96), "v_c": dict(start=96),
            "v_b_crf40": dict(start=48, end=96, crf=40), "v_b_small": dict(start=48, end=96, scale=0.5),
            "v_b_crop": dict(start=48, end=96, crop=4)}
    n = transcode(src, {os.path.join(root, "clips", f"{c}.mp4"): kw for c, kw in spec.items()})
    return root, {c: (f"clips/{c}.mp4", n[os.path.join(root, "clips", f"{c}.mp4")]) for c in spec}


def fresh(tmp_path, copies) -> str:
    """A new root holding links to the module's clip files (so every test starts without tables)."""
    src, clips = copies
    os.makedirs(tmp_path / "clips")
    for p, _ in clips.values():
        os.symlink(os.path.join(src, p), tmp_path / p)
    return str(tmp_path)


def test_phash_finds_copies_not_other_scenes(tmp_path, copies):
    root = fresh(tmp_path, copies)
    clips = copies[1]
    st = write_root(root, clips, aesthetic={"v_b_small": 6.0})
    counts = dedup(st, DedupConfig(signals=["phash"]), local=True)
    rows = {r["clip_id"]: r for r in read_dedup(st).to_pylist()}
    assert counts["clips"] == 6 and counts["duplicates"] == 3 and counts["groups"] == 1
    # The highest aesthetic score wins; every copy points at it, found by pHash directly.
    assert rows["v_b_small"]["kept"] and rows["v_b_small"]["duplicate_of"] is None
    for c in ("v_b", "v_b_crf40", "v_b_crop"):
        assert rows[c]["kept"] is False and rows[c]["duplicate_of"] == "v_b_small" and rows[c]["group"] == "v_b_small"
        assert rows[c]["method"] == "phash" and rows[c]["similarity"] > 1 - 10 / 64
    for c in ("v_a", "v_c"):  # other scenes of the same video are unique
        assert rows[c]["kept"] and rows[c]["group"] == c and rows[c]["duplicate_of"] is None
    assert read_dedup(st).schema.names == DEDUP.names


def test_phash_distances(copies):
    from curation.phash import as_signs, clip_hash

    src, clips = copies
    h = {c: clip_hash(os.path.join(src, p), n, 5) for c, (p, n) in clips.items()}
    s = {c: as_signs(v[None])[0] for c, v in h.items()}

    def dist(a: str, b: str) -> float:  # mean differing bits per 64-bit frame hash
        return (len(s[a]) - float(s[a] @ s[b])) / 2 / 5

    for c in ("v_b_crf40", "v_b_small", "v_b_crop"):
        assert dist("v_b", c) <= 6, c
    for a, b in (("v_a", "v_b"), ("v_b", "v_c"), ("v_a", "v_c")):
        assert dist(a, b) >= 20, (a, b)


@pytest.mark.heavy  # decodes 720 frames of 1280x720 (~10 s quiet, a minute on the loaded dev machine)
def test_real_video_scenes_and_copies(tmp_path, testdata):
    """PySceneDetect's testvideo.mp4 (cuts at 30, 180, 394): four scenes are unique, copies of one are found."""
    src = os.path.join(testdata, "scenedetect", "testvideo.mp4")
    os.makedirs(tmp_path / "clips")
    spec = {"s0": dict(end=30), "s1": dict(start=30, end=180), "s2": dict(start=180, end=394),
            "s3": dict(start=394), "s2_crf38": dict(start=180, end=394, crf=38),
            "s2_tiny": dict(start=180, end=394, scale=0.5), "s2_crop": dict(start=180, end=394, crop=3)}
    for kw in spec.values():
        kw["scale"] = kw.get("scale", 1.0) * 0.25  # 320x180 copies: the test is about content, not size
    n = transcode(src, {str(tmp_path / "clips" / f"{c}.mp4"): kw for c, kw in spec.items()})
    clips = {c: (f"clips/{c}.mp4", n[str(tmp_path / "clips" / f"{c}.mp4")]) for c in spec}
    st = write_root(str(tmp_path), clips)
    dedup(st, DedupConfig(signals=["phash"]), local=True)
    rows = {r["clip_id"]: r for r in read_dedup(st).to_pylist()}
    group = {c for c, r in rows.items() if r["group"] == rows["s2"]["group"]}
    assert group == {"s2", "s2_crf38", "s2_tiny", "s2_crop"}
    assert all(rows[c]["kept"] and rows[c]["group"] == c for c in ("s0", "s1", "s3"))
    # Equal aesthetic: the longest is kept, then the smallest clip_id (all four have the same length).
    assert rows["s2"]["kept"] and sum(rows[c]["kept"] for c in group) == 1


def planted(n: int, d: int, dups: int, seed: int) -> tuple[dict[str, np.ndarray], set[frozenset]]:
    """n random unit vectors in d dims; the first `dups` get a near copy (cosine ~0.99)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = {f"c{i:04d}": x[i] for i in range(n)}
    pairs = set()
    for i in range(dups):
        y = x[i] + rng.normal(size=d).astype(np.float32) * 0.1 / np.sqrt(d)
        emb[f"c{i:04d}_dup"] = y / np.linalg.norm(y)
        pairs.add(frozenset((f"c{i:04d}", f"c{i:04d}_dup")))
    return emb, pairs


@pytest.mark.parametrize("backend", ["faiss", pytest.param("sklearn", marks=pytest.mark.heavy)])  # sklearn: 10 s import
def test_embedding_signal_with_clusters(tmp_path, backend):
    emb, pairs = planted(600, 32, 40, seed=1)
    # Clustered data: every vector near one of 8 centres (unrelated neighbours: cosine ~0.5), so k-means
    # has structure to find; a duplicate moves with its original.
    centres = np.random.default_rng(2).normal(size=(8, 32)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = {c: v + centres[int(c[1:5]) % 8] for c, v in emb.items()}
    emb = {c: v / np.linalg.norm(v) for c, v in emb.items()}
    st = Storage(str(tmp_path))
    tables.write_part(st, "clips", [clip_row(c, f"clips/{c}.mp4", 48) for c in emb], tables.CLIPS)
    tables.write_part(st, "scores", [{"clip_id": c, "passed": True, "error": None, "aesthetic_mean": 5.0,
                                      "clip_embedding": v.tolist()} for c, v in emb.items()], SCORES)
    cfg = DedupConfig(signals=["embedding"], cluster_size=80, backend=backend, embedding_min_similarity=0.97)
    counts = dedup(st, cfg, local=True)
    rows = {r["clip_id"]: r for r in read_dedup(st).to_pylist()}
    assert counts["clusters"] == 8
    found = {frozenset((c, r["duplicate_of"])) for c, r in rows.items() if not r["kept"]}
    assert found == pairs  # the border band: a pair split by k-means is still compared
    assert all(r["method"] == "embedding" and r["similarity"] >= 0.97 for r in rows.values() if not r["kept"])
    # Same inputs and seed: the same table, cluster ids included.
    first = read_dedup(st).to_pylist()
    dedup(st, cfg, local=True)
    assert read_dedup(st).to_pylist() == first
    assert len(st.list("dedup", ".parquet")) == 1  # a re-run replaces the table


def border_data(n: int = 3000, d: int = 16, seed: int = 3) -> np.ndarray:
    """Unit vectors around 6 broad topics with many near pairs, so k-means borders cut through them."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(6, d)).astype(np.float32)
    x = c[rng.integers(0, 6, n)] + rng.normal(size=(n, d)).astype(np.float32) * 0.6
    x[n // 2:] = x[:n - n // 2] + rng.normal(size=(n - n // 2, d)).astype(np.float32) * 0.15
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("signals", [["embedding"], ["phash"]])
def test_border_band_finds_every_link_of_the_exact_search(signals):
    """Every pair the exact all-pairs search links is found by the partitioned search with the exact border
    band; without the band (border_clusters 0) pairs split by a k-means border are lost."""
    from curation.dedup import find_links, links, link_radius

    x = border_data()
    cfg = DedupConfig(signals=signals, cluster_size=150, embedding_min_similarity=0.97, phash_max_distance=1.0,
                      border_clusters=30, border_band=1.0)
    emb = x if signals == ["embedding"] else None
    # phash-only: the features are the signs / sqrt(bits); linked at cosine >= 1 - max_distance / 32
    thr = cfg.embedding_min_similarity if emb is not None else 1 - cfg.phash_max_distance / 32
    assert link_radius(cfg, emb is None) == pytest.approx(np.sqrt(2 - 2 * thr))
    slack = 0 if emb is not None else 1e-3 / x.shape[1]  # the stage's float slack on the bit threshold
    truth = set(zip(*(a.tolist() for a in links(x, thr - slack))))
    assert len(truth) > 500

    def found(c: DedupConfig) -> set:
        part, i, j, info = find_links(x, emb, None, None, c, local=True) if emb is not None else \
            _phash_links(x, c)
        assert info["clusters"] == 20
        return {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}

    assert found(cfg) == truth
    none = len(found(cfg.model_copy(update={"border_clusters": 0})))
    assert none < 0.97 * len(truth)
    # The default, narrower band (a share of the exact one) recovers some of them in 16 dimensions (in
    # CLIP's hundreds, where a link rarely points across a border, it loses almost none: bench/dedup.py).
    default = DedupConfig()
    narrow = len(found(cfg.model_copy(update={"border_clusters": default.border_clusters,
                                              "border_band": default.border_band})))
    assert none + 10 < narrow < len(truth)


def _phash_links(x: np.ndarray, cfg: DedupConfig) -> tuple:
    """find_links on x as if it were pHash signs scaled by sqrt(bits) (the stage's phash-only features)."""
    from curation.dedup import find_links

    bits = x.shape[1]
    signs = x * np.sqrt(bits)  # a.b = bits * cos: the stage's sign threshold maps to the same cosine
    thr_bits = bits - 2 * cfg.phash_max_distance * bits / 64
    assert abs(thr_bits / bits - (1 - cfg.phash_max_distance / 32)) < 1e-9
    return find_links(x, None, signs, np.ones(len(x), bool), cfg, local=True)


@pytest.fixture(scope="module")
def own_ray():
    """A 2-CPU local Ray (address "local": never another process's `ray start` cluster on this machine)."""
    import ray

    if not ray.is_initialized():
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"PYTHONPATH": repo}})
    yield ray


@pytest.mark.heavy  # two Ray Data pipelines (~15 s quiet)
def test_rerun_reuses_hashes_and_ray_path(tmp_path, copies, own_ray):
    """The stage through run_stages on a real Ray: hashes computed once; a second run gives the same table."""
    from vidcurate.flow import load_config
    from curation.pipeline import run_stages

    root = fresh(tmp_path, copies)
    st = write_root(root, copies[1])
    (tmp_path / "p.yaml").write_text(f"root: {root}\ninputs: [{root}/clips/v_a.mp4]\nray: {{progress: false}}\n"
                                     "dedup: {signals: [phash], keep_by: null}\n")
    cfg = load_config(str(tmp_path / "p.yaml"))
    ctx = run_stages(cfg, ["dedup"])
    assert ctx.stages["dedup"]["counts"]["duplicates"] == 3 and ctx.stages["dedup"]["errors"] == []
    first = read_dedup(st).to_pylist()
    hashed = tables.read_table(st, "dedup/phash").num_rows
    run_stages(cfg, ["dedup"])
    assert read_dedup(st).to_pylist() == first
    assert tables.read_table(st, "dedup/phash").num_rows == hashed == 6  # nothing hashed twice
    # keep_by null: the longest, then the smallest clip_id ("v_b" < "v_b_crf40" < ...), all 48 frames.
    assert {r["clip_id"] for r in first if r["kept"]} == {"v_a", "v_b", "v_c"}


def test_hash_error_and_config_errors(tmp_path, copies):
    root = fresh(tmp_path, copies)
    clips = dict(copies[1])
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    clips["broken"] = ("clips/broken.mp4", 48)
    st = write_root(root, clips)
    counts = dedup(st, DedupConfig(signals=["phash"]), local=True)
    assert counts["hash_errors"] == 1 and "broken" in counts["errors"][0]
    assert {r["clip_id"]: r["kept"] for r in read_dedup(st).to_pylist()}["broken"] is True
    with pytest.raises(ValueError, match="dedup.signals includes embedding"):
        dedup(st, DedupConfig(), local=True)  # the scores table has no embeddings
    with pytest.raises(ValueError, match="dedup.keep_by"):
        dedup(st, DedupConfig(signals=["phash"], keep_by="nope"), local=True)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="signals"):
        DedupConfig(signals=["md5"])


def test_missing_backend_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from curation.config import ConfigError
    from vidcurate.flow import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "faiss" else real(m, *a))
    (tmp_path / "p.yaml").write_text("root: r\ninputs: ['*.mp4']\ndedup: {backend: faiss}\n")
    with pytest.raises(ConfigError, match="dedup.backend: Value error, backend faiss needs the package faiss-cpu"):
        load_config(str(tmp_path / "p.yaml"), check_inputs=False)


def test_shard_writer_leaves_duplicates_out(tmp_path, copies):
    from shards.config import WriterConfig
    from shards.writer import select

    root = fresh(tmp_path, copies)
    st = write_root(root, copies[1])
    tables.write_part(st, "captions/default", [{"clip_id": c, "text": f"a clip {c}", "error": None, "flags": []}
                                               for c in copies[1]])
    before = select(st, WriterConfig())
    assert len(before.samples) == 6 and "duplicate" not in before.dropped
    dedup(st, DedupConfig(signals=["phash"]), local=True)
    sel = select(st, WriterConfig())
    assert sel.dropped["duplicate"] == 3 and sorted(s["key"] for s in sel.samples) == ["v_a", "v_b", "v_c"]
