"""Split stage: scene detection and frame-accurate clips in one decode pass.

Each video is decoded once. Every frame is downscaled (swscale, to the width PySceneDetect itself
uses) for the detector — PySceneDetect's ContentDetector or AdaptiveDetector, fed frame by frame —
and is also held in a short look-behind buffer. Frames leave the buffer into the libx264 encoder of
the current clip only once the detector can no longer place a cut before them, so a cut (even the
delayed ones of AdaptiveDetector) always lands exactly on a frame boundary: clips are re-encoded
frame-accurately, never keyframe stream copies, and the cost is one decode plus the encode.

Clip rules: frames next to each detected cut are trimmed (transitions), scenes longer than
max_clip_s are cut into windows, and pieces shorter than min_clip_s are dropped with a reason. Clips
are upright with square pixels (rotation and sample aspect ratio applied), fit max_height x max_width
and optionally capped to max_fps. Timestamps come from the source, so variable-frame-rate timing is
kept.
"""
from __future__ import annotations

import collections
import os
import queue
import threading
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction

import av
from scenedetect import AdaptiveDetector, ContentDetector
from scenedetect.common import FrameTimecode, Timecode

from curation import tables
from curation.stage import Stage, StageResources
from curation.storage import Storage
from curation.video import Geometry, VideoError, first_video_stream, frame_rotation, open_container, \
    stream_rotation, stream_sar


@dataclass
class SplitParams:
    """The split section of pipelines.yaml, as the worker needs it (see curation.config.SplitConfig)."""

    detector: str = "content"
    threshold: float = 27.0
    min_scene_len: int = 15
    detect_width: int = 256
    stride_s: float = 10.0
    min_clip_s: float = 2.0
    max_clip_s: float = 60.0
    trim_frames: int = 0
    max_height: int = 720
    max_width: int = 1280
    max_fps: float | None = None
    crf: int = 20
    preset: str = "veryfast"

    @classmethod
    def from_config(cls, c: object) -> "SplitParams":
        return cls(**{k: getattr(c, k) for k in cls.__dataclass_fields__})


def make_detector(p: SplitParams):
    """A PySceneDetect detector, or None for fixed-stride windows."""
    if p.detector == "content":
        return ContentDetector(threshold=p.threshold, min_scene_len=p.min_scene_len)
    if p.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=p.threshold, min_scene_len=p.min_scene_len)
    return None


def clip_id_for(video_id: str, start: int, end: int) -> str:
    return f"{video_id}_{start:07d}_{end:07d}"


@dataclass
class _Clip:
    """An open output clip: frames stream into its encoder as they leave the look-behind buffer."""

    start: int
    start_t: float
    path: str
    container: object = None
    stream: object = None
    frames: int = 0
    end: int = 0  # exclusive source index of the last frame seen (written or dropped by the fps cap)
    end_t: float = 0.0
    last_pts: int | None = None
    pts0: int = 0


