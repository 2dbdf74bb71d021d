"""Re-captioning of an existing dataset with a new model or prompt, without re-splitting or re-filtering.

Input is either the clips table of a dataset root (kept clips, as the caption stage picks them) or
WebDataset shards (each sample's mp4 member is read in place from the tar). Output is a new captions
run under `<root>/captions/<run>/`, resumable per clip like the stage, and optionally new shards:
every input tar copied member by member with the new caption stored under `caption_key` (replacing a
member with that extension, or added beside the old caption when the key is new).
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

from captioning.config import CaptionConfig
from captioning.table import read_captions
from curation.runner import init_ray
from curation.storage import Storage, expand_inputs


@contextmanager
def open_tar(uri: str) -> Iterator[tarfile.TarFile]:
    """A tar for random-access reading: a local path or an object-store URI (seekable pyarrow file)."""
    if "://" in uri and not uri.startswith("file://"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as t:
            yield t
    else:
        with tarfile.open(uri.removeprefix("file://"), mode="r:") as t:
            yield t


def split_name(name: str) -> tuple[str, str]:
    """WebDataset naming: `dir/key.ext.ext2` -> ("dir/key", "ext.ext2") (the key ends at the basename's first dot)."""
    d, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(d, key) if d else key, ext


def shard_items(shards: list[str], video_ext: str = "mp4") -> list[dict]:
    """One work item per sample that has a `video_ext` member: its key is the clip id.

    Raises ValueError when no shard matches or a key appears in two shards (captions are keyed by it).
    """
    if not shards:
        raise ValueError("no WebDataset shard matched the given paths")
    items, seen = [], {}
    for uri in shards:
        with open_tar(uri) as t:
            for m in t:
                if not m.isfile():
                    continue
                key, ext = split_name(m.name)
                if ext != video_ext:
                    continue
                if key in seen:
                    raise ValueError(f"sample key {key!r} appears in both {seen[key]} and {uri}")
                seen[key] = uri
                items.append({"clip_id": key, "tar": uri, "offset": m.offset_data, "size": m.size, "duration_s": None})
    return items


def write_shards(storage: Storage, run: str, shards: list[str], out: str, caption_key: str = "txt",
                 video_ext: str = "mp4") -> dict:
    """Copy each shard to `out/<same name>` with the run's captions under `caption_key`.

    A shard is written only when every sample of it with a readable video has a caption in the run
    (flagged captions count; engine errors do not), so no new shard mixes old and new captions. A
    sample whose video cannot be decoded (a `frames:` error) is copied unchanged: re-captioning does
    not filter. Shards already in `out` are skipped (resume). Returns counts: written, skipped,
    incomplete (shards held back), missing (samples still without a caption), unreadable.
    """
    if not caption_key or "/" in caption_key:
        raise ValueError(f"caption key {caption_key!r}: must be a member extension such as 'txt' or 'caption2.txt'")
    caps, unreadable = {}, set()
    for r in read_captions(storage, run).to_pylist():
        if r["error"] is None:
            caps[r["clip_id"]] = r["text"]
        elif r["error"].startswith("frames:"):
            unreadable.add(r["clip_id"])
    dest = Storage(out)
    dest.fs.create_dir(dest.base, recursive=True)
    # Local output: the temporary tar sits beside its final name, so the rename is atomic.
    tmp_dir = dest.base if dest.is_local else None
    counts = {"written": 0, "skipped": 0, "incomplete": 0, "missing": 0, "unreadable": 0}
    for uri in shards:
        name = posixpath.basename(uri)
        if dest.exists(name):
            counts["skipped"] += 1
            continue
        with open_tar(uri) as t:
            members = [m for m in t if m.isfile()]
            videos = {split_name(m.name)[0] for m in members if split_name(m.name)[1] == video_ext}
            keys = videos - unreadable
            missing = [k for k in keys if k not in caps]
            if missing:
                counts["incomplete"] += 1
                counts["missing"] += len(missing)
                continue
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=tmp_dir)
            os.close(fd)
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as w:
                for i, m in enumerate(members):
                    key, ext = split_name(m.name)
                    if not (key in keys and ext == caption_key):  # an old caption under the key is replaced
                        w.addfile(m, t.extractfile(m))
                    last_of_sample = i + 1 == len(members) or split_name(members[i + 1].name)[0] != key
                    if key in keys and last_of_sample:
                        data = caps[key].encode()
                        info = tarfile.TarInfo(f"{key}.{caption_key}")
                        info.size, info.mtime, info.mode = len(data), m.mtime, 0o644
                        w.addfile(info, io.BytesIO(data))
        dest.put_file(tmp, name)
        counts["written"] += 1
        counts["unreadable"] += len(videos & unreadable)
    return counts


def recaption(root: str, cfg: CaptionConfig, shards: list[str] | None = None, out: str | None = None,
              caption_key: str = "txt", video_ext: str = "mp4", local: bool = False,
              on_part: Callable[[dict], None] | None = None, demo_models: str | None = None) -> dict:
    """Caption a dataset's clips table (shards=None) or WebDataset shards into `captions/<cfg.run>`.

    With `out` (shards input only), also write the re-captioned shards. `demo_models`: demo.models (a missing
    model under it is built as a tiny random one). Returns the counts.
    """
    from captioning.stage import caption_items, clip_items, prepare_model

    cfg = prepare_model(cfg, demo_models)
    storage = Storage(root)
    if shards is not None:
        files = expand_inputs(shards)
        items = shard_items(files, video_ext)
    else:
        if out:
            raise ValueError("--out writes new shards and needs --shards input")
        items = clip_items(storage, cfg)
    if not local:
        init_ray()
    counts = caption_items(storage, cfg, items, local=local, on_part=on_part)
    if shards is not None and out:
        counts["shards"] = write_shards(storage, cfg.run, files, out, caption_key, video_ext)
    return counts
