"""Split stage: shot detection and frame-accurate clips in one decode pass.

Each video is decoded once. Every frame is downscaled for the detector — swscale to the width
PySceneDetect itself uses for its ContentDetector or AdaptiveDetector, or to TransNetV2's 48x27 RGB
(curation/shots.py) — and is also held in a look-behind buffer. Frames leave the buffer into the
libx264 encoder of the current clip only once the detector has settled them (no cut can still land
before them), so a cut (even the delayed ones of AdaptiveDetector, or TransNetV2's, which sees 74
frames ahead) always lands exactly on a frame boundary: clips are re-encoded frame-accurately, never
keyframe stream copies, and the cost is one decode plus the encode (plus the network for TransNetV2).
Frames inside a gradual transition found by TransNetV2 (dissolve, fade) go into neither clip.

Clip rules: frames next to each detected cut are trimmed (transitions), scenes longer than
max_clip_s are cut into windows, and pieces shorter than min_clip_s are dropped with a reason. Clips
are upright with square pixels (rotation and sample aspect ratio applied), fit max_height x max_width
and optionally capped to max_fps. Timestamps come from the source, so variable-frame-rate timing is
kept; start_s/end_s are the source's own presentation times (pts x time base, as ffprobe shows
them), end_s being the time of the first source frame after the clip.
"""
from __future__ import annotations

import collections
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from fractions import Fraction

import av
from scenedetect import AdaptiveDetector, ContentDetector
from scenedetect.common import FrameTimecode, Timecode

from curation import tables
from curation.config import SplitConfig
from curation.stage import Stage, StageResources
from curation.storage import Storage
from curation.table_stage import TableStage
from curation.video import Geometry, VideoError, first_video_stream, frame_rotation, open_container, \
    stream_rotation, stream_sar


def make_detector(p: SplitConfig, model: object = None):
    """A PySceneDetect detector, a streaming TransNetV2 (given its loaded model), or None for windows."""
    if p.detector == "transnetv2":
        from curation.shots import TransNetDetector

        return TransNetDetector(model, threshold=p.transnetv2.threshold, min_scene_len=p.min_scene_len)
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
    next_t: float | None = None  # time of the first source frame after the clip (its end_s)
    last_pts: int | None = None
    pts0: int = 0


