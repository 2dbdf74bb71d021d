"""Training loader: exactly-once across ranks and workers, buckets, fps, bad samples, images, exact resume."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from curation.synth import Scene, make_video, read_index_marker
from shards.config import ShardConfig, WriterConfig
from shards.loader import ShardLoader
from shards.pixels import unit_range

VIDEO_BUCKETS = [{"frames": 9, "height": 64, "width": 96}, {"frames": 9, "height": 64, "width": 64},
                 {"frames": 5, "height": 64, "width": 96}]


def _loader(shards, rank=0, world=1, seed=0, **kw) -> ShardLoader:
    params = {"shards": shards if isinstance(shards, list) else [shards], "num_workers": 0,
              "buckets": VIDEO_BUCKETS, "batch_size": 2, "shuffle_buffer": 4, **kw}
    return ShardLoader(params, rank=rank, world_size=world, seed=seed)


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _png(w: int, h: int, value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_two_ranks_two_workers_see_every_kept_clip_once_per_epoch(demo_shards):
    d, folder = demo_shards
    sc = ShardConfig(writer=WriterConfig(), loader={"num_workers": 2, "batch_size": 2, "buckets": VIDEO_BUCKETS})
    for epoch in range(2):
        seen, shapes = [], set()
        for rank in range(2):
            loader = ShardLoader(sc, rank=rank, world_size=2, seed=7, root=d.root)
            loader.set_epoch(epoch)
            for b in loader:
                x = b["frames"]
                assert x.dtype == torch.uint8 and x.shape[0] == len(b["keys"]) == len(b["captions"])
                assert tuple(x.shape[1:]) == (b["bucket"][0], 3, b["bucket"][1], b["bucket"][2])
                assert x.float().std().item() > 5
                for k, c, m in zip(b["keys"], b["captions"], b["meta"]):
                    assert c == d.captions[k] and m["clip"]["clip_id"] == k
                seen += b["keys"]
                shapes.add(tuple(x.shape[1:]))
            assert loader.stats["bad"] == {} and loader.stats["skipped"] == {}
        assert sorted(seen) == sorted(d.kept), f"epoch {epoch}"
        assert {(9, 3, 64, 96), (9, 3, 64, 64)} == shapes  # 160x96 and 96x96 clips -> two buckets


def test_real_shard_with_broken_samples(testdata):
    tar = os.path.join(testdata, "webdataset", "return_all_test.tar")
    loader = _loader(tar, batch_size=1)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == ["0000008_00001", "0000030_00005", "0000038_00003"]
    assert sorted(loader.stats["bad"]) == ["000000014", "000000025", "000000356"]
    assert all("still image" in r for r in loader.stats["bad"].values())


def test_corrupt_samples_are_skipped_and_counted_by_key(tmp_path, demo_shards):
    d, folder = demo_shards
    good = os.path.join(folder, "shard-000000.tar")
    with tarfile.open(good) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    mp4 = next(v for n, v in members if n.endswith(".mp4"))
    bad = _write_tar(str(tmp_path / "bad.tar"), [
        ("trunc.mp4", mp4[: len(mp4) // 3]), ("trunc.txt", b"cut short"),
        ("noise.mp4", os.urandom(5000)), ("noise.txt", b"noise"),
        ("nomedia.txt", b"only a caption"),
        ("badjson.mp4", mp4), ("badjson.json", b"{not json"),
        ("badimg.jpg", b"\xff\xd8 not really"),
    ] + members)
    loader = _loader([bad], batch_size=1)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == sorted({n.split(".")[0] for n, _ in members})
    assert sorted(loader.stats["bad"]) == ["badimg", "badjson", "noise", "nomedia", "trunc"]
    assert "no video or image member" in loader.stats["bad"]["nomedia"]
    # A tar cut short: the samples before the cut load, the shard and the cut sample are reported.
    raw = open(good, "rb").read()
    cut = str(tmp_path / "cut.tar")
    open(cut, "wb").write(raw[: len(raw) * 2 // 3])
    loader = _loader([cut], batch_size=1)
    assert len([k for b in loader for k in b["keys"]]) == 1
    assert any(k.endswith("cut.tar#tar") and "unreadable tar" in r for k, r in loader.stats["bad"].items())


def test_frame_sampling_honours_the_target_fps(tmp_path):
    src = str(tmp_path / "indexed.mp4")
    make_video(src, [Scene(96, 2.0, 6)], 160, 96, 24.0, with_index=True)
    data = open(src, "rb").read()
    tar = _write_tar(str(tmp_path / "idx.tar"), [("clip.mp4", data), ("clip.txt", b"indexed")])
    for fps, step in ((8.0, 3), (12.0, 2), (24.0, 1), (48.0, 1)):
        loader = _loader(tar, fps=fps, batch_size=1, buckets=[{"frames": 17, "height": 96, "width": 160}])
        (b,) = list(loader)
        frames = b["frames"][0].permute(0, 2, 3, 1).numpy()
        got = [read_index_marker(f) for f in frames]
        start = got[0]
        assert got == [start + step * k for k in range(17)], (fps, got)
        assert b["meta"][0]["_sample"]["indices"] == got and b["meta"][0]["_sample"]["fps"] == 24.0 / step
    # Without a random start the window begins at the first frame.
    (b,) = list(_loader(tar, fps=8.0, batch_size=1, random_start=False,
                        buckets=[{"frames": 9, "height": 96, "width": 160}]))
    assert b["meta"][0]["_sample"]["indices"] == [0, 3, 6, 9, 12, 15, 18, 21, 24]


def test_late_windows_are_reached_by_seeking_to_the_same_frames(tmp_path):
    import subprocess

    import av

    from shards.buckets import plan_sample
    from shards.loader import Info, decode_video_pyav

    src, gop = str(tmp_path / "long.mp4"), str(tmp_path / "gop12.mp4")
    make_video(src, [Scene(240, 2.0, 8)], 160, 96, 24.0, with_index=True, crf=4)
    subprocess.run(["ffmpeg", "-v", "error", "-i", src, "-c:v", "libx264", "-g", "12", "-bf", "2", "-crf", "4",
                    "-preset", "ultrafast", gop], check=True)
    data = open(gop, "rb").read()
    bucket = [{"frames": 9, "height": 96, "width": 160}]
    from shards.config import Bucket

    info = Info("video", "mp4", 160, 96, 240, 24.0)
    # B frames: windows placed by time skip the unsampled non-reference ones, the same frames come out.
    with av.open(gop) as c:
        assert c.streams.video[0].codec_context.has_b_frames
    for start, step in ((0, 3), (47, 3), (48, 3), (100, 3), (215, 3), (1, 1), (5, 2), (60, 1)):
        plan = plan_sample([Bucket(**bucket[0])], 0, 160, 96, 240, 24.0, 8.0, None)
        plan = type(plan)(0, tuple(start + step * k for k in range(9)), 8.0, plan.resize, plan.crop)
        seek = decode_video_pyav(data, plan, Bucket(**bucket[0]), info)
        assert [read_index_marker(f) for f in seek] == list(plan.indices)
        assert np.array_equal(seek, decode_video_pyav(data, plan, Bucket(**bucket[0]), info, seek=False))


def test_images_mix_with_videos_and_buckets_are_uniform(tmp_path, demo_shards):
    d, folder = demo_shards
    pics = [(f"img{i}.png", _png(w, h, 40 * i)) for i, (w, h) in
            enumerate([(200, 100), (90, 100), (64, 64), (300, 150), (70, 70)])]
    imgs = _write_tar(str(tmp_path / "imgs.tar"), pics[:1] + [("img0.txt", b"wide picture")] + pics[1:])
    buckets = VIDEO_BUCKETS + [{"frames": 1, "height": 64, "width": 128, "batch_size": 3},
                               {"frames": 1, "height": 64, "width": 64}]
    loader = _loader([folder, imgs], buckets=buckets, num_workers=2)
    per_shape: dict[tuple, list[str]] = {}
    for b in loader:
        per_shape.setdefault(tuple(b["frames"].shape[1:]), []).extend(b["keys"])
        assert len(b["keys"]) <= (3 if b["bucket"] == (1, 64, 128) else 2)
    assert sorted(per_shape[(1, 3, 64, 128)]) == ["img0", "img3"]  # 2:1 pictures
    assert sorted(per_shape[(1, 3, 64, 64)]) == ["img1", "img2", "img4"]
    videos = [k for s, ks in per_shape.items() if s[0] > 1 for k in ks]
    assert sorted(videos) == sorted(d.kept)
    assert loader.stats["uncaptioned"] == 4  # images without a .txt still load, and are counted
    assert loader.stats["bad"] == {}


def test_short_clips_that_fit_no_bucket_are_reported(demo_shards):
    d, folder = demo_shards
    loader = _loader(folder, buckets=[{"frames": 49, "height": 64, "width": 64}])  # 2 s at 8 fps = 16 frames
    assert list(loader) == []
    assert sorted(loader.stats["skipped"]) == sorted(d.kept)


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_exactly(tmp_path, demo_shards, workers):
    d, folder = demo_shards
    with tarfile.open(os.path.join(folder, "shard-000001.tar")) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    # A corrupt sample early in the stream: the replay must drop it at the same place without decoding.
    extra = _write_tar(str(tmp_path / "extra.tar"), [("broken.mp4", os.urandom(3000)), ("broken.txt", b"x")] +
                       [(n.replace("video", "copy"), v) for n, v in members])
    shards = [folder, extra]
    full = [(b["keys"], b["frames"]) for b in _loader(shards, batch_size=1, num_workers=workers, seed=3)]
    assert len(full) == len(d.kept) + 2
    for cut in (1, 4, len(full) - 1):
        loader = _loader(shards, batch_size=1, num_workers=workers, seed=3)
        it = iter(loader)
        head = [next(it)["keys"] for _ in range(cut)]
        state = json.loads(json.dumps(loader.state_dict()))  # JSON-able, as a checkpoint stores it
        del it
        resumed = _loader(shards, batch_size=1, num_workers=workers, seed=3)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert head + [b["keys"] for b in rest] == [k for k, _ in full]
        for b, (_, frames) in zip(rest, full[cut:]):
            assert torch.equal(b["frames"], frames)
        assert resumed.stats["bad"].keys() == {"broken"} and resumed.stats["samples"] == len(full)
        assert resumed.epoch == 1
    # Resumed right after the epoch's last batch: the next iteration is the next epoch, as uninterrupted.
    loader = _loader(shards, batch_size=1, num_workers=workers, seed=3)
    it = iter(loader)
    for _ in range(len(full)):
        next(it)
    state = loader.state_dict()
    del it
    uninterrupted = [b["keys"] for b in loader]  # the rest of epoch 0 (nothing), then epoch 1
    resumed = _loader(shards, batch_size=1, num_workers=workers, seed=3)
    resumed.load_state_dict(state)
    assert [b["keys"] for b in resumed] == uninterrupted and len(uninterrupted) == len(full)
    loader = _loader(shards, batch_size=1, num_workers=workers, seed=3)
    it = iter(loader)
    for _ in range(len(full) - 1):
        next(it)
    del it
    # An abandoned iteration continues from its position; the next epoch is a new order of the same
    # samples; a mismatched loader refuses the state.
    assert [b["keys"] for b in loader] == [k for k, _ in full][-1:] and loader.epoch == 1
    second = [b["keys"] for b in loader]
    assert sorted(sum(second, [])) == sorted(sum([k for k, _ in full], [])) and second != [k for k, _ in full]
    with pytest.raises(ValueError, match="num_workers|streams"):
        _loader(shards, num_workers=workers + 1).load_state_dict(state)


def test_decord_and_file_urls(demo_shards):
    d, folder = demo_shards
    tars = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".tar"))
    urls = ["file://" + t for t in tars]
    a = {k: x for b in _loader(urls, decoder="pyav", random_start=False, batch_size=1)
         for k, x in zip(b["keys"], b["frames"])}
    b_ = {k: x for b in _loader(tars, decoder="decord", random_start=False, batch_size=1)
          for k, x in zip(b["keys"], b["frames"])}
    assert a.keys() == b_.keys() == set(d.kept)
    for k in a:
        assert a[k].shape == b_[k].shape
        assert (unit_range(a[k]) - unit_range(b_[k])).abs().mean().item() < 0.05  # same frames, different scalers


def test_float32_frames_are_the_trainers_conversion_of_the_uint8_ones(demo_shards):
    _, folder = demo_shards
    u8 = [b["frames"] for b in _loader(folder, seed=5)]
    f32 = [b["frames"] for b in _loader(folder, seed=5, frames_dtype="float32")]
    assert len(u8) == len(f32) > 0
    for a, b in zip(u8, f32):
        assert a.dtype == torch.uint8 and b.dtype == torch.float32 and a.shape == b.shape
        assert torch.equal(unit_range(a), b) and torch.equal(unit_range(b), b)
        assert -1.0 <= b.min().item() and b.max().item() <= 1.0 and b.std().item() > 0.05
    edges = unit_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert edges.tolist() == [-1.0, 1.0]


def test_bad_parameters_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no .tar"):
        _loader(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="4k\\+1"):
        ShardConfig.model_validate({"loader": {"buckets": [{"frames": 8, "height": 64, "width": 64}]}})
    with pytest.raises(ValueError, match="rank 2 is outside"):
        ShardLoader({"shards": [str(tmp_path)]}, rank=2, world_size=2)


def test_black_bars_of_the_borders_scorer_are_cropped(tmp_path):
    """A letterboxed clip whose scores carry the borders box loads without its bars (and is bucketed by
    the picture's aspect); with crop_borders null the bars stay."""
    from curation.synth import Camera, make_camera_video

    src = str(tmp_path / "lb.mp4")
    make_camera_video(src, Camera(pan=2.0), frames=24, width=192, height=108)
    import av

    frames = [f.to_ndarray(format="rgb24") for f in av.open(src).decode(video=0)]
    boxed = str(tmp_path / "boxed.mp4")
    with av.open(boxed, "w") as out:  # 192x144 frame: the 192x108 picture between two 18-px bars
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt, st.options = 192, 144, "yuv420p", {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            img = np.zeros((144, 192, 3), np.uint8)
            img[18:126] = f
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    meta = {"clip": {"width": 192, "height": 144, "frames": 24, "fps": 24.0},
            "scores": {"borders_left": 0.0, "borders_top": 19 / 144, "borders_right": 0.0, "borders_bottom": 19 / 144}}
    tar = _write_tar(str(tmp_path / "lb.tar"), [("lb.mp4", open(boxed, "rb").read()), ("lb.txt", b"boxed"),
                                                 ("lb.json", json.dumps(meta).encode())])
    buckets = [{"frames": 5, "height": 64, "width": 112}, {"frames": 5, "height": 64, "width": 80}]
    (b,) = list(_loader(tar, batch_size=1, buckets=buckets))
    assert b["bucket"] == (5, 64, 112)  # 16:9 picture, not the 4:3 frame
    rows = b["frames"][0].permute(0, 2, 3, 1).float().mean(dim=(0, 2, 3))
    assert rows.min() > 30, rows  # no black row left
    assert b["meta"][0]["_sample"]["picture_box"] == [0, 19, 192, 106]
    (k,) = list(_loader(tar, batch_size=1, buckets=buckets, crop_borders=None))
    assert k["bucket"] == (5, 64, 80)
    rows = k["frames"][0].permute(0, 2, 3, 1).float().mean(dim=(0, 2, 3))
    assert rows[0] < 5 and rows[-1] < 5  # the bars are still there


def test_samples_decoded_into_batch_slots_equal_lone_decodes(demo_shards):
    _, folder = demo_shards
    one = {k: f.clone() for b in _loader(folder, batch_size=1) for k, f in zip(b["keys"], b["frames"])}
    held = list(_loader(folder, batch_size=3))
    assert sum(len(b["keys"]) for b in held) == len(one) and any(len(b["keys"]) > 1 for b in held)
    for b in held:  # each sample decoded into its slot equals the same sample decoded alone
        for k, f in zip(b["keys"], b["frames"]):
            assert torch.equal(f, one[k]), k


def test_read_ahead_parses_each_json_once_for_the_first_placement():
    from shards.loader import SampleError, _json, _read_ahead

    good, bad = {"__key__": "g", "json": b'{"a": {"b": 1}}'}, {"__key__": "b", "json": b"{"}
    assert list(_read_ahead(iter([good, bad]), n=8)) == [good, bad]
    first, again = _json(good), _json(good)  # a second placement (score-aware copies) parses anew
    assert first == again == {"a": {"b": 1}} and first["a"] is not again["a"] and "__json__" not in good
    for _ in range(2):
        with pytest.raises(SampleError, match="not valid JSON"):
            _json(bad)