@dataclass
class _Splitter:
    """Per-video state of the single-pass split."""

    p: SplitParams
    video_id: str
    source: str
    tmpdir: str
    fps: float
    geo: Geometry
    time_base: Fraction
    cuts: set = field(default_factory=set)
    clip: _Clip | None = None
    done: list = field(default_factory=list)  # finished _Clip objects
    next_keep_t: float = 0.0

    def max_frames(self) -> int:
        return max(1, int(round(self.p.max_clip_s * self.fps)))

    def trimmed(self, i: int, first: int) -> bool:
        """Frame i lies within trim_frames of a detected cut (before or after it)."""
        t = self.p.trim_frames
        if not t:
            return False
        return any(c in self.cuts for c in range(i + 1, i + t + 1)) or \
            any(c in self.cuts and c > first for c in range(i - t + 1, i + 1))

    def emit(self, i: int, t: float, frame: "av.VideoFrame") -> None:
        """Send source frame i (time t) to the clip it belongs to."""
        if i in self.cuts:
            self.close()
        if self.trimmed(i, 0):
            self.close()
            return
        if self.clip is not None and (i - self.clip.start) >= self.max_frames():
            self.close()
        if self.clip is None:
            path = os.path.join(self.tmpdir, f"{self.video_id}_{i}.mp4")
            self.clip = _Clip(start=i, start_t=t, path=path, pts0=frame.pts if frame.pts is not None else i)
            self.next_keep_t = t
        c = self.clip
        c.end, c.end_t = i + 1, t
        if self.p.max_fps and t + 1e-6 < self.next_keep_t:
            return  # dropped by the fps cap
        if self.p.max_fps:
            self.next_keep_t = max(self.next_keep_t + 1.0 / self.p.max_fps, t + 0.5 / self.p.max_fps)
        self._write(c, i, frame)

    def _write(self, c: _Clip, i: int, frame: "av.VideoFrame") -> None:
        if c.container is None:
            c.container = av.open(c.path, "w", format="mp4")
            rate = Fraction(min(self.fps, self.p.max_fps or self.fps)).limit_denominator(1001)
            st = c.container.add_stream("libx264", rate=rate)
            st.width, st.height, st.pix_fmt = self.geo.out_w, self.geo.out_h, "yuv420p"
            st.time_base = self.time_base
            st.codec_context.time_base = self.time_base
            st.options = {"crf": str(self.p.crf), "preset": self.p.preset}
            # x264 frame threads, as the ffmpeg CLI uses (PyAV defaults to slice threads: ~20% slower).
            st.codec_context.thread_count = 0
            st.codec_context.thread_type = "FRAME"
            c.stream = st
        pts = (frame.pts - c.pts0) if frame.pts is not None else None
        if pts is None or (c.last_pts is not None and pts <= c.last_pts):
            # Missing or non-increasing timestamps: place the frame one nominal frame later.
            step = max(1, int(round(1 / (self.fps * float(self.time_base))))) if self.fps else 1
            pts = (c.last_pts + step) if c.last_pts is not None else 0
        out = self.convert(frame)
        out.pts, out.time_base = pts, self.time_base
        c.last_pts = pts
        for pkt in c.stream.encode(out):
            c.container.mux(pkt)
        c.frames += 1

    def convert(self, frame: "av.VideoFrame") -> "av.VideoFrame":
        g = self.geo
        if not g.rotation and (frame.width, frame.height, frame.format.name) == (g.out_w, g.out_h, "yuv420p"):
            return frame  # already what the encoder takes: no copy (this is the frame's last use)
        if not g.rotation:
            return frame.reformat(width=g.out_w, height=g.out_h, format="yuv420p")
        return av.VideoFrame.from_ndarray(g.apply(frame, "rgb24"), format="rgb24").reformat(format="yuv420p")

    def close(self) -> None:
        c, self.clip = self.clip, None
        if c is None:
            return
        if c.container is not None:
            for pkt in c.stream.encode():
                c.container.mux(pkt)
            c.container.close()
        self.done.append(c)


