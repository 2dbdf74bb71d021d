"""Training loader over WebDataset shards: bucketed batches of frames in [-1, 1], resumable exactly.

API (what the trainer codes against)
------------------------------------
    from shards.loader import ShardLoader

    loader = ShardLoader(cfg, rank=0, world_size=1, seed=0)
    #   cfg: a PipelineConfig (uses cfg.shard.loader; shards default to <root>/shards/<writer.name>/),
    #        a ShardConfig or a LoaderConfig (then `shards` must be set), or a dict of LoaderConfig fields.
    #   Optional keywords: `root=` resolves the default shard folder when cfg is not a PipelineConfig;
    #   `shards=[...]` overrides the shard list (paths, s3://, gs://, file://, http(s)://, folders, globs).
    #   `weights=SampleWeights(...)`: score-aware copies per epoch and score text (shards/weights.py).
    #   `plan_only=True`: no decoding, batch["frames"] is None (training/cache.py maps keys to latents);
    #   `only_keys={...}`: only these samples (the cache encodes the clips it lacks).
    for batch in loader:            # one pass = one epoch; the next `for` runs the next epoch
        batch["frames"]             # (B, F, C, H, W), C = 3 (RGB): torch.uint8 0..255 (frames_dtype uint8, the
                                    # default) or float32 in [-1, 1]; shards.pixels.unit_range gives [-1, 1]
        batch["captions"]           # list[str] of length B ("" when a sample has no caption)
        batch["keys"]               # list[str]: sample keys (clip ids for our own shards)
        batch["meta"]               # list[dict]: the sample's .json plus "_sample": {fps, indices, bucket, url,
                                    #   source_size, picture_box, resize, crop}
        batch["bucket"]             # (F, H, W) of this batch: every batch has one shape
    state = loader.state_dict()     # plain dict (JSON-able): the position after the last batch yielded
    loader.load_state_dict(state)   # the next iteration continues with exactly the batch that came next
    loader.stats                    # this epoch: {"samples", "batches", "bad": {key: reason},
                                    #              "skipped": {key: reason}, "uncaptioned": int}
    loader.epoch                    # the epoch the next (or current) iteration runs
    loader.set_epoch(e)             # jump to an epoch (resets the position)

Every batch holds samples of one bucket (frames F = 4k+1 at the target fps, resized keeping aspect to
cover HxW, then cropped). Images (jpg/png members) are 1-frame samples of the 1-frame buckets.
Corrupt or undecodable samples never stop the loader: they are skipped and listed by key in
`stats["bad"]`; samples that fit no bucket (too short) are listed in `stats["skipped"]`.

How it works
------------
Each rank runs `num_workers` DataLoader workers ("streams", class Stream; 0 workers = one stream in-process). The
epoch's shard list (shuffled with seed+epoch) is dealt round-robin to the world_size * num_workers
streams. A stream reads its tars, shuffles samples in a seeded buffer, picks each sample's bucket and
frame indices from its metadata (shards.buckets), decodes it (PyAV, or decord) straight into its slot of
the bucket's batch array (tar members come from shards.tars, READ_AHEAD samples at a time) and emits a
batch when a bucket is full; at the end partial batches are emitted (unless drop_last), so every sample appears
exactly once per epoch. Batches from streams are handed out in a fixed round-robin order.

Exact resume: a stream's output is a deterministic function of (seed, epoch, rank, stream, shards) and
of which samples failed to decode. The state records, per stream, how many batches were consumed and
the bad keys reported so far. On resume a stream replays its prefix without decoding (bucket choice
needs only metadata; the known bad keys are dropped at the same places), then goes on decoding.
"""
from __future__ import annotations

import glob
import io
import itertools
import json
import os
import random
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow.fs as pafs
import torch

from shards.buckets import Plan, choose_bucket, picture_box, plan_sample, sample_rng
from shards.weights import SampleWeights, copies, score_caption
from shards.config import Bucket, LoaderConfig, ShardConfig
from shards.pixels import to_unit
from shards.tars import tar_members
from curation.filters.borders import content_box
from curation.uris import redact

STATE_VERSION = 1


class SampleError(RuntimeError):
    """A sample that cannot become frames; the message says why (reported by key in the stats)."""


# ----------------------------------------------------------------------------------------- shards ---

def resolve_shards(entries: list[str]) -> list[str]:
    """Expand folders, globs and brace patterns ({000..009}) into a sorted list of tar paths/URLs."""
    out: list[str] = []
    for entry in entries:
        for item in _braces(entry):
            found = _expand_one(item)
            if not found:
                raise FileNotFoundError(f"shards: {item!r} matches no .tar file")
            out.extend(found)
    return sorted(set(out))


