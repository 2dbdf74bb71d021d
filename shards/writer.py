"""Shard stage: kept, captioned clips -> WebDataset tars + index.parquet + a stats summary per run.

    python -m vidcurate run pipelines.yaml --stage shard

1. Join (driver): clips (status "ok") x scores (passed) x dedup (duplicates out, when that stage ran)
   x one captions run (latest by default); keep clips that passed and have a caption. Every clip that
   is not kept is counted under its reason.
2. Plan (driver): shuffle the kept clips with a fixed seed (so a shard mixes source videos), pack them
   in order into shards closed at `target_shard_mb` or `max_samples_per_shard`.
3. Write (Ray, one task per shard): `<key>.json` (clip row, scores, caption provenance), `<key>.mp4`
   (the clip bytes), `<key>.txt` (the caption) into a temporary tar, then renamed into place
   (`shards/<name>/shard-000000.tar`). Each finished shard gets a sidecar `index/<shard>.parquet`.
4. Finish (driver): `index.parquet` (one row per sample: shard, key, member offset/size, bytes,
   duration, resolution, fps, frames), `stats/<run_id>.json`, and shards no longer in the plan removed.

Resume is per shard: a shard whose tar and sidecar exist, whose sidecar lists the planned keys with
the same content digest and no errors, is skipped. The plan is a pure function of the tables and the
config, so a re-run after a crash writes only the missing shards; changed inputs re-plan the set.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from captioning.table import read_captions as read_run
from curation import tables
from curation.config import BaseConfig
from curation.pipeline import RunContext
from curation.stage import Stage, StageResources
from curation.kept import duplicates as kept_duplicates, kept_view
from curation.storage import Storage
from curation.table_stage import TableStage, execute
from shards.config import WriterConfig
from curation.uris import redact

INDEX = pa.schema([
    ("shard", pa.string()),           # tar file name inside the shard folder
    ("key", pa.string()),             # sample key (= clip_id)
    ("offset", pa.int64()),           # byte offset of the .mp4 member's data inside the tar
    ("size", pa.int64()),             # bytes of the .mp4 member
    ("bytes", pa.int64()),            # bytes of the whole sample (json + mp4 + txt, with tar headers)
    ("duration_s", pa.float64()),     # clip duration (frames / fps)
    ("width", pa.int32()),            # clip resolution
    ("height", pa.int32()),
    ("fps", pa.float64()),
    ("frames", pa.int64()),
    ("video_id", pa.string()),        # source video of the clip
    ("digest", pa.string()),          # content digest of the shard's plan (resume check)
    ("error", pa.string()),           # why this sample (or the whole shard, key null) was not written
])

TAR_OVERHEAD = 3 * 1024  # three 512-byte headers + padding per sample, for size planning


# ------------------------------------------------------------------------------------------ join ---

@dataclass
class Selection:
    """The result of the join: kept samples, and why every other clip was left out."""

    samples: list[dict]  # {"key", "path", "bytes", "meta", "caption"} in shuffled order
    dropped: Counter = field(default_factory=Counter)  # reason -> clips
    clips: int = 0  # rows in the clips table
    captions_run: str | None = None
    scores_present: bool = False


def latest_captions_run(storage: Storage) -> str | None:
    """The captions run whose newest part was written last (runs are folders under captions/)."""
    sel = pafs.FileSelector(storage.path("captions"), allow_not_found=True)
    best: tuple[float, str] | None = None
    for info in storage.fs.get_file_info(sel):
        if info.type != pafs.FileType.Directory:
            continue
        parts = storage.fs.get_file_info(pafs.FileSelector(info.path, allow_not_found=True))
        mtimes = [p.mtime.timestamp() for p in parts if p.base_name.endswith(".parquet") and p.mtime is not None
                  and not p.base_name.startswith(".tmp-")]
        if mtimes and (best is None or (max(mtimes), info.base_name) > best):
            best = (max(mtimes), info.base_name)
    return best[1] if best else None


def read_captions(storage: Storage, run: str) -> dict[str, dict]:
    """clip_id -> caption row of a run, by the captions table's own rule (a caption beats an error)."""
    return {r["clip_id"]: r for r in read_run(storage, run).to_pylist()}


