"""The caption stage end to end in process with the transformers engine and a tiny random Qwen2.5-VL:
frame sampling, one row per kept clip, resume, error rows for broken clips, re-captioning."""
from __future__ import annotations

import os
import tarfile

import pyarrow.parquet as pq
import pytest

from captioning.config import CaptionConfig
from captioning.frames import frame_count, sample_frames
from captioning.stage import caption_items, clip_items
from captioning.table import CAPTIONS, done_ids, read_captions
from curation.storage import Storage


def tiny_cfg(model: str, **kw) -> CaptionConfig:
    base = dict(model=model, max_tokens=12, max_frames=4, sample_fps=2.0, max_side=112, sink_every=2)
    return CaptionConfig(**{**base, **kw})


def test_frame_count_and_even_sampling(tmp_path):
    from PIL import Image
    import io

    from curation.synth import make_video, read_index_marker, Scene

    cfg = CaptionConfig(sample_fps=1.0, max_frames=6, min_frames=2, max_side=160)
    assert [frame_count(d, cfg) for d in (0.5, 2.0, 4.5, 60.0)] == [2, 2, 4, 6]
    path = str(tmp_path / "idx.mp4")
    make_video(path, [Scene(96, 2.0, 1)], 160, 96, 24.0, with_index=True)  # 4 s, frames carry their index
    frames, fps = sample_frames(path, 4.0, cfg)
    assert len(frames) == 4 and fps == pytest.approx(1.0)
    idx = [read_index_marker(__import__("numpy").asarray(Image.open(io.BytesIO(f)))) for f in frames]
    assert idx == [0, 24, 48, 72]  # one frame per second, from the start
    assert Image.open(io.BytesIO(frames[0])).size == (160, 96)