class SplitStage(Stage):
    """videos-table rows -> clips-table rows (one per clip, kept or dropped, or one error row)."""

    name = "split"

    def __init__(self, params: SplitParams, root: str, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.p, self.root = params, root

    def setup(self) -> None:
        self.storage = Storage(self.root)

    def process_row(self, row: dict) -> list[dict]:
        with tempfile.TemporaryDirectory(prefix="split-") as tmp:
            return split_video(row, self.p, self.storage, tmp)

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [error_row(row, message)]


def error_row(row: dict, message: str) -> dict:
    blank = {f.name: None for f in tables.CLIPS}
    return {**blank, "clip_id": f"{row['video_id']}_error", "video_id": row["video_id"], "source": row["source"],
            "status": "error", "reason": message}


class Scanner:
    """Decodes a video once and runs the detector on every frame (downscaled).

    Iterating yields (index, seconds, frame, cuts found with this frame); cuts may lie before the
    current frame (AdaptiveDetector looks ahead). After iteration, `final_cuts()` returns the cuts
    that the detector only emits at the end, and `truncated` says whether decoding stopped early.
    """

    def __init__(self, cont: "av.container.InputContainer", source: str, p: SplitParams, fps: float) -> None:
        self.cont, self.source, self.p, self.fps = cont, source, p, fps
        self.st = first_video_stream(cont, source)
        self.tb = self.st.time_base or Fraction(1, 90000)
        self.det = make_detector(p)
        self.first: "av.VideoFrame | None" = None
        self.rotation = 0
        self.truncated: str | None = None
        self.count = 0
        self._pts_index: dict[int, int] = {}

    def _decoded(self):
        """(frame, detector image) pairs; runs in a helper thread (see __iter__)."""
        dsize = None
        for fr in self.cont.decode(self.st):
            if dsize is None:
                dw = min(fr.width, self.p.detect_width)
                dsize = (dw, max(1, round(fr.height * dw / fr.width)))
            yield fr, (_detect_frame(fr, dsize) if self.det is not None else None)

    def __iter__(self):
        p, tb, fps = self.p, self.tb, self.fps
        next_stride, pts0 = p.stride_s, 0
        i = -1
        try:
            # Decoding and the detector's colour conversion release the GIL: a helper thread runs
            # them one frame ahead of the detector and the encoder, as PySceneDetect overlaps decoding.
            for i, (fr, small) in enumerate(_prefetch(self._decoded(), depth=4)):
                if self.first is None:
                    self.first, pts0 = fr, fr.pts if fr.pts is not None else 0
                    self.rotation = frame_rotation(fr) or stream_rotation(self.st)
                pts = (fr.pts - pts0) if fr.pts is not None else None
                t = float(pts * tb) if pts is not None else i / fps
                cuts: list[int] = []
                if self.det is not None:
                    key = pts if pts is not None else i
                    tc = FrameTimecode(Timecode(pts=key, time_base=tb if pts is not None
                                                else Fraction(1, max(1, round(fps)))), fps=fps)
                    self._pts_index[key] = i
                    cuts = [self._index(c) for c in self.det.process_frame(tc, small)]
                elif t + 1e-6 >= next_stride:
                    cuts = [i]
                    next_stride += p.stride_s
                self.count = i + 1
                yield i, t, fr, cuts
        except av.error.FFmpegError as e:
            if self.first is None:
                raise VideoError(f"{self.source}: decode failed ({e})") from None
            # Truncated mid-stream: the frames that did decode still make clips, and the rows say so.
            self.truncated = f"decode stopped at frame {i + 1}: {e}"
        if self.first is None:
            raise VideoError(f"{self.source}: no decodable video frames")

    def final_cuts(self) -> list[int]:
        if self.det is None:
            return []
        return [self._index(c) for c in self.det.post_process(FrameTimecode(self.count, fps=self.fps))]

    def _index(self, cut: FrameTimecode) -> int:
        tc = getattr(cut, "_time", None)
        if isinstance(tc, Timecode) and tc.pts in self._pts_index:
            return self._pts_index[tc.pts]
        return int(cut.frame_num)


def _prefetch(items, depth: int):
    """Iterate `items` in a background thread, at most `depth` ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            it = q.get()
            if it is end:
                return
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()
        th.join()


def _fps(row: dict, cont: "av.container.InputContainer") -> float:
    st = cont.streams.video[0] if cont.streams.video else None
    return float(row.get("fps") or (st and (st.average_rate or st.guessed_rate)) or 25.0)


def detect_scenes(source: str, p: SplitParams, fps: float | None = None) -> list[int]:
    """Scene detection alone (no clips written): the frame indices where new scenes start."""
    with open_container(source) as cont:
        sc = Scanner(cont, source, p, _fps({"fps": fps}, cont))
        cuts = {c for *_, found in sc for c in found}
        cuts.update(sc.final_cuts())
    return sorted(c for c in cuts if c > 0)


def split_video(row: dict, p: SplitParams, storage: Storage, tmpdir: str) -> list[dict]:
    """Detect scenes and write clips of one video in one decode pass; returns its clips-table rows."""
    source, vid = row["source"], row["video_id"]
    with open_container(source) as cont:
        fps = _fps(row, cont)
        sc = Scanner(cont, source, p, fps)
        sp: _Splitter | None = None
        lag = p.trim_frames + p.min_scene_len + 8  # how far behind the newest frame a cut may be placed
        buf: collections.deque = collections.deque()
        for i, t, fr, cuts in sc:
            if sp is None:
                geo = Geometry.fit(fr.width, fr.height, stream_sar(sc.st), sc.rotation, p.max_width, p.max_height)
                sp = _Splitter(p, vid, source, tmpdir, fps, geo, sc.tb)
            sp.cuts.update(cuts)
            buf.append((i, t, fr))
            while len(buf) > lag:
                sp.emit(*buf.popleft())
        sp.cuts.update(sc.final_cuts())
        while buf:
            sp.emit(*buf.popleft())
        sp.close()
    if sc.truncated:
        row = {**row, "truncated": sc.truncated}
    return _finish(sp, row, p, storage)


def _finish(sp: _Splitter, row: dict, p: SplitParams, storage: Storage) -> list[dict]:
    """Move kept clips into the root and build the rows; drop pieces that are too short."""
    rows = []
    for c in sp.done:
        n = c.end - c.start
        dur = n / sp.fps if sp.fps else 0.0
        cid = clip_id_for(sp.video_id, c.start, c.end)
        base = {"clip_id": cid, "video_id": sp.video_id, "source": sp.source, "start_frame": c.start,
                "end_frame": c.end, "start_s": c.start_t, "end_s": c.end_t + (1.0 / sp.fps if sp.fps else 0.0),
                "width": sp.geo.out_w, "height": sp.geo.out_h,
                "fps": float(min(sp.fps, p.max_fps or sp.fps)), "frames": c.frames}
        if dur + 1e-6 < p.min_clip_s:
            if os.path.exists(c.path):
                os.remove(c.path)
            rows.append({**base, "bytes": 0, "path": None, "status": "dropped",
                         "reason": f"too short: {dur:.2f}s < min_clip_s {p.min_clip_s}s"})
            continue
        rel = f"clips/{sp.video_id}/{cid}.mp4"
        size = os.path.getsize(c.path)
        storage.put_file(c.path, rel)
        rows.append({**base, "bytes": size, "path": rel, "status": "ok", "reason": row.get("truncated")})
    if not rows:
        rows.append(error_row(row, "no frames to split"))
    return rows


def run(cfg: "object", ctx: "object") -> dict:
    """Split every probed video not yet split (resume per video)."""
    from curation.runner import run_pipeline

    storage = ctx.storage
    videos = [r for r in tables.read_table(storage, "videos", tables.VIDEOS).to_pylist() if not r["error"]]
    done = {r["video_id"] for r in tables.read_table(storage, "clips", tables.CLIPS).to_pylist()}
    full = _openable(cfg.inputs)  # redacted source (as stored) -> the URI with its credentials, to open
    todo = [{"video_id": v["video_id"], "source": full.get(v["source"], v["source"]), "fps": v["fps"]}
            for v in videos if v["video_id"] not in done]
    stage = SplitStage(SplitParams.from_config(cfg.split), storage.root,
                       StageResources.from_config(cfg.split.resources))
    counts = {"videos": len(videos), "skipped": len(videos) - len(todo), "split": 0, "clips": 0, "dropped": 0,
              "errors": 0}

    def sink(rows: list[dict]) -> None:
        tables.write_part(storage, "clips", rows, tables.CLIPS)
        counts["split"] += len({r["video_id"] for r in rows})
        for r in rows:
            counts[{"ok": "clips", "dropped": "dropped", "error": "errors"}[r["status"]]] += 1

    run_pipeline(todo, [stage], sink, sink_every=1, progress=cfg.ray.progress)
    ctx.stages.setdefault("split", {})["errors"] = [
        f"{r['source']}: {r['reason']}" for r in tables.read_table(storage, "clips", tables.CLIPS).to_pylist()
        if r["status"] == "error"]
    return counts


def _openable(inputs: list[str]) -> dict[str, str]:
    """Redacted source -> the input URI it came from (credentials and options live only in the config)."""
    from curation.storage import expand_inputs
    from curation.uris import redact

    return {redact(u): u for u in expand_inputs(inputs) if "://" in u}


def _detect_frame(fr: "av.VideoFrame", dsize: tuple[int, int]):
    """The detector's view of a frame: BGR at PySceneDetect's working width, made as it makes it.

    The same full-size swscale BGR conversion (bit-identical, but sliced over 2 threads) and the same
    cv2 INTER_LINEAR resize as PySceneDetect, so our cuts are its cuts: a faster YUV->BGR (OpenCV's
    I420 path) differs by a few levels and moved a borderline cut by 10 frames on a real trailer.
    """
    import cv2

    return cv2.resize(fr.reformat(format="bgr24", threads=2).to_ndarray(), dsize, interpolation=cv2.INTER_LINEAR)