def select(storage: Storage, wc: WriterConfig) -> Selection:
    """Join the kept clips (curation.kept) and captions; return the kept samples in their fixed-seed
    shuffled order."""
    view = kept_view(storage)
    if not view.clips:
        raise ValueError(f"{storage.root}: the clips table is empty or missing (run the split stage first)")
    if not view.scores and wc.require_scores:
        raise ValueError(f"{redact(storage.uri('scores'))}: no scores table (run the filter stage first, or set "
                         "shard.writer.require_scores: false to treat every ok clip as passed)")
    run = wc.captions_run or latest_captions_run(storage)
    if run is None:
        raise ValueError(f"{redact(storage.uri('captions'))}: no captions run found (run the caption stage first)")
    if not storage.list(f"captions/{run}", ".parquet"):
        raise ValueError(f"{redact(storage.uri('captions/' + run))}: captions run {run!r} has no parts")
    caps = read_captions(storage, run)
    sel = Selection([], Counter(), len(view.clips), run, bool(view.scores))
    for c in view.clips:
        cid = c["clip_id"]
        why = view.reason(c) or _caption_problem(caps.get(cid), wc)
        if why:
            sel.dropped[why] += 1
            continue
        cap = caps[cid]
        score = {k: v for k, v in view.scores.get(cid, {}).items() if k != "clip_id"}
        meta = {"key": cid, "clip": c, "scores": score, "caption": {**cap, "run": run}}
        sel.samples.append({"key": cid, "path": c["path"], "bytes": int(c["bytes"] or 0),
                            "caption": cap["text"].strip(), "meta": meta})
    sel.samples.sort(key=lambda r: r["key"])
    random.Random(wc.seed).shuffle(sel.samples)  # mixes source videos across shards
    return sel


def _caption_problem(cap: dict | None, wc: WriterConfig) -> str | None:
    """Why a kept clip's caption keeps it out of the shards (None: it goes in)."""
    if cap is None:
        return "not captioned"
    if cap.get("error") is not None or not (cap.get("text") or "").strip():
        return "caption failed"
    if set(cap.get("flags") or []) & set(wc.drop_caption_flags):
        return "caption flagged"
    failed = [n for n in wc.drop_caption_checks if cap.get(f"check_{n}_yes")]
    if failed:
        return f"caption check {failed[0]}"
    return None


def duplicates(storage: Storage, passed: set[str]) -> set[str]:
    """Clips the dedup table marks as duplicates of a clip that still passes (curation.kept.duplicates)."""
    return kept_duplicates(storage, passed)


def pack(samples: list[dict], wc: WriterConfig) -> list[list[dict]]:
    """Consecutive samples into shards, each closed before passing target_shard_mb or max samples."""
    limit = wc.target_shard_mb * 1024 * 1024
    shards: list[list[dict]] = []
    cur: list[dict] = []
    size = 0.0
    for s in samples:
        est = s["bytes"] + len(_meta_bytes(s)) + len(s["caption"].encode()) + TAR_OVERHEAD
        if cur and (size + est > limit or len(cur) >= wc.max_samples_per_shard):
            shards.append(cur)
            cur, size = [], 0.0
        cur.append(s)
        size += est
    if cur:
        shards.append(cur)
    return shards


def _meta_bytes(s: dict) -> bytes:
    return json.dumps(s["meta"], sort_keys=True, default=str).encode()


def digest(samples: list[dict]) -> str:
    """Content digest of a shard's plan: keys, metadata and captions (not the clip bytes)."""
    h = hashlib.sha1()
    for s in samples:
        h.update(_meta_bytes(s))
    return h.hexdigest()[:16]


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


# ----------------------------------------------------------------------------------------- write ---