@dataclass
class _Splitter:
    """Per-video state of the single-pass split."""

    p: SplitConfig
    video_id: str
    source: str
    tmpdir: str
    fps: float
    geo: Geometry
    time_base: Fraction
    cuts: set = field(default_factory=set)
    gaps: set = field(default_factory=set)  # frames inside gradual transitions: in no clip
    clip: _Clip | None = None
    done: list = field(default_factory=list)  # finished _Clip objects
    next_keep_t: float = 0.0
    enc: "_EncodeThread | None" = None  # runs the clips' encoders (split_video starts and joins it)

    def max_frames(self) -> int:
        return max(1, int(round(self.p.max_clip_s * self.fps)))

    def boundary(self, i: int) -> bool:
        """A shot starts at frame i, or a gradual transition does (the shot before it ends at i)."""
        return i in self.cuts or (i in self.gaps and i - 1 not in self.gaps)

    def trimmed(self, i: int, first: int) -> bool:
        """Frame i lies within trim_frames of a detected cut or transition (before or after it)."""
        t = self.p.trim_frames
        if not t:
            return False
        return any(self.boundary(c) for c in range(i + 1, i + t + 1)) or \
            any(c in self.cuts and c > first for c in range(i - t + 1, i + 1))

    def emit(self, i: int, t: float, frame: "av.VideoFrame") -> None:
        """Send source frame i (time t) to the clip it belongs to."""
        if self.clip is not None and self.clip.end == i:
            self.clip.next_t = t  # the clip's end time, whether or not this frame joins it
        if i in self.cuts:
            self.close()
        if i in self.gaps:
            self.close()
            return
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
        c.end, c.end_t, c.next_t = i + 1, t, None
        if self.p.max_fps and t + 1e-6 < self.next_keep_t:
            return  # dropped by the fps cap
        if self.p.max_fps:
            self.next_keep_t = max(self.next_keep_t + 1.0 / self.p.max_fps, t + 0.5 / self.p.max_fps)
        self._write(c, i, frame)

    def _write(self, c: _Clip, i: int, frame: "av.VideoFrame") -> None:
        if c.frames == 0:
            self.enc.submit(self._open, c)
        pts = (frame.pts - c.pts0) if frame.pts is not None else None
        if pts is None or (c.last_pts is not None and pts <= c.last_pts):
            # Missing or non-increasing timestamps: place the frame one nominal frame later.
            step = max(1, int(round(1 / (self.fps * float(self.time_base))))) if self.fps else 1
            pts = (c.last_pts + step) if c.last_pts is not None else 0
        c.last_pts = pts
        self.enc.submit(self._encode, c, frame, pts)
        c.frames += 1

    def _open(self, c: _Clip) -> None:
        """(Encoder thread) the clip's mp4 and libx264 stream."""
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

    def _encode(self, c: _Clip, frame: "av.VideoFrame", pts: int) -> None:
        """(Encoder thread) one frame into the clip: converted if needed, encoded, muxed."""
        out = self.convert(frame)
        out.pts, out.time_base = pts, self.time_base
        for pkt in c.stream.encode(out):
            c.container.mux(pkt)

    @staticmethod
    def _flush(c: _Clip) -> None:
        """(Encoder thread) drain the encoder and finish the file."""
        for pkt in c.stream.encode():
            c.container.mux(pkt)
        c.container.close()

    def convert(self, frame: "av.VideoFrame") -> "av.VideoFrame":
        g = self.geo
        if not g.rotation and (frame.width, frame.height, frame.format.name) == (g.out_w, g.out_h, "yuv420p"):
            return frame  # already what the encoder takes: no copy (this is the frame's last use)
        if not g.rotation:
            return frame.reformat(width=g.out_w, height=g.out_h, format="yuv420p")
        return av.VideoFrame.from_ndarray(g.apply(frame, "rgb24"), format="rgb24").reformat(format="yuv420p")

    def close(self, end_t: float | None = None) -> None:
        """Finish the open clip; end_t: its end time when no later source frame says it."""
        c, self.clip = self.clip, None
        if c is None:
            return
        if c.next_t is None:
            c.next_t = end_t
        if c.frames:
            self.enc.submit(self._flush, c)
        self.done.append(c)