def test_caption_stage_one_row_per_kept_clip_and_resume(tiny_vlm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    cfg = tiny_cfg(tiny_vlm)
    items = clip_items(st, cfg)
    assert [i["clip_id"] for i in items] == ids[:3]  # the 4th did not pass the filter
    counts = caption_items(st, cfg, items, local=True)
    assert counts["captioned"] + counts["flagged"] == 3 and counts["errors"] == 0
    t = read_captions(st, "default")
    assert t.schema.equals(CAPTIONS) and sorted(t.column("clip_id").to_pylist()) == ids[:3]
    for r in t.to_pylist():
        assert r["engine"] == "transformers" and r["model"] == tiny_vlm and r["prompt"] == "dense-v1"
        assert r["tokens_in"] > 50 and 0 < r["tokens_out"] <= 12 and r["frames"] == 4
        assert r["finish_reason"] in ("stop", "length") and r["error"] is None and r["latency_s"] > 0
        assert r["text"] is not None and r["raw_text"] is not None
        # A random model runs to the token limit: flagged, after one retry.
        if r["finish_reason"] == "length":
            assert "truncated" in r["flags"] and r["retries"] == 1
    assert len(st.list("captions/default", ".parquet")) == 2  # sink_every=2: parts are written as rows arrive
    again = caption_items(st, cfg, items, local=True)
    assert again["skipped"] == 3 and again["captioned"] + again["flagged"] + again["errors"] == 0
    # only_kept=False captions the dropped clip too, in the same run, and nothing twice.
    caption_items(st, tiny_cfg(tiny_vlm, only_kept=False), clip_items(st, tiny_cfg(tiny_vlm, only_kept=False)),
                  local=True)
    raw = pq.read_table(st.path("captions/default")).column("clip_id").to_pylist()
    assert sorted(raw) == sorted(ids)


def test_broken_clip_is_an_error_row_and_is_retried_on_rerun(tiny_vlm, clip_root):
    root, ids = clip_root
    st = Storage(root)
    path = st.path(f"clips/vid0/{ids[1]}.mp4")
    good = open(path, "rb").read()
    open(path, "wb").write(b"not a video")
    cfg = tiny_cfg(tiny_vlm, run="r1", retry_bad=0)
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["unreadable"] == 1 and c["captioned"] + c["flagged"] == 2
    rows = {r["clip_id"]: r for r in read_captions(st, "r1").to_pylist()}
    assert len(rows) == 3 and rows[ids[1]]["error"].startswith("frames: ") and rows[ids[1]]["text"] is None
    assert done_ids(st, "r1") == {ids[0], ids[2]}
    open(path, "wb").write(good)  # fixed: the re-run fills exactly that clip
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["skipped"] == 2 and c["captioned"] + c["flagged"] == 1
    rows = {r["clip_id"]: r for r in read_captions(st, "r1").to_pylist()}
    assert len(rows) == 3 and all(r["error"] is None for r in rows.values())


def test_recaption_cli_on_clips_table_then_shards(tiny_vlm, clip_root, tmp_path):
    from captioning.__main__ import main

    root, ids = clip_root
    sets = ["--set", f"model={tiny_vlm}", "--set", "max_tokens=8", "--set", "max_frames=2", "--set", "max_side=112"]
    assert main(["recaption", "--root", root, "--run", "v2", "--local", *sets]) == 0
    assert sorted(read_captions(Storage(root), "v2").column("clip_id").to_pylist()) == ids[:3]
    # WebDataset shards: two samples with an old caption; the new caption replaces `txt`.
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as t:
        for cid in ids[:2]:
            t.add(Storage(root).path(f"clips/vid0/{cid}.mp4"), f"{cid}.mp4")
            p = tmp_path / f"{cid}.txt"
            p.write_text("old caption")
            t.add(str(p), f"{cid}.txt")
    out = tmp_path / "out"
    args = ["recaption", "--root", root, "--run", "v3", "--local", "--shards", str(shard), "--out", str(out), *sets]
    assert main(args) == 0
    caps = {r["clip_id"]: r["text"] for r in read_captions(Storage(root), "v3").to_pylist()}
    with tarfile.open(out / shard.name) as t:
        names = t.getnames()
        assert names == [f"{ids[0]}.mp4", f"{ids[0]}.txt", f"{ids[1]}.mp4", f"{ids[1]}.txt"]
        assert t.extractfile(f"{ids[0]}.txt").read().decode() == caps[ids[0]] != "old caption"
        assert t.extractfile(f"{ids[0]}.mp4").read() == open(Storage(root).path(f"clips/vid0/{ids[0]}.mp4"), "rb").read()
    # A new key keeps the old caption beside the new one; a second run resumes (nothing to redo).
    out2 = tmp_path / "out2"
    args2 = args[:args.index("--out")] + ["--out", str(out2), "--caption-key", "caption_v3.txt", *sets]
    assert main(args2) == 0
    with tarfile.open(out2 / shard.name) as t:
        assert t.extractfile(f"{ids[1]}.txt").read() == b"old caption"
        assert t.extractfile(f"{ids[1]}.caption_v3.txt").read().decode() == caps[ids[1]]
    assert main(["recaption", "--root", root, "--run", "nope", "--shards", str(tmp_path / "missing-*.tar")]) == 2


def test_recaption_real_broken_shard(tiny_vlm, testdata, tmp_path):
    """video2dataset's shard with 3 good clips and 3 JPEGs named .mp4: 3 captions, 3 errors by key."""
    from captioning.recaption import recaption

    cfg = tiny_cfg(tiny_vlm, max_tokens=4, max_frames=2, retry_bad=0)
    shard = os.path.join(testdata, "webdataset", "return_all_test.tar")
    c = recaption(str(tmp_path / "root"), cfg, [shard], str(tmp_path / "out"), local=True)
    assert (c["captioned"] + c["flagged"], c["unreadable"], c["errors"]) == (3, 3, 0)
    rows = {r["clip_id"]: r for r in read_captions(Storage(str(tmp_path / "root")), "default").to_pylist()}
    assert {k for k, r in rows.items() if r["error"]} == {"000000014", "000000025", "000000356"}
    assert c["shards"] == {"written": 1, "skipped": 0, "incomplete": 0, "missing": 0, "unreadable": 3}


def test_duplicates_are_never_captioned(tiny_vlm, clip_root, monkeypatch):
    """A clip the real dedup stage finds to be a copy of another is left out of the caption work: one
    VLM request saved per duplicate (counted at the engine), and the shards' kept set agrees."""
    import shutil

    import pyarrow as pa

    from captioning.engines.transformers_local import TransformersEngine
    from curation.dedup import DedupConfig, dedup
    from curation.kept import kept_clips
    from curation.tables import write_part

    root, ids = clip_root
    st = Storage(root)
    shutil.copyfile(st.path(f"clips/vid0/{ids[0]}.mp4"), st.path(f"clips/vid0/{ids[1]}.mp4"))  # a real copy
    write_part(st, "scores", [{"clip_id": c, "passed": k < 3, "error": None} for k, c in enumerate(ids)],
               pa.schema([("clip_id", pa.string()), ("passed", pa.bool_()), ("error", pa.string())]))
    counts = dedup(st, DedupConfig(signals=["phash"], keep_by=None), local=True, progress=False)
    assert counts["duplicates"] == 1
    assert [c["clip_id"] for c in kept_clips(st)] == [ids[0], ids[2]]  # ids[1] (same id order: the later one)

    asked: list[str] = []
    real = TransformersEngine.generate

    def counting(self, requests, prompt, params):  # the real engine, its requests counted
        asked.extend(r.clip_id for r in requests)
        return real(self, requests, prompt, params)

    monkeypatch.setattr(TransformersEngine, "generate", counting)
    cfg = tiny_cfg(tiny_vlm, retry_bad=0)
    c = caption_items(st, cfg, clip_items(st, cfg), local=True)
    assert c["clips"] == 2 and c["captioned"] + c["flagged"] == 2
    assert sorted(set(asked)) == [ids[0], ids[2]] and len(asked) == 2  # 3 kept by the filter: 1 VLM call saved
    assert sorted(read_captions(st, "default").column("clip_id").to_pylist()) == [ids[0], ids[2]]


def test_a_sampled_vlm_caption_does_not_depend_on_its_batch(tiny_vlm, tmp_path):
    """The transformers VLM engine at a retry's temperature: a clip's caption is the same in a batch of three,
    alone and in reverse order (each request samples from its own seeded stream)."""
    from captioning.engines import CaptionRequest, SamplingParams, make_engine
    from captioning.prompts import get_prompt
    from curation.synth import Scene, make_video

    cfg = tiny_cfg(tiny_vlm, max_tokens=8, max_frames=2)
    reqs = []
    for k, seconds in enumerate((1.0, 2.0, 1.5)):  # different lengths: different frame counts and padding
        path = str(tmp_path / f"c{k}.mp4")
        make_video(path, [Scene(int(12 * seconds), 2.0, k)], 112, 64, 12.0)
        frames, fps = sample_frames(path, seconds, cfg)
        reqs.append(CaptionRequest(f"c{k}", frames, fps))
    engine, prompt, hot = make_engine(cfg), get_prompt("dense-v1"), SamplingParams(8, 0.7, 1.0, seed=1)
    together = [g.text for g in engine.generate(reqs, prompt, hot)]
    assert together == [engine.generate([r], prompt, hot)[0].text for r in reqs]
    assert together == [g.text for g in engine.generate(reqs[::-1], prompt, hot)][::-1]
    assert together != [g.text for g in engine.generate(reqs, prompt, SamplingParams(8, 0.7, 1.0, seed=2))]
