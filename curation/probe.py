"""Probe stage: one row of metadata per input file, errors included.

duration, frame count, fps (and whether it varies), size, sample aspect ratio, rotation, codec, pixel
format, audio, bytes and a deterministic video id. A file that is not a video, empty, truncated or
undecodable gets a row whose `error` says so; the run goes on.
"""
from __future__ import annotations

import numpy as np

from curation import tables
from curation.config import BaseConfig
from curation.pipeline import RunContext
from curation.prefilter import PrefilterConfig, bits_per_pixel, prefilter_reasons
from curation.stage import Stage, StageResources
from curation.storage import Storage, expand_inputs, filesystem
from curation.table_stage import TableStage
from curation.uris import redact
from curation.video import (VideoError, first_video_stream, frame_rotation, open_container, stream_rotation,
                            stream_sar, video_id_for)


def _size(source: str) -> int:
    if "://" in source and not source.startswith("file://"):
        fs, path = filesystem(source)
        return fs.get_file_info(path).size or 0
    import os

    return os.path.getsize(source.removeprefix("file://"))


def probe_video(source: str, count_frames: bool = True) -> dict:
    """Metadata of one file; raises VideoError with a clear message when it is not a usable video."""
    size = _size(source)
    if size == 0:
        raise VideoError(f"{source}: empty file (0 bytes)")
    with open_container(source) as c:
        st = first_video_stream(c, source)
        cc = st.codec_context
        rotation = stream_rotation(st)
        fps = float(st.average_rate or st.guessed_rate or 0)
        pts: list[int] = []
        first = None
        frames = 0
        decode_error = None
        try:
            if count_frames:
                # Demux + decode every frame: container frame counts are often missing or wrong,
                # and a file that does not decode to the end is truncated or corrupt.
                for fr in c.decode(st):
                    if first is None:
                        first = fr
                        rotation = frame_rotation(fr) or rotation
                    if fr.pts is not None:
                        pts.append(fr.pts)
                    frames += 1
            else:
                frames = st.frames
        except Exception as e:  # FFmpeg errors mid-stream: the file is truncated or corrupt
            decode_error = f"{source}: decode failed after {frames} frames ({type(e).__name__}: {e})"
            if frames == 0:
                raise VideoError(decode_error) from None
            # Salvage: the frames before the damage are still split (clips flagged truncated); the row says where.
        if count_frames and frames == 0:
            raise VideoError(f"{source}: no decodable video frames")
        tb = float(st.time_base) if st.time_base else 0.0
        vfr = False
        if len(pts) > 2:
            d = np.diff(np.sort(np.asarray(pts, dtype=np.float64)))
            d = d[d > 0]
            if len(d):
                vfr = bool((d.max() - d.min()) / np.median(d) > 0.01)
                # Average rate from timestamps: exact for VFR files whose header rate is nominal.
                span = (pts and (max(pts) - min(pts)) * tb) or 0
                if span > 0 and frames > 1:
                    fps = (frames - 1) / span if vfr else fps or (frames - 1) / span
        if st.duration and tb:
            duration = float(st.duration * tb)
        elif c.duration:
            duration = c.duration / 1e6
        else:
            duration = frames / fps if fps else 0.0
        if len(pts) > 1 and tb:
            duration = max(duration, (max(pts) - min(pts)) * tb + 1.0 / max(fps, 1e-6)) if not st.duration else duration
        sar = stream_sar(st)
        w, h = cc.width, cc.height
        # The video stream's own bitrate; else the container's (audio included: an upper bound).
        rate = st.bit_rate or c.bit_rate or (size * 8 / duration if duration else None)
        dw, dh = round(w * sar), h
        if rotation in (90, 270):
            dw, dh = dh, dw
        return {
            "video_id": video_id_for(source), "source": source, "bytes": size, "duration_s": duration,
            "frames": frames, "fps": fps, "vfr": vfr, "width": w, "height": h, "display_width": dw,
            "display_height": dh, "sar": sar, "rotation": rotation, "codec": cc.name,
            "pix_fmt": cc.pix_fmt or (first.format.name if first is not None else None),
            "has_audio": bool(c.streams.audio), "error": decode_error, "truncated": decode_error is not None,
            "bpp": bits_per_pixel(rate, w, h, fps),
        }


class ProbeStage(Stage):
    """Ray stage wrapper of probe_video: rows {"source"} -> rows of the videos table."""

    name = "probe"

    def __init__(self, count_frames: bool = True, resources=None, prefilter: PrefilterConfig | None = None,
                 min_clip_s: float | None = None) -> None:
        super().__init__(resources)
        self.count_frames = count_frames
        self.prefilter, self.min_clip_s = prefilter or PrefilterConfig(), min_clip_s

    def process_row(self, row: dict) -> list[dict]:
        out = probe_video(row["source"], self.count_frames)
        out["reasons"] = prefilter_reasons(out, self.prefilter, self.min_clip_s)
        return [out]

    def error_rows(self, row: dict, message: str) -> list[dict]:
        src = row["source"]
        size = None
        try:
            size = _size(src)
        except OSError:
            pass
        blank = {f.name: None for f in tables.VIDEOS}
        if src not in message:  # an error raised below our code (e.g. a codec's metadata): still name the file
            message = f"{src}: {message}"
        return [{**blank, "video_id": video_id_for(src), "source": src, "bytes": size, "error": message}]


class ProbeTable(TableStage):
    """The probe stage: one videos-table row per input (errors are retried by the next run)."""

    name = "probe"
    item_count, done_count = "inputs", "probed"
    statuses = ("errors", "truncated")  # truncated: decoding failed mid-stream, the frames before are used
    error_columns = ("error", "truncated")

    def __init__(self, storage: Storage, inputs: list[str], count_frames: bool = True,
                 resources: StageResources | None = None, prefilter: PrefilterConfig | None = None,
                 min_clip_s: float | None = None) -> None:
        # Rows hold redacted sources (curation.uris): an input is done when its redacted URI has a clean row.
        super().__init__(storage, "videos", tables.VIDEOS, key="video_id", resume_key="source")
        self.inputs, self.count_frames, self.resources = inputs, count_frames, resources
        self.prefilter, self.min_clip_s = prefilter, min_clip_s

    @classmethod
    def from_run(cls, cfg: BaseConfig, ctx: RunContext) -> "ProbeTable":
        return cls(ctx.storage, cfg.inputs, cfg.probe.count_frames, StageResources.from_config(cfg.probe.resources),
                   cfg.probe.prefilter, cfg.split.min_clip_s)

    def items(self) -> list[dict]:
        return [{"source": s} for s in expand_inputs(self.inputs)]  # workers get the full URI to open

    def item_key(self, item: dict) -> str:
        return redact(item["source"])

    def steps(self) -> list[Stage]:
        return [ProbeStage(self.count_frames, self.resources, self.prefilter, self.min_clip_s)]

    def sink_every(self, todo: int) -> int:
        return max(1, min(64, todo // 10 or 1))

    def failed(self, row: dict) -> bool:
        # a salvaged (truncated) file is done: probing it again would find the same damage
        return not tables.usable_video(row)

    def status(self, row: dict) -> str | None:
        return "truncated" if row.get("truncated") else "errors" if row.get("error") else None

    def reported(self, row: dict) -> bool:
        return bool(row.get("error"))  # a salvaged file's decode error is shown too (it is not retried)


run = ProbeTable.run  # Section entry (curation.config)