class _EncodeThread:
    """The clips' encoding (colour conversion, libx264, muxing) in one thread of its own, fed in order
    through a bounded queue, so detection and decoding go on while x264 works: PyAV releases the GIL
    in swscale and in avcodec_send_frame/receive_packet, and a clip's flush (x264 draining its frame
    threads and lookahead) no longer stalls the decode. An error is raised in the caller at its next
    submit() or at join(); work after it is skipped."""

    def __init__(self, depth: int = 8) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.th = threading.Thread(target=self._work, name="split-encode", daemon=True)
        self.th.start()

    def submit(self, fn, *args) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((fn, args))

    def _work(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    item[0](*item[1])
                except BaseException as e:  # handed to the caller
                    self.error = e

    def join(self, raise_error: bool = True) -> None:
        """Wait for all submitted work; raise its error, if any."""
        self.q.put(None)
        self.th.join()
        if raise_error and self.error is not None:
            raise self.error


class SplitStage(Stage):
    """videos-table rows -> clips-table rows (one per clip, kept or dropped, or one error row)."""

    name = "split"

    resources_key = "split.resources"

    def __init__(self, params: SplitConfig, root: str, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.p, self.root = params, root
        self.stateful = params.detector == "transnetv2"  # actors: the network loads once per actor

    def setup(self) -> None:
        self.storage = Storage(self.root)
        self.model, self.model_error = None, None
        if self.p.detector == "transnetv2":
            from curation.shots import ShotModelError, load_model

            import torch

            # One split task holds num_cpus CPUs: the network's threads stay within them.
            torch.set_num_threads(max(1, int(self.resources.num_cpus)))
            try:
                self.model = load_model(self.p.transnetv2.weights, "cuda" if self.resources.num_gpus > 0 else "cpu")
            except ShotModelError as e:  # every video of this worker becomes an error row, retried next run
                self.model_error = str(e)

    def process_row(self, row: dict) -> list[dict]:
        if self.model_error:
            raise VideoError(self.model_error)
        with tempfile.TemporaryDirectory(prefix="split-") as tmp:
            return split_video(row, self.p, self.storage, tmp, self.model)

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [error_row(row, message)]


def error_row(row: dict, message: str) -> dict:
    blank = {f.name: None for f in tables.CLIPS}
    if row["source"] not in message:  # every error row names its file
        message = f"{row['source']}: {message}"
    return {**blank, "clip_id": f"{row['video_id']}_error", "video_id": row["video_id"], "source": row["source"],
            "status": "error", "reason": message}


class Scanner:
    """Decodes a video once and runs the detector on every frame (downscaled).

    Iterating yields (index, seconds, frame). `cuts` (frames where a new shot starts) and `gaps` (frames
    inside gradual transitions) grow as frames are fed; `settled()` is the index below which they are
    final (AdaptiveDetector and TransNetV2 place cuts behind the newest frame). After iteration,
    `finish()` adds what the detector only emits at the end, and `truncated` says whether decoding
    stopped early. Seconds are the frames' presentation times on the source's own timeline.
    """

    def __init__(self, cont: "av.container.InputContainer", source: str, p: SplitConfig, fps: float,
                 model: object = None) -> None:
        self.cont, self.source, self.p, self.fps = cont, source, p, fps
        self.st = first_video_stream(cont, source)
        self.tb = self.st.time_base or Fraction(1, 90000)
        if p.detector == "transnetv2" and model is None:
            from curation.shots import load_model

            model = load_model(p.transnetv2.weights)
        self.det = make_detector(p, model)
        self.tn = p.detector == "transnetv2"
        self.first: "av.VideoFrame | None" = None
        self.rotation = 0
        self.truncated: str | None = None
        self.count = 0
        self.cuts: set[int] = set()
        self.gaps: set[int] = set()
        self.last_dt: float | None = None  # the last frame's duration (for the last clip's end_s)
        self._pts_index: dict[int, int] = {}

    def _decoded(self):
        """(frame, detector image) pairs; runs in a helper thread (see __iter__)."""
        from curation.shots import small_frame

        dsize, rot = None, 0
        for fr in self.cont.decode(self.st):
            if dsize is None:
                dw = min(fr.width, self.p.detect_width)
                dsize = (dw, max(1, round(fr.height * dw / fr.width)))
                rot = frame_rotation(fr) or stream_rotation(self.st)
            if self.tn:
                yield fr, small_frame(fr, rot)
            else:
                yield fr, (_detect_frame(fr, dsize) if self.det is not None else None)

    def settled(self) -> int:
        """Frames below this index have their cuts and gaps decided."""
        if self.tn:
            return self.det.settled
        if self.det is not None:
            return self.count - (self.p.min_scene_len + 8)  # PySceneDetect's delay (AdaptiveDetector's window)
        return self.count

    def __iter__(self):
        tb, fps = self.tb, self.fps
        t_prev = None
        i = -1
        try:
            # Decoding and the detector's colour conversion release the GIL: a helper thread runs
            # them one frame ahead of the detector and the encoder, as PySceneDetect overlaps decoding.
            for i, (fr, small) in enumerate(_prefetch(self._decoded(), depth=4)):
                if self.first is None:
                    self.first = fr
                    self.rotation = frame_rotation(fr) or stream_rotation(self.st)
                # The source's own clock (pts x time base); a frame without pts follows the previous one.
                t = float(fr.pts * tb) if fr.pts is not None else (t_prev + 1 / fps if t_prev is not None else 0.0)
                if t_prev is not None and t > t_prev:
                    self.last_dt = t - t_prev
                t_prev = t
                self._detect(i, t, fr, small)
                self.count = i + 1
                yield i, t, fr
        except av.error.FFmpegError as e:
            if self.first is None:
                raise VideoError(f"{self.source}: decode failed ({e})") from None
            # Truncated mid-stream: the frames that did decode still make clips, and the rows say so.
            self.truncated = f"truncated: decode stopped at frame {i + 1}: {e}"
        if self.first is None:
            raise VideoError(f"{self.source}: no decodable video frames")

    def _detect(self, i: int, t: float, fr: "av.VideoFrame", small: object) -> None:
        """Feed frame i to the detector; new cuts land in self.cuts (and self.gaps)."""
        if self.tn:
            self.det.push(small)
            self.cuts, self.gaps = self.det.cuts, self.det.gaps
        elif self.det is not None:
            key = fr.pts if fr.pts is not None else i
            tc = FrameTimecode(Timecode(pts=key, time_base=self.tb if fr.pts is not None
                                        else Fraction(1, max(1, round(self.fps)))), fps=self.fps)
            self._pts_index[key] = i
            self.cuts.update(self._index(c) for c in self.det.process_frame(tc, small))
        else:
            if i == 0:
                self._next_stride = t + self.p.stride_s
            elif t + 1e-6 >= self._next_stride:
                self.cuts.add(i)
                self._next_stride += self.p.stride_s

    def finish(self) -> None:
        """The cuts the detector only emits at the end of the video."""
        if self.tn:
            self.det.finish()
            self.cuts, self.gaps = self.det.cuts, self.det.gaps
        elif self.det is not None:
            self.cuts.update(self._index(c) for c in self.det.post_process(FrameTimecode(self.count, fps=self.fps)))

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


def detect_scenes(source: str, p: SplitConfig, fps: float | None = None, model: object = None) -> list[int]:
    """Shot detection alone (no clips written): the frame indices where new shots start."""
    with open_container(source) as cont:
        sc = Scanner(cont, source, p, _fps({"fps": fps}, cont), model)
        for _ in sc:
            pass
        sc.finish()
    return sorted(c for c in sc.cuts if c > 0)


def split_video(row: dict, p: SplitConfig, storage: Storage, tmpdir: str, model: object = None) -> list[dict]:
    """Detect shots and write clips of one video in one decode pass; returns its clips-table rows."""
    source, vid = row["source"], row["video_id"]
    enc = _EncodeThread()
    try:
        with open_container(source) as cont:
            fps = _fps(row, cont)
            sc = Scanner(cont, source, p, fps, model)
            sp: _Splitter | None = None
            buf: collections.deque = collections.deque()
            for i, t, fr in sc:
                if sp is None:
                    geo = Geometry.fit(fr.width, fr.height, stream_sar(sc.st), sc.rotation, p.max_width,
                                       p.max_height)
                    sp = _Splitter(p, vid, source, tmpdir, fps, geo, sc.tb, enc=enc)
                buf.append((i, t, fr))
                # A frame leaves once the detector has settled it and the trim_frames after it.
                while buf and buf[0][0] + p.trim_frames < sc.settled():
                    _release(sp, sc, buf.popleft())
            sc.finish()
            while buf:
                _release(sp, sc, buf.popleft())
            sp.close(end_t=(sp.clip.end_t + (sc.last_dt or 1 / fps)) if sp.clip is not None else None)
    except BaseException:
        enc.join(raise_error=False)  # the first error wins; the files are left to the temporary folder
        raise
    enc.join()  # every clip file finished before the rows are built
    if sc.truncated:
        row = {**row, "truncated": sc.truncated}
    return _finish(sp, row, p, storage)


def _release(sp: "_Splitter", sc: Scanner, item: tuple) -> None:
    sp.cuts, sp.gaps = sc.cuts, sc.gaps
    sp.emit(*item)


def _finish(sp: _Splitter, row: dict, p: SplitConfig, storage: Storage) -> list[dict]:
    """Move kept clips into the root and build the rows; drop pieces that are too short."""
    rows = []
    for c in sp.done:
        end_s = c.next_t if c.next_t is not None else c.end_t + (1.0 / sp.fps if sp.fps else 0.0)
        dur = end_s - c.start_t  # the source's own times: VFR-safe
        cid = clip_id_for(sp.video_id, c.start, c.end)
        base = {"clip_id": cid, "video_id": sp.video_id, "source": sp.source, "start_frame": c.start,
                "end_frame": c.end, "start_s": c.start_t, "end_s": end_s,
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


class SplitTable(TableStage):
    """The split stage: probed videos -> clips-table rows (resume per video; failed videos are tried again)."""

    name = "split"
    item_count, done_count, count_retried = "videos", "split", True
    statuses = ("clips", "dropped", "errors")
    error_columns = ("status",)
    _STATUS = {"ok": "clips", "dropped": "dropped", "error": "errors"}

    def __init__(self, storage: Storage, params: SplitConfig, inputs: list[str],
                 resources: StageResources | None = None) -> None:
        # A video is done once it has a clip row that is not an error (its error rows are history then).
        super().__init__(storage, "clips", tables.CLIPS, key="clip_id", resume_key="video_id")
        self.params, self.inputs, self.resources = params, inputs, resources
        self.rotten: dict[str, list[str]] = {}  # video_id -> its quarantined clip files (set by state())
        self.recut = 0  # videos cut again this run because a clip file of theirs was quarantined

    @classmethod
    def from_run(cls, cfg: "object", ctx: "object") -> "SplitTable":
        return cls(ctx.storage, cfg.split, cfg.inputs,
                   StageResources.from_config(cfg.split.resources))

    def items(self) -> list[dict]:
        # Salvaged (truncated) videos too: the clips before the damage; never those that broke a
        # probe.prefilter rule (reasons).
        videos = [r for r in tables.read_table(self.storage, "videos", tables.VIDEOS).to_pylist()
                  if tables.usable_video(r) and not r.get("reasons")]
        full = _openable(self.inputs)  # redacted source (as stored) -> the URI with its credentials, to open
        return [{"video_id": v["video_id"], "source": full.get(v["source"], v["source"]), "fps": v["fps"]}
                for v in videos]

    def steps(self) -> list[Stage]:
        return [SplitStage(self.params, self.storage.root, self.resources)]

    def state(self) -> tuple[set, set]:
        """As the framework's, less the videos with a clip file quarantined (found damaged on read): cut again."""
        done, failed = super().state()
        self.rotten = quarantined_clips(self.storage)
        return done - set(self.rotten), failed

    def write(self, rows: list[dict]) -> None:
        super().write(rows)
        for vid in {r["video_id"] for r in rows if r["status"] != "error"} & set(self.rotten):
            for q in self.rotten.pop(vid):  # cut again: the damaged copy has done its job
                self.storage.delete(q)
            self.recut += 1

    def finish(self, counts: dict, local: bool) -> dict:
        return {**counts, "recut": self.recut}

    def failed(self, row: dict) -> bool:
        return row.get("status") == "error"

    def status(self, row: dict) -> str | None:
        return self._STATUS[row["status"]]

    def error_text(self, row: dict) -> str:
        return f"{row['source']}: {row['reason']}"

    def sink_every(self, todo: int) -> int:
        return 1  # one video's clips per part: a killed run resumes at the next video

run = SplitTable.run  # Section entry (curation.config)


def quarantined_clips(storage: Storage) -> dict[str, list[str]]:
    """video_id -> quarantined files of its clips (quarantine/clips/<video_id>/..., see tables.quarantine)."""
    out: dict[str, list[str]] = {}
    for rel in storage.walk_files("quarantine/clips"):
        parts = rel.split("/")
        if len(parts) >= 4:
            out.setdefault(parts[2], []).append(rel)
    return out


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