def _add(tf: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add a member; return the byte offset of its data in the tar (for in-place reads, e.g. re-captioning)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "vidcurate", "vidcurate"
    tf.addfile(ti, io.BytesIO(data))
    return tf.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def write_shard(storage: Storage, folder: str, name: str, samples: list[dict], plan_digest: str) -> list[dict]:
    """Write one tar (temporary name, then renamed) and return its index rows (one per sample)."""
    storage.makedirs(folder)
    if storage.is_local:  # same folder: the final rename is atomic
        tmp = storage.path(f"{folder}/.tmp-{uuid.uuid4().hex}-{name}")
    else:
        fd, tmp = tempfile.mkstemp(suffix=".tar", prefix=".tmp-shard-")
        os.close(fd)
    rows = []
    try:
        with open(tmp, "wb") as f:
            tf = tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT)
            for s in samples:
                key, clip = s["key"], s["meta"]["clip"]
                base = {"shard": name, "key": key, "digest": plan_digest, "video_id": clip["video_id"],
                        "width": clip["width"], "height": clip["height"], "fps": clip["fps"],
                        "frames": clip["frames"], "offset": None, "size": None, "bytes": None,
                        "duration_s": (clip["frames"] / clip["fps"]) if clip["fps"] else None, "error": None}
                try:
                    data = storage.read_bytes(s["path"])
                except Exception as e:  # a missing clip file: the sample is left out and reported
                    rows.append({**base, "error": f"cannot read clip {redact(storage.uri(s['path']))}: {e}"})
                    continue
                start = tf.offset
                _add(tf, f"{key}.json", _meta_bytes(s))
                offset = _add(tf, f"{key}.mp4", data)
                _add(tf, f"{key}.txt", s["caption"].encode())
                rows.append({**base, "offset": offset, "size": len(data), "bytes": tf.offset - start})
            tf.close()  # writes the end-of-archive blocks
            f.flush()
            os.fsync(f.fileno())
        storage.put_file(tmp, f"{folder}/{name}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return rows


class ShardWriteStage(Stage):
    """One row per shard {"shard", "samples" (JSON), "digest"} -> that shard's index rows."""

    name = "shard"

    def __init__(self, storage: Storage, folder: str, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.storage, self.folder = storage, folder  # Storage pickles with its filesystem (S3, GCS, local)

    def process_row(self, row: dict) -> list[dict]:
        return write_shard(self.storage, self.folder, row["shard"], json.loads(row["samples"]), row["digest"])

    def error_rows(self, row: dict, message: str) -> list[dict]:
        blank = {f.name: None for f in INDEX}
        return [{**blank, "shard": row["shard"], "digest": row["digest"], "error": message}]


# ------------------------------------------------------------------------------------------- run ---

def _sidecar(folder: str, name: str) -> str:
    return f"{folder}/index/{name.removesuffix('.tar')}.parquet"


def _read_sidecar(storage: Storage, rel: str) -> list[dict]:
    if not storage.exists(rel):
        return []
    return pq.read_table(storage.fs.open_input_file(storage.path(rel))).to_pylist()


def _is_done(storage: Storage, folder: str, name: str, samples: list[dict], plan_digest: str) -> bool:
    if not storage.exists(f"{folder}/{name}"):
        return False
    rows = _read_sidecar(storage, _sidecar(folder, name))
    return ([r["key"] for r in rows] == [s["key"] for s in samples]
            and all(r["digest"] == plan_digest and r["error"] is None for r in rows))


def _typed(rows: list[dict]) -> list[dict]:
    """Rows back from Ray Data (through pandas) in the index schema's types."""
    out = []
    for r in rows:
        r = {f.name: r.get(f.name) for f in INDEX}
        for c in ("offset", "size", "bytes", "frames", "width", "height"):
            if r[c] is not None:
                r[c] = int(r[c])
        out.append(r)
    return out


class ShardTable(TableStage):
    """The shard stage: the planned shards of `wc.name` -> tars and their index sidecars.

    Its "table" is the sidecars (`<folder>/index/<shard>.parquet`, one row per sample): a shard is done
    when its tar exists and its sidecar lists the plan's keys with the plan's digest and no error."""

    name = "shard"
    item_count = "shards"
    statuses = ()

    def __init__(self, storage: Storage, wc: WriterConfig) -> None:
        super().__init__(storage, f"shards/{wc.name}/index", INDEX, key="key", resume_key="shard")
        self.wc, self.folder = wc, f"shards/{wc.name}"
        self.sel = select(storage, wc)
        self.plan = pack(self.sel.samples, wc)
        self.names = [shard_name(i) for i in range(len(self.plan))]
        self.expected = {n: len(p) for n, p in zip(self.names, self.plan)}
        self.got: dict[str, list[dict]] = {}  # shard -> index rows arrived so far (a shard's rows may come split)

    def items(self) -> list[dict]:
        return [{"shard": n, "samples": json.dumps(p, default=str), "digest": digest(p)}
                for n, p in zip(self.names, self.plan)]

    def todo(self, items: list[dict]) -> tuple[list[dict], int]:
        _remove_tmp(self.storage, self.folder)  # leftovers of a killed run
        return [i for i, p in zip(items, self.plan)
                if not _is_done(self.storage, self.folder, i["shard"], p, i["digest"])], 0

    def steps(self) -> list[Stage]:
        return [ShardWriteStage(self.storage, self.folder, StageResources.from_config(self.wc.resources))]

    def failed(self, row: dict) -> bool:
        return row.get("key") is None  # the task failed before writing the shard

    def error_text(self, row: dict) -> str:
        return f"{row['shard']}: {row['error']}"

    def sink_every(self, todo: int) -> int:
        return 1

    def prepare(self, rows: list[dict]) -> list[dict]:
        return _typed(rows)

    def write(self, rows: list[dict]) -> None:
        """A shard's sidecar, once all its rows arrived (or its task failed: no tar of an older plan stays)."""
        for r in rows:
            self.got.setdefault(r["shard"], []).append(r)
        for n in [n for n, rs in self.got.items() if len(rs) >= self.expected[n] or any(r["key"] is None for r in rs)]:
            if any(r["key"] is None for r in self.got[n]):
                self.storage.delete(f"{self.folder}/{n}")
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(self.got.pop(n), schema=INDEX), buf, compression="zstd")
            self.storage.write_bytes(_sidecar(self.folder, n), buf.getvalue())

    def finish(self, counts: dict, local: bool) -> dict:
        removed = _remove_stale(self.storage, self.folder, set(self.names))
        stats = _finish(self.storage, self.folder, self.names, self.sel, self.wc)
        stats.update({"shards_written": counts["shards"] - counts["skipped"], "shards_skipped": counts["skipped"],
                      "shards_removed": removed})
        return stats


def write_shards(storage: Storage, wc: WriterConfig, run_id: str, local: bool = False,
                 progress: bool = True, ctx: RunContext | None = None) -> dict:
    """Join, plan and write the shard set `wc.name`; returns the run's stats (also saved as JSON).

    `local` writes shards one by one in this process (tests, tiny sets); otherwise one Ray task per
    shard on the current Ray (curation.runner.run_pipeline).
    """
    t0 = time.time()
    stats = execute(ShardTable(storage, wc), local=local, progress=progress, ctx=ctx).counts
    stats.update({"run_id": run_id, "seconds": round(time.time() - t0, 3)})
    storage.write_bytes(f"shards/{wc.name}/stats/{run_id}.json", json.dumps(stats, indent=2, default=str).encode())
    return stats


def _remove_tmp(storage: Storage, folder: str) -> None:
    sel = pafs.FileSelector(storage.path(folder), allow_not_found=True)
    for info in storage.fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
            storage.fs.delete_file(info.path)


def _remove_stale(storage: Storage, folder: str, keep: set[str]) -> int:
    """Delete tars (and sidecars) of an earlier plan that this plan no longer has."""
    n = 0
    for rel in storage.list(folder, ".tar"):
        name = rel.rsplit("/", 1)[-1]
        if name not in keep:
            storage.delete(rel)
            storage.delete(_sidecar(folder, name))
            n += 1
    return n


def _finish(storage: Storage, folder: str, names: list[str], sel: Selection, wc: WriterConfig) -> dict:
    """index.parquet from the sidecars, and the counts of this shard set."""
    rows, errors = [], []
    for n in names:
        side = _read_sidecar(storage, _sidecar(folder, n))
        if not side:
            errors.append(f"{n}: not written")
        for r in side:
            (errors.append(f"{n}/{r['key']}: {r['error']}") if r["error"] else rows.append(r))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX), buf, compression="zstd")
    storage.write_bytes(f"{folder}/index.parquet", buf.getvalue())
    res = Counter(f"{r['width']}x{r['height']}" for r in rows)
    durs = [r["duration_s"] or 0.0 for r in rows]
    hist = Counter(_dur_bin(d) for d in durs)
    return {"shard_set": wc.name, "folder": redact(storage.uri(folder)), "captions_run": sel.captions_run,
            "scores_table": sel.scores_present, "clips": sel.clips, "kept": len(sel.samples),
            "dropped": dict(sel.dropped), "shards": len(names), "samples": len(rows),
            "sample_errors": len(errors), "errors": errors[:100], "bytes": sum(r["bytes"] for r in rows),
            "hours": round(sum(durs) / 3600, 4), "resolutions": dict(res.most_common()),
            "durations_s": dict(sorted(hist.items()))}


def _dur_bin(d: float) -> str:
    for hi in (2, 5, 10, 20, 30, 60):
        if d < hi:
            return f"<{hi}"
    return ">=60"


def run(cfg: BaseConfig, ctx: RunContext) -> dict:
    """Stage entry point (curation.pipeline): write the shard set of `cfg.shard.writer` under ctx's root."""
    stats = write_shards(ctx.storage, cfg.shard.writer, ctx.run_id, progress=cfg.ray.progress, ctx=ctx)
    ctx.stages.setdefault("shard", {})["errors"] = stats["errors"]
    print(f"[shard] {stats['samples']} samples in {stats['shards']} shards at {stats['folder']} "
          f"(dropped: {stats['dropped']})", file=sys.stderr)
    return {k: stats[k] for k in ("clips", "kept", "samples", "shards", "shards_written", "shards_skipped",
                                  "sample_errors")}
