"""Fuzz run: 200 mutated copies of the real test videos (byte flips, truncation, zeroed blocks, header damage)
plus odd containers, through probe -> split -> filter -> caption (tiny random VLM) in one Ray run.
0 crashed runs; every file that fails is an error row naming the file and the cause (docs/faults.md).

Small inputs keep it to a few minutes: the first second of each real video, re-encoded at 128 px wide
(its container kept), then mutated with a seeded RNG.
"""
from __future__ import annotations

import collections
import glob
import os
import random
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from curation import tables
from curation.storage import Storage

SEED = 26
COPIES = 200
MUTATIONS = ("flip", "truncate", "zero", "header")


def small_copy(src: str, dst: str, seconds: float = 1.0, width: int = 128) -> bool:
    """The first `seconds` of `src` re-encoded at `width` px wide into `dst` (same container); False if none."""
    try:
        with av.open(src) as c, av.open(dst, "w") as out:
            st = c.streams.video[0]
            rate = Fraction(st.average_rate or 24).limit_denominator(1001)
            o = out.add_stream("mpeg4" if dst.endswith(".avi") else "libx264", rate=rate)
            o.width, o.height, o.pix_fmt = width, max(2, round(st.codec_context.height * width / st.codec_context.width / 2) * 2), "yuv420p"
            for i, fr in enumerate(c.decode(st)):
                if i >= float(rate) * seconds:
                    break
                # a new frame (no source timestamps or time base): the encoder numbers frames at `rate`
                img = av.VideoFrame.from_ndarray(fr.to_ndarray(width=o.width, height=o.height, format="rgb24"),
                                                 format="rgb24")
                for p in o.encode(img):
                    out.mux(p)
            for p in o.encode():
                out.mux(p)
        return os.path.getsize(dst) > 0
    except (av.error.FFmpegError, IndexError, ZeroDivisionError):
        return False


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    d = bytearray(data)
    if kind == "flip":  # 1-64 random bytes flipped anywhere
        for _ in range(rng.randint(1, 64)):
            d[rng.randrange(len(d))] ^= rng.randint(1, 255)
    elif kind == "truncate":  # cut short anywhere
        d = d[: rng.randint(0, len(d) - 1)]
    elif kind == "zero":  # a zeroed block of 256 B - 8 KiB
        i, n = rng.randrange(len(d)), rng.randint(256, 8192)
        d[i:i + n] = bytes(len(d[i:i + n]))
    else:  # header damage: random bytes over the first 16-512 bytes, or a box name broken
        if rng.random() < 0.5:
            n = rng.randint(16, 512)
            d[:n] = bytes(rng.getrandbits(8) for _ in range(n))
        else:
            for box in (b"ftyp", b"moov", b"mdat", b"\x1aE\xdf\xa3"):
                i = bytes(d).find(box)
                if i >= 0:
                    d[i:i + 4] = b"xxxx"
                    break
    return bytes(d)


def odd_containers(folder: str) -> list[str]:
    """Files that are not, or barely, videos: each must be an error row or a clean result, never a crash."""
    made = []

    def video(name: str, codec: str, w: int, h: int, n: int, fmt: str | None = None) -> None:
        p = os.path.join(folder, name)
        try:
            with av.open(p, "w", format=fmt) as out:
                st = out.add_stream(codec, rate=12)
                st.width, st.height, st.pix_fmt = w, h, "yuv420p"
                for i in range(n):
                    img = av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 20) % 255, np.uint8), format="rgb24")
                    for pkt in st.encode(img.reformat(format="yuv420p")):
                        out.mux(pkt)
                for pkt in st.encode():
                    out.mux(pkt)
            made.append(p)
        except av.error.FFmpegError:
            if os.path.exists(p):
                os.remove(p)

    video("tiny_2x2.mp4", "libx264", 2, 2, 24)
    video("one_frame.mp4", "libx264", 64, 48, 1)
    video("mpeg4.avi", "mpeg4", 96, 64, 24, "avi")
    video("vp9.webm", "libvpx-vp9", 96, 64, 12, "webm")
    video("h264.mkv", "libx264", 96, 64, 24, "matroska")
    audio = os.path.join(folder, "audio_only.mp4")
    with av.open(audio, "w") as out:
        st = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(8):
            frame.pts = i * 1024
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    made.append(audio)
    for name, data in (("empty.mp4", b""), ("text.mp4", b"not a video at all\n" * 10),
                       ("png.mp4", b"\x89PNG\r\n\x1a\n" + bytes(200)), ("zeros.mov", bytes(4096))):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        made.append(os.path.join(folder, name))
    return made