def _braces(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand

        return list(braceexpand(pattern))
    except ImportError:
        return [pattern]


def _expand_one(item: str) -> list[str]:
    if item.startswith(("http://", "https://", "pipe:")):
        return [item]
    if "://" in item:
        from curation.storage import expand_inputs, filesystem

        head, sep, query = item.partition("?")  # object-store options (endpoint, region) ride in the query
        if any(c in head for c in "*["):
            return expand_inputs([item])
        fs, path = filesystem(item)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            return [f"{head.rstrip('/')}/{i.base_name}{sep}{query}" for i in infos
                    if i.type == pafs.FileType.File and i.base_name.endswith(".tar") and not i.base_name.startswith(".tmp-")]
        return [item] if info.type == pafs.FileType.File else []
    item = os.path.expanduser(item)
    if os.path.isdir(item):
        return [os.path.join(item, f) for f in sorted(os.listdir(item)) if f.endswith(".tar")
                and not f.startswith(".tmp-")]
    return [os.path.abspath(p) for p in glob.glob(item) if os.path.isfile(p)]


def open_shard(url: str) -> Any:
    """A readable binary stream for a local path, an object-store URI (pyarrow.fs) or http/pipe: (webdataset)."""
    if url.startswith(("http://", "https://", "pipe:")):
        import webdataset as wds

        return wds.gopen(url)
    if "://" in url:
        from curation.storage import filesystem

        fs, path = filesystem(url)
        return fs.open_input_stream(path)
    return open(url, "rb")


def iter_tar_samples(url: str, errors: list[tuple[str, str]]) -> Iterator[dict]:
    """Samples ({"__key__", ext: bytes, ...}) of one tar; a broken tar records an error and ends early."""
    from webdataset.tariterators import group_by_keys

    def handler(exn: Exception) -> bool:
        errors.append((redact(url), f"unreadable tar: {type(exn).__name__}: {exn.args[0] if exn.args else exn}"))
        return False  # stop this shard: the rest of a broken tar stream cannot be trusted

    try:
        stream = open_shard(url)
    except Exception as e:
        errors.append((redact(url), f"cannot open shard: {type(e).__name__}: {e}"))
        return
    try:
        yield from group_by_keys(tar_members(stream, url, handler), handler=handler)
    finally:
        stream.close()


# -------------------------------------------------------------------------------------- decoding ---

@dataclass
class Info:
    """What bucketing needs to know about a sample, from its .json or its container header."""

    kind: str  # "video" or "image"
    ext: str  # the member holding the media
    width: int  # display size (upright, square pixels)
    height: int
    frames: int  # decodable frames (1 for images)
    fps: float  # source frame rate (0 for images)
    rotation: int = 0  # clockwise degrees applied after decode


def sample_info(sample: dict, meta: dict, cfg: LoaderConfig) -> Info:
    """Kind, size, length and rate of a sample; raises SampleError when it has no usable media."""
    for ext in cfg.video_exts:
        if ext in sample:
            m = meta.get("clip", meta)
            if all(isinstance(m.get(k), (int, float)) and m.get(k) for k in ("width", "height", "frames", "fps")):
                return Info("video", ext, int(m["width"]), int(m["height"]), int(m["frames"]), float(m["fps"]))
            return _probe_video(sample[ext], ext)
    for ext in cfg.image_exts:
        if ext in sample:
            try:
                from PIL import Image

                with Image.open(io.BytesIO(sample[ext])) as im:
                    w, h = im.size
            except Exception as e:
                raise SampleError(f".{ext} is not a readable image ({type(e).__name__}: {e})") from None
            return Info("image", ext, w, h, 1, 0.0)
    members = sorted(k for k in sample if not k.startswith("__"))
    raise SampleError(f"no video or image member (has {members})")


# Demuxers that accept a lone still image: such bytes under a video name are not a video.
_IMAGE_FORMATS = {"image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "gif", "mjpeg", "tiff_pipe"}


def _probe_video(data: bytes, ext: str) -> Info:
    import av

    from curation.video import stream_rotation, stream_sar

    try:
        with av.open(io.BytesIO(data), "r") as c:
            if c.format.name in _IMAGE_FORMATS or any(n in _IMAGE_FORMATS for n in c.format.name.split(",")):
                raise SampleError(f".{ext} holds a still image ({c.format.name}), not a video")
            if not c.streams.video:
                raise SampleError(f".{ext} has no video stream")
            st = c.streams.video[0]
            fps = float(st.average_rate or st.guessed_rate or 0)
            frames = int(st.frames or 0)
            if not frames and st.duration and st.time_base and fps:
                frames = int(float(st.duration * st.time_base) * fps)
            if not frames and c.duration and fps:
                frames = int(c.duration / 1e6 * fps)
            w, h = st.codec_context.width, st.codec_context.height
            w = int(round(w * stream_sar(st)))
            rot = stream_rotation(st)
    except SampleError:
        raise
    except Exception as e:
        raise SampleError(f".{ext} is not a decodable video ({type(e).__name__}: {e})") from None
    if not w or not h or frames <= 0:
        raise SampleError(f".{ext}: no frames or no size in the container header")
    if rot in (90, 270):
        w, h = h, w
    return Info("video", ext, w, h, frames, fps, rot)


# Seek (to the keyframe before the window) only when the window starts this many frames in: shorter
# skips are cheaper to decode through than a seek plus the frames from the keyframe.
SEEK_MIN_FRAMES = 48


class _FrameRGB:
    """A decoded frame -> its bucket crop (H, W, 3) uint8, by swscale (contexts reused across a clip)."""

    def __init__(self, plan: Plan, bucket: Bucket, info: Info) -> None:
        from av.video.reformatter import VideoReformatter

        rw, rh = plan.resize
        self.size = (rh, rw) if info.rotation in (90, 270) else (rw, rh)  # swscale works before the rotation
        self.turns = info.rotation // 90
        x, y = plan.crop
        self.crop = (slice(y, y + bucket.height), slice(x, x + bucket.width))
        self.scaler, self.to_rgb = VideoReformatter(), VideoReformatter()

    def __call__(self, fr: Any, dst: np.ndarray) -> None:
        """Write the frame's crop into `dst` (H, W, 3): the one copy out of swscale's frame buffer."""
        # Resize in the coded pixel format (planar YUV: half the bytes, SIMD paths), then convert to RGB
        # at the small size: ~2x cheaper than one scaling RGB conversion. swscale's BILINEAR filters
        # over the whole footprint when shrinking (no aliasing).
        tw, th = self.size
        if (fr.width, fr.height) != (tw, th):
            fr = self.scaler.reformat(fr, width=tw, height=th, interpolation="BILINEAR")
        arr = self.to_rgb.reformat(fr, format="rgb24").to_ndarray()
        if self.turns:
            arr = np.rot90(arr, k=-self.turns)
        dst[...] = arr[self.crop]


class _ByCount(Exception):
    """Frames cannot be placed by their timestamps (none, or a seek past the window): count them instead."""


def decode_video_pyav(data: bytes, plan: Plan, bucket: Bucket, info: Info, threads: int = 1,
                      seek: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Decode the planned frames from mp4 bytes in memory -> (F, H, W, 3) uint8, resized and cropped.

    Each frame is written straight into its place in `out` (e.g. its slot of a batch array; a new
    array when None), which is returned.

    A window that starts late in the clip is reached by seeking. In a stream with B frames, the packets
    of frames that are not sampled are sent with skip_frame=NONREF: the decoder drops those that no
    other frame refers to (x264's non-reference B frames) without decoding them. In both cases frame
    indices come from the timestamps (index = round(t * fps)) and each planned index takes the first
    frame at or after it. Without usable timestamps, or when a seek lands past the window (a container
    with a broken index), the clip is decoded again from the start, every frame, counting frames.
    """
    if out is None:
        out = np.empty((len(plan.indices), bucket.height, bucket.width, 3), np.uint8)
    try:
        return _decode_pyav(data, plan, bucket, info, threads, seek, out)
    except _ByCount:
        return _decode_pyav(data, plan, bucket, info, threads, False, out)


def _decode_pyav(data: bytes, plan: Plan, bucket: Bucket, info: Info, threads: int, by_time: bool,
                 out: np.ndarray) -> np.ndarray:
    import av

    targets = sorted((i, k) for k, i in enumerate(plan.indices))
    first, last = targets[0][0], targets[-1][0]
    got, prev, rgb = 0, None, _FrameRGB(plan, bucket, info)
    try:
        with av.open(io.BytesIO(data), "r") as c:
            st = c.streams.video[0]
            cc = st.codec_context
            st.thread_type = "AUTO" if threads != 1 else "SLICE"
            cc.thread_count = threads
            # Timestamps (Fractions: slow to make) only matter to a seek or to skipping B frames.
            by_time = by_time and (first >= SEEK_MIN_FRAMES or bool(cc.has_b_frames))
            fps, tb, t0 = (float(st.average_rate or 0) or info.fps, st.time_base, st.start_time or 0) if by_time \
                else (0.0, None, 0)
            by_time = by_time and fps > 0 and tb is not None
            seeking = by_time and first >= SEEK_MIN_FRAMES
            skipping = by_time and bool(cc.has_b_frames)
            if seeking:
                c.seek(t0 + int((first - 0.5) / fps / tb), stream=st, backward=True, any_frame=False)
            # Only skipping needs a say per packet; otherwise PyAV's own demux+decode loop (compiled)
            # saves a Python iteration per packet.
            frames = _skipping(c, st, {i for i, _ in targets}, t0, tb, fps) if skipping else c.decode(st)
            timed = seeking or skipping
            n = 0
            for fr in frames:
                if timed:
                    if fr.pts is None:
                        raise _ByCount
                    i = round(float((fr.pts - t0) * tb) * fps)
                    if seeking and n == 0 and i > first:
                        raise _ByCount
                else:
                    i = n
                n += 1
                if i < targets[got][0]:
                    continue
                prev = targets[got][1]  # the slot holding the latest decoded frame
                rgb(fr, out[prev])
                got += 1
                while got < len(targets) and targets[got][0] <= i:  # a frame missing from the stream
                    out[targets[got][1]] = out[prev]
                    got += 1
                if got == len(targets):
                    return out
    except av.error.FFmpegError as e:
        raise SampleError(f"decode failed after {got} of {len(plan.indices)} frames ({e})") from None
    short = prev is None or len(targets) - got > 2
    if (seeking or skipping) and short:
        raise _ByCount  # timestamps that do not follow the frame rate (variable rate): count frames as before
    # Headers can over-state the frame count by a frame or two: repeat the last frame then;
    # a bigger shortfall means a truncated clip.
    if short:
        raise SampleError(f"clip ended after {got} of {len(plan.indices)} sampled frames (needs frame {last})")
    for _, k in targets[got:]:
        out[k] = out[prev]
    return out


def _skipping(c: Any, st: Any, wanted: set[int], t0: int, tb: Any, fps: float) -> Iterator[Any]:
    """The stream's frames, each packet of an unsampled frame sent with skip_frame=NONREF."""
    cc = st.codec_context
    for pkt in c.demux(st):
        if pkt.pts is not None:
            cc.skip_frame = "DEFAULT" if round(float((pkt.pts - t0) * tb) * fps) in wanted else "NONREF"
        yield from pkt.decode()


def decode_video_decord(data: bytes, plan: Plan, bucket: Bucket, info: Info, threads: int = 1,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Same as decode_video_pyav with decord (no rotation support: decord ignores the display matrix)."""
    import decord

    rw, rh = plan.resize
    try:
        vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=rw, height=rh, num_threads=threads)
        n = len(vr)
        idx = [min(i, n - 1) for i in plan.indices]
        if max(plan.indices) - (n - 1) > 2:
            raise SampleError(f"clip has {n} frames, needs frame {max(plan.indices)}")
        arr = vr.get_batch(idx).asnumpy()
    except SampleError:
        raise
    except Exception as e:
        raise SampleError(f"decord failed ({type(e).__name__}: {e})") from None
    x, y = plan.crop
    if out is None:
        return np.ascontiguousarray(arr[:, y:y + bucket.height, x:x + bucket.width])
    out[...] = arr[:, y:y + bucket.height, x:x + bucket.width]
    return out


def decode_image(data: bytes, plan: Plan, bucket: Bucket) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB").resize(plan.resize, Image.BILINEAR)
            arr = np.asarray(im)
    except Exception as e:
        raise SampleError(f"image decode failed ({type(e).__name__}: {e})") from None
    x, y = plan.crop
    return arr[None, y:y + bucket.height, x:x + bucket.width]


def to_tensor(frames: np.ndarray, dtype: str = "uint8") -> torch.Tensor:
    """A batch array (B, F, H, W, 3) uint8 -> (B, F, 3, H, W) uint8 (a channels-last view of it, no
    copy), or float32 in [-1, 1]."""
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
    return to_unit(x) if dtype == "float32" else x


# ---------------------------------------------------------------------------------------- stream ---

@dataclass
class StreamSpec:
    """Everything a stream (one DataLoader worker of one rank) needs; picklable."""

    shards: list[str]  # the epoch's full shard list (already shuffled); each stream takes its slice
    cfg: LoaderConfig
    seed: int
    epoch: int
    rank: int
    world_size: int
    streams: int  # logical streams per rank (= num_workers, or 1 in-process)
    offset: int = 0  # physical worker p plays logical stream (p + offset) % streams (resume order)
    skip: dict[int, int] = field(default_factory=dict)  # logical stream -> items already consumed
    known_bad: dict[int, dict[str, str]] = field(default_factory=dict)  # stream -> bad keys seen in that prefix
    ended: set[int] = field(default_factory=set)  # streams already finished this epoch
    weights: SampleWeights | None = None  # score-aware copies per epoch and score text (shards/weights.py)
    plan_only: bool = False  # batches carry keys, captions, meta and plans but no frames (the latent cache reads them)
    only_keys: frozenset | None = None  # decode only these sample keys, leave out the rest (the cache fills its gaps)


@dataclass
class _Pending:
    key: str
    caption: str
    meta: dict
    plan: Plan
    info: Info
    data: bytes | None  # media bytes, kept only for samples replayed without decoding
    frames: np.ndarray | None


def shard_order(shards: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    order = sorted(shards)
    if shuffle:
        random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def run_stream(spec: StreamSpec, logical: int) -> Iterator[dict]:
    """The items of one logical stream: batches (kind="batch") then one end marker (kind="end")."""
    return iter(Stream(spec, logical))


class Stream:
    """One logical stream of a rank: reads its shards, shuffles, buckets, decodes, batches; replayable.

    Items are batches (kind "batch", or "empty" when every sample of a batch failed a late decode) and
    one end marker (kind "end"). Every item carries the bad/skipped keys found since the previous item,
    so the consumer's state always knows the bad keys of the prefix it has consumed. The first `skip`
    batches (consumed before a resume) are replayed from metadata alone: nothing is decoded, the known
    bad keys are dropped at the same places, and nothing is reported again.
    """

    def __init__(self, spec: StreamSpec, logical: int) -> None:
        self.spec, self.cfg, self.buckets, self.logical = spec, spec.cfg, spec.cfg.buckets, logical
        g = spec.rank * spec.streams + logical  # this stream's place among all streams of all ranks
        self.shards = spec.shards[g::spec.world_size * spec.streams]
        self.skip = spec.skip.get(logical, 0)  # batches consumed before the resume: replayed, not emitted
        self.known_bad = spec.known_bad.get(logical, {})  # bad keys reported with those batches
        self.rng = random.Random(f"buffer/{spec.seed}/{spec.epoch}/{g}")  # the shuffle buffer's draws
        self.emitted = 0  # batches completed so far, replayed ones included
        self.pending: dict[int, list[_Pending]] = {}  # bucket -> samples waiting for a full batch
        self.slots: dict[int, np.ndarray] = {}  # bucket -> the batch array its pending samples decode into
        self.tar_errors: list[tuple[str, str]] = []  # (shard, reason) of broken tars, reported as bad keys
        self._new_report()

    def _new_report(self) -> None:
        """Start collecting what the next item reports."""
        self.bad: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.uncaptioned = 0

    def __iter__(self) -> Iterator[dict]:
        if self.logical in self.spec.ended:
            yield {"kind": "end", "stream": self.logical, "index": -1, "bad": {}, "skipped": {}, "uncaptioned": 0}
            return
        for s in self._shuffled():
            item = self._add(s)
            if item is not None:
                yield item
        yield from self._flush()
        yield {"kind": "end", "stream": self.logical, "index": self.emitted, "bad": self.bad,
               "skipped": self.skipped, "uncaptioned": self.uncaptioned}

    # -- reading -------------------------------------------------------------------------------------
    def _samples(self) -> Iterator[dict]:
        for url in self.shards:
            for s in _read_ahead(iter_tar_samples(url, self.tar_errors)):
                s["__url__"] = url
                for _ in range(_copies(s, self.spec)):  # 1 without training.data.weights; 0 leaves it out
                    yield s
            while self.tar_errors:
                u, msg = self.tar_errors.pop(0)
                self.bad[f"{u}#tar"] = msg

    def _shuffled(self) -> Iterator[dict]:
        if self.cfg.shuffle_buffer <= 1:
            yield from self._samples()
            return
        buf: list[dict] = []
        for s in self._samples():
            buf.append(s)
            if len(buf) >= self.cfg.shuffle_buffer:
                j = self.rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        self.rng.shuffle(buf)
        yield from buf

    # -- one sample ----------------------------------------------------------------------------------
    def _add(self, s: dict) -> dict | None:
        """Bucket (and decode) one sample; returns the batch it completes, if any."""
        key = s["__key__"]
        if self.spec.only_keys is not None and key not in self.spec.only_keys:
            return None
        replay = self.emitted < self.skip
        try:
            placed = self._place(s, key, replay)
        except SampleError as e:
            self.bad[key] = str(e)
            return None
        except Exception as e:  # anything else a broken sample can raise: still never a crash
            self.bad[key] = f"{type(e).__name__}: {e}"
            return None
        if placed is None:
            return None
        b, p = placed
        members = self.pending.setdefault(b, [])
        members.append(p)
        if len(members) >= (self.buckets[b].batch_size or self.cfg.batch_size):
            return self._emit(b, self.pending.pop(b))
        return None

    def _place(self, s: dict, key: str, replay: bool) -> tuple[int, _Pending] | None:
        """(bucket, pending sample) with its frames decoded unless replayed or plan-only; None when no
        bucket fits (reported as skipped). Raises SampleError for a bad sample."""
        cfg, spec = self.cfg, self.spec
        if replay and key in self.known_bad:
            raise SampleError(self.known_bad[key])
        meta = _json(s)
        info = sample_info(s, meta, cfg)
        # The picture inside black bars (the borders scorer's box in the sample's scores) is what
        # gets bucketed and cropped; the bars never reach the model.
        content = content_box(meta.get("scores") or {}, f"{cfg.crop_borders}_") if cfg.crop_borders else None
        _, _, pw, ph = picture_box(info.width, info.height, content)
        b = choose_bucket(self.buckets, pw, ph, info.frames, info.fps, cfg.fps, info.kind == "image")
        if b is None:
            self.skipped[key] = (f"no bucket fits: {info.kind} {info.width}x{info.height}, {info.frames} frames "
                                 f"at {info.fps:g} fps (target {cfg.fps:g} fps)")
            return None
        rs = sample_rng(spec.seed, spec.epoch, key)
        plan = plan_sample(self.buckets, b, info.width, info.height, info.frames, info.fps, cfg.fps,
                           rs if cfg.random_start or cfg.crop == "random" else None, cfg.crop, content)
        if not cfg.random_start and plan.indices[0] != 0:
            plan = Plan(plan.bucket, tuple(i - plan.indices[0] for i in plan.indices), plan.fps, plan.resize,
                        plan.crop)
        data = s[info.ext]
        # Decoded straight into its slot of the bucket's batch array: the place it takes in pending[b].
        frames = (None if replay or spec.plan_only
                  else self._decode(data, plan, info, self._batch_array(b)[len(self.pending.get(b, ()))]))
        return b, self._pending(s, key, meta, plan, info, content, data if replay else None, frames)

    def _pending(self, s: dict, key: str, meta: dict, plan: Plan, info: Info, content: Any,
                 data: bytes | None, frames: np.ndarray | None) -> _Pending:
        """The sample as it waits for its batch: caption, metadata with the sampling facts, frames."""
        caption = _caption(s, meta)
        weights = self.spec.weights
        if weights is not None and weights.score_text and isinstance(meta.get("scores"), dict):
            caption = score_caption(caption, meta["scores"], weights)
        if not caption:
            self.uncaptioned += 1
        m = dict(meta)
        m["_sample"] = {"url": redact(s.get("__url__") or ""), "fps": plan.fps, "indices": list(plan.indices),
                        "bucket": plan.bucket, "source_size": [info.width, info.height],
                        "picture_box": list(picture_box(info.width, info.height, content)),
                        "resize": list(plan.resize), "crop": list(plan.crop)}
        return _Pending(key, caption, m, plan, info, data, frames)

    def _decode(self, data: bytes, plan: Plan, info: Info, dst: np.ndarray) -> np.ndarray:
        """The sample's frames written into `dst` (F, H, W, 3), which is returned."""
        b = self.buckets[plan.bucket]
        if info.kind == "image":
            dst[...] = decode_image(data, plan, b)
        elif self.cfg.decoder == "decord":
            decode_video_decord(data, plan, b, info, self.cfg.decode_threads, out=dst)
        else:
            decode_video_pyav(data, plan, b, info, self.cfg.decode_threads, out=dst)
        return dst

    def _batch_array(self, b: int) -> np.ndarray:
        """The batch array (B, F, H, W, 3) the pending samples of bucket b are decoded into."""
        arr = self.slots.get(b)
        if arr is None:
            bk = self.buckets[b]
            shape = (bk.batch_size or self.cfg.batch_size, bk.frames, bk.height, bk.width, 3)
            arr = self.slots[b] = np.empty(shape, np.uint8)
        return arr

    # -- batches -------------------------------------------------------------------------------------
    def _emit(self, b: int, members: list[_Pending]) -> dict | None:
        """The batch item of `members` with the report since the last item; None for a replayed batch."""
        self.emitted += 1
        if self.emitted <= self.skip:
            # Replayed prefix: consumed before the resume, its bad/skipped keys already reported.
            self.slots.pop(b, None)
            self._new_report()
            return None
        plan_only = self.spec.plan_only
        arr = None if plan_only else self._batch_array(b)
        self.slots.pop(b, None)
        for j, p in enumerate(members):
            if p.frames is None and not plan_only:  # decoded lazily: it was buffered during the replay
                try:
                    p.frames = self._decode(p.data, p.plan, p.info, arr[j])
                except Exception as e:  # decoded fine before the resume: only a flaky read gets here
                    self.bad[p.key] = f"{type(e).__name__}: {e}"
        kept = [p for p in members if p.frames is not None or plan_only]
        frames = None
        if kept and arr is not None:
            # Samples sit in their slots in order; a late decode failure leaves a gap to close (a copy).
            frames = arr[:len(kept)] if len(kept) == len(members) else np.stack([p.frames for p in kept])
        members = kept
        bucket = self.buckets[b]
        item = {"kind": "batch" if members else "empty", "stream": self.logical, "index": self.emitted - 1,
                "bucket": (bucket.frames, bucket.height, bucket.width),
                "frames": to_tensor(frames, self.cfg.frames_dtype) if frames is not None else None,
                "captions": [p.caption for p in members], "keys": [p.key for p in members],
                "meta": [p.meta for p in members], "bad": self.bad, "skipped": self.skipped,
                "uncaptioned": self.uncaptioned}
        self._new_report()
        return item

    def _flush(self) -> Iterator[dict]:
        """At the end: the partial batches in bucket order, or (drop_last) their samples as skipped."""
        for b in sorted(self.pending):
            if self.cfg.drop_last:
                for p in self.pending[b]:
                    self.skipped[p.key] = "dropped with the last partial batch (drop_last)"
                self.slots.pop(b, None)
                continue
            item = self._emit(b, self.pending[b])
            if item is not None:
                yield item


def _copies(sample: dict, spec: StreamSpec) -> int:
    """Copies of a sample this epoch under the spec's weights (a sample with a broken .json: 1, and it
    is reported as bad where it is parsed)."""
    if spec.weights is None or spec.weights.expression is None:
        return 1
    try:
        scores = _json(sample).get("scores")
    except SampleError:
        return 1
    return copies(scores if isinstance(scores, dict) else {}, spec.weights, spec.seed, spec.epoch,
                  sample["__key__"])


READ_AHEAD = 8  # samples read from a tar (and their .json parsed) in one go


def _read_ahead(samples: Iterator[dict], n: int = READ_AHEAD) -> Iterator[dict]:
    """The same samples, read and their .json parsed `n` at a time: run back to back, this Python work
    finds its code and data in the CPU caches, which every decode in between flushes (~3x slower cold)."""
    it = iter(samples)
    while chunk := list(itertools.islice(it, n)):
        for s in chunk:
            try:
                s["__json__"] = _parse_json(s)
            except SampleError as e:
                s["__json__"] = e
        yield from chunk


def _json(sample: dict) -> dict:
    """The sample's .json as a dict; the read-ahead's parse is used once (later calls parse again, so
    every placement of a sample gets its own dicts, as before)."""
    m = sample.pop("__json__", None)
    if m is None:
        return _parse_json(sample)
    if isinstance(m, SampleError):
        raise SampleError(str(m))
    return m


def _parse_json(sample: dict) -> dict:
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        m = json.loads(raw)
    except Exception as e:
        raise SampleError(f".json is not valid JSON ({e})") from None
    return m if isinstance(m, dict) else {"json": m}


def _caption(sample: dict, meta: dict) -> str:
    for ext in ("txt", "caption"):
        if ext in sample:
            return sample[ext].decode("utf-8", "replace").strip()
    cap = meta.get("caption")
    if isinstance(cap, dict):
        cap = cap.get("text")
    return cap.strip() if isinstance(cap, str) else ""


# ------------------------------------------------------------------------------------ DataLoader ---

class StreamDataset(torch.utils.data.IterableDataset):
    """The torch face of the streams: DataLoader worker p plays logical stream (p + offset) % streams."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec

    def __iter__(self) -> Iterator[dict]:
        wi = torch.utils.data.get_worker_info()
        physical = wi.id if wi is not None else 0
        if wi is not None:
            torch.set_num_threads(1)  # workers already run in parallel
        return run_stream(self.spec, (physical + self.spec.offset) % self.spec.streams)


def _identity(x: Any) -> Any:
    return x


def _loader_config(cfg: Any) -> tuple[LoaderConfig, str | None, str]:
    """(loader config, dataset root or None, writer name) from any accepted config form."""
    root, name = None, "default"
    if hasattr(cfg, "shard") and hasattr(cfg, "root"):  # PipelineConfig
        root, name, cfg = cfg.root, cfg.shard.writer.name, cfg.shard.loader
    elif isinstance(cfg, ShardConfig):
        name, cfg = cfg.writer.name, cfg.loader
    elif isinstance(cfg, dict):
        cfg = LoaderConfig.model_validate(cfg)
    if not isinstance(cfg, LoaderConfig):
        raise TypeError(f"ShardLoader: expected PipelineConfig, ShardConfig, LoaderConfig or dict, got {type(cfg)}")
    return cfg, root, name


class ShardLoader:
    """Iterable over bucketed batches of one rank; see the module docstring for the API."""

    def __init__(self, cfg: Any, rank: int = 0, world_size: int = 1, seed: int = 0, root: str | None = None,
                 shards: list[str] | None = None, weights: SampleWeights | None = None, plan_only: bool = False,
                 only_keys: set[str] | None = None) -> None:
        self.cfg, cfg_root, name = _loader_config(cfg)
        self.plan_only, self.only_keys = plan_only, frozenset(only_keys) if only_keys is not None else None
        self.weights = weights if weights is not None and weights.active else None
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardLoader: rank {rank} is outside world_size {world_size}")
        root = root or cfg_root
        entries = shards or self.cfg.shards
        if entries is None:
            if root is None:
                raise ValueError("ShardLoader: no shards given (loader.shards) and no dataset root to find them")
            entries = [f"{root.rstrip('/')}/shards/{name}"]
        self.shards = resolve_shards(entries)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.streams = max(1, self.cfg.num_workers)
        self.epoch = 0
        self.stats: dict = {}
        self._reset_position()

    # -- position ------------------------------------------------------------------------------------
    def _reset_position(self) -> None:
        self._consumed: dict[int, int] = {}
        self._bad: dict[int, dict[str, str]] = {}
        self._ended: set[int] = set()
        self._next = 0  # logical stream whose batch comes next
        self._fresh = True  # at an epoch start: stats are reset when iteration begins

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._reset_position()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "streams": self.streams, "next": self._next,
                "shards": hashlib.sha1("\n".join(self.shards).encode()).hexdigest()[:16],
                "consumed": {str(k): v for k, v in self._consumed.items()},
                "bad": {str(k): dict(v) for k, v in self._bad.items()}, "ended": sorted(self._ended),
                "fresh": self._fresh, "stats": json.loads(json.dumps(self.stats))}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} != {STATE_VERSION}")
        for k, mine in (("seed", self.seed), ("rank", self.rank), ("world_size", self.world_size),
                        ("streams", self.streams)):
            if state[k] != mine:
                raise ValueError(f"loader state was saved with {k}={state[k]}, this loader has {k}={mine}: "
                                 "exact resume needs the same seed, rank, world size and num_workers")
        digest = hashlib.sha1("\n".join(self.shards).encode()).hexdigest()[:16]
        if state["shards"] != digest:
            raise ValueError("loader state was saved over a different shard list")
        self.epoch = state["epoch"]
        self._consumed = {int(k): v for k, v in state["consumed"].items()}
        self._bad = {int(k): dict(v) for k, v in state["bad"].items()}
        self._ended = set(state["ended"])
        self._next = state["next"]
        self._fresh = state["fresh"]
        self.stats = json.loads(json.dumps(state["stats"]))

    # -- iteration -----------------------------------------------------------------------------------
    def _spec(self) -> StreamSpec:
        return StreamSpec(shard_order(self.shards, self.seed, self.epoch, self.cfg.shuffle_shards), self.cfg,
                          self.seed, self.epoch, self.rank, self.world_size, self.streams, self._next,
                          dict(self._consumed), {k: dict(v) for k, v in self._bad.items()}, set(self._ended),
                          self.weights, self.plan_only, self.only_keys)

    def _items(self, spec: StreamSpec) -> Iterator[dict]:
        if self.cfg.num_workers == 0:
            yield from run_stream(spec, 0)
            return
        dl = torch.utils.data.DataLoader(StreamDataset(spec), batch_size=None, num_workers=self.cfg.num_workers,
                                         prefetch_factor=self.cfg.prefetch_factor, collate_fn=_identity)
        yield from dl

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch. A loader resumed right after an epoch's last batch has nothing
        left of that epoch: it goes on into the next one, so iteration always yields the batches that
        followed in the uninterrupted run (and a training loop never sees an empty pass)."""
        resumed = not self._fresh
        n = 0
        for batch in self._epoch():
            n += 1
            yield batch
        if n == 0 and resumed:
            yield from self._epoch()

    def _epoch(self) -> Iterator[dict]:
        if self._fresh:
            self.stats = {"samples": 0, "batches": 0, "bad": {}, "skipped": {}, "uncaptioned": 0}
            self._fresh = False
        spec = self._spec()
        queues: dict[int, deque] = {s: deque() for s in range(self.streams)}
        done = set(self._ended)
        items = self._items(spec)
        while len(done) < self.streams:
            s = self._next
            if s in done:
                self._next = (s + 1) % self.streams
                continue
            # Streams are served in a fixed round-robin order, whatever order workers deliver in.
            while not queues[s]:
                try:
                    it = next(items)
                except StopIteration:
                    raise RuntimeError(f"loader stream {s} ended without its end marker") from None
                queues[it["stream"]].append(it)
            it = queues[s].popleft()
            self._account(it)
            if it["kind"] == "end":
                done.add(s)
                self._ended.add(s)
                continue
            self._next = (s + 1) % self.streams
            if it["kind"] == "empty":
                continue
            yield {k: it[k] for k in ("frames", "captions", "keys", "meta", "bucket")}
        self.epoch += 1
        self._reset_position()

    def _account(self, it: dict) -> None:
        s = it["stream"]
        self._bad.setdefault(s, {}).update(it["bad"])
        self.stats["bad"].update(it["bad"])
        self.stats["skipped"].update(it["skipped"])
        self.stats["uncaptioned"] += it["uncaptioned"]
        if it["kind"] in ("batch", "empty"):  # "empty": a batch whose samples all failed a late decode
            self._consumed[s] = it["index"] + 1
            self.stats["batches"] += it["kind"] == "batch"
            self.stats["samples"] += len(it["keys"])