@pytest.fixture(scope="module")
def fuzz_inputs(testdata, tmp_path_factory) -> tuple[str, dict]:
    folder = str(tmp_path_factory.mktemp("fuzz"))
    base = os.path.join(folder, "base")
    os.makedirs(base)
    sources = sorted(p for d in ("bbb", "decord", "scenedetect", "sintel") for p in glob.glob(os.path.join(testdata, d, "*"))
                     if p.rsplit(".", 1)[-1] in ("mp4", "mov", "mkv") and "corrupted" not in p)
    bases = []
    for i, s in enumerate(sources):
        dst = os.path.join(base, f"b{i}_{os.path.basename(s).rsplit('.', 1)[0]}.{s.rsplit('.', 1)[-1]}")
        if small_copy(s, dst):
            bases.append(dst)
    assert len(bases) >= 5, sources
    raw = os.path.join(folder, "raw")
    os.makedirs(raw)
    rng = random.Random(SEED)
    kinds: dict[str, str] = {}
    for k in range(COPIES):
        src, kind = rng.choice(bases), MUTATIONS[k % len(MUTATIONS)]
        name = f"m{k:03d}_{kind}_{os.path.basename(src)}"
        with open(src, "rb") as f, open(os.path.join(raw, name), "wb") as g:
            g.write(mutate(f.read(), kind, rng))
        kinds[name] = kind
    for p in odd_containers(raw):
        kinds[os.path.basename(p)] = "odd"
    return raw, kinds


@pytest.mark.heavy
def test_fuzz_probe_split_filter_caption(fuzz_inputs, tmp_path):
    from captioning.table import read_captions
    from captioning.tiny_vlm import build_tiny_qwen25_vl
    from curation.pipeline import run_stages
    from vidcurate.flow import load_config

    raw, kinds = fuzz_inputs
    vlm = build_tiny_qwen25_vl(str(tmp_path / "vlm"))
    p = tmp_path / "pipelines.yaml"
    p.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                 "split: {min_clip_s: 0.3}\n"
                 "filter: {store_embedding: false, scorers: {motion: {type: motion}}}\n"
                 f"caption: {{model: {vlm}, max_tokens: 4, max_frames: 2, max_side: 64, "
                 "resources: {num_cpus: 1, workers: 1, batch_size: 8}}\n")
    cfg = load_config(str(p))
    t0 = time.time()
    ctx = run_stages(cfg, ["probe", "split", "filter", "caption"])  # 0 crashed runs: it returns
    took = time.time() - t0
    st = Storage(cfg.root)
    videos = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    assert sorted(os.path.basename(v["source"]) for v in videos) == sorted(kinds)  # every file has its row
    bad = [v for v in videos if v["error"]]
    for v in bad:  # names the file and the cause
        _, _, cause = v["error"].partition(v["source"])
        assert len(cause.strip(": ")) > 5, v["error"]
    clips = tables.read_table(st, "clips", tables.CLIPS).to_pylist()
    split_errors = [c for c in clips if c["status"] == "error"]
    for c in split_errors:
        assert c["source"] in c["reason"], c
    # every usable video was split (clips or an error row), except those a probe prefilter set aside
    usable = {v["video_id"] for v in videos if tables.usable_video(v) and not v["reasons"]}
    assert {c["video_id"] for c in clips} == usable
    ok = {c["clip_id"] for c in clips if c["status"] == "ok"}
    scores = tables.read_table(st, "scores").to_pylist()
    assert {r["clip_id"] for r in scores} == ok
    caps = read_captions(st, cfg.caption.run).to_pylist()
    assert {r["clip_id"] for r in caps} == {r["clip_id"] for r in scores if r["passed"]}
    by_kind = collections.Counter((kinds[os.path.basename(v["source"])], bool(v["error"]), bool(v["truncated"]))
                                  for v in videos)
    causes = collections.Counter(_cause(v["error"].partition(v["source"])[2]) for v in bad)
    print(f"\nfuzz: {len(kinds)} files in {took:.0f} s; videos (kind, error, truncated): {dict(sorted(by_kind.items()))}; "
          f"causes: {dict(causes.most_common())}; clips ok {len(ok)} (truncated "
          f"{sum(1 for c in clips if c['status'] == 'ok' and (c['reason'] or '').startswith('truncated'))}), "
          f"split errors {len(split_errors)}, scores errors {sum(1 for r in scores if r['error'])}, captions "
          f"{len(caps)} (errors {sum(1 for r in caps if r['error'])}); stage seconds "
          f"{ {k: v.get('seconds') for k, v in ctx.stages.items()} }")


def _cause(cause: str) -> str:
    """The text after the file name in an error, reduced to its kind (for the summary)."""
    for key in ("decode failed after", "cannot open", "no video stream", "empty file", "no decodable", "decode failed"):
        if key in cause:
            return key
    return cause[:40]
