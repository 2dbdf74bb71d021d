"""The dataset root: a local folder or an object-store URI, reached through pyarrow.fs.

Every write goes to a temporary name and is renamed into place (on object stores, where rename is
not atomic, the object is written once under its final name, which is itself atomic), so a killed
run never leaves a half-written file where a reader would trust it.
"""
from __future__ import annotations

import errno
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow.fs as pafs

from curation import retry


@dataclass
class Storage:
    """A dataset root. `root` is a local path or a URI (s3://bucket/prefix, gs://..., file:///...)."""

    root: str
    # table -> the number of the last Parquet part written through this object (curation/tables.py
    # next_sequence lists a table once, then counts up): state of this root's writer, not a module global.
    part_sequences: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "://" not in self.root:
            self.root = os.path.abspath(os.path.expanduser(self.root))
        self.fs, self.base = filesystem(self.root)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def _rfs(self) -> pafs.FileSystem:
        """`fs` for the calls below that curation/retry.py retries (and counts); follows `fs` when a caller
        points the root at another filesystem."""
        if getattr(self, "_rfs_of", None) is not self.fs:
            self._rfs_cached, self._rfs_of = _single_try(self.fs), self.fs
        return self._rfs_cached

    def path(self, rel: str) -> str:
        """Filesystem path (for self.fs) of a path relative to the root."""
        return posixpath.join(self.base, rel)

    def local_path(self, rel: str) -> str | None:
        """An OS path when the root is local, else None (callers then stream bytes)."""
        return self.path(rel) if self.is_local else None

    def uri(self, rel: str) -> str:
        """A URI for `rel` that filesystem() opens again (object-store options in the query are kept)."""
        if self.is_local:
            return self.path(rel)
        head, sep, query = self.root.partition("?")
        return f"{head.rstrip('/')}/{rel}{sep}{query}"

    def _call(self, op: str, fn, *args, **kw):
        """A filesystem call; on object stores, transient errors are retried and counted (curation/retry.py)."""
        if self.is_local:
            return fn(*args, **kw)

        return retry.call(op, fn, *args, **kw)

    def exists(self, rel: str) -> bool:
        return self._call("head", self._rfs.get_file_info, self.path(rel)).type != pafs.FileType.NotFound

    def makedirs(self, rel: str) -> None:
        self._call("mkdir", self._rfs.create_dir, self.path(rel), recursive=True)

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of the files directly under `rel` ending with `suffix`, sorted."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        out = []
        for info in self._call("list", self._rfs.get_file_info, sel):
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix) \
                    and not info.base_name.startswith(".tmp-"):
                out.append(posixpath.join(rel, info.base_name))
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        return self._call("get", self._read, rel)

    def _read(self, rel: str) -> bytes:
        with self._rfs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic write: temporary name then rename (local), single put (object stores)."""
        parent = posixpath.dirname(rel)
        if not self.is_local:  # no folders to make on an object store: one PUT (each extra call can fail)
            self._call("put", self._put, rel, data)
            return
        if parent:
            self.makedirs(parent)
        tmp = self.path(posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(rel)}"))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(rel))
        except OSError as e:
            _discard(tmp)  # no partial file stays behind, under any name
            raise _disk_full(e, self.path(rel)) from None

    def put_file(self, local_src: str, rel: str) -> None:
        """Move a finished local file into the root atomically (rename locally, upload remotely)."""
        parent = posixpath.dirname(rel)
        if parent and self.is_local:
            self.makedirs(parent)
        if self.is_local:
            try:
                os.replace(local_src, self.path(rel))
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                self._copy_in(local_src, rel)  # the root is on another filesystem than the temporary folder
        else:
            self._call("put", self._upload, local_src, rel)
            os.remove(local_src)

    def _copy_in(self, local_src: str, rel: str) -> None:
        """Copy to a temporary name next to the target, then rename: atomic across filesystems too."""
        import shutil

        tmp = self.path(posixpath.join(posixpath.dirname(rel), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(rel)}"))
        try:
            shutil.copyfile(local_src, tmp)
            os.replace(tmp, self.path(rel))
        except OSError as e:
            _discard(tmp)
            raise _disk_full(e, self.path(rel)) from None
        os.remove(local_src)

    def _upload(self, local_src: str, rel: str) -> None:
        """Stream a local file into one object; an error on close (the upload's last call) raises."""
        import shutil

        with open(local_src, "rb") as src, self._open_output(rel) as f:
            shutil.copyfileobj(src, f, 8 << 20)

    def _put(self, rel: str, data: bytes) -> None:
        with self._open_output(rel) as f:
            f.write(data)

    def _open_output(self, rel: str) -> "object":
        """An output stream; object stores need no parent folder (no extra call), a filesystem with real
        folders (HDFS, mounted stores) gets it made on the first miss."""
        try:
            return self._rfs.open_output_stream(self.path(rel))
        except FileNotFoundError:
            self._rfs.create_dir(posixpath.dirname(self.path(rel)), recursive=True)
            return self._rfs.open_output_stream(self.path(rel))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self._call("delete", self._rfs.delete_file, self.path(rel))

    def walk_files(self, rel: str) -> Iterator[str]:
        sel = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        for info in self._call("list", self._rfs.get_file_info, sel):
            if info.type == pafs.FileType.File:
                yield posixpath.relpath(info.path, self.base)


class DiskFull(OSError):
    """No space left where the root lives: the run stops (every further write would fail too)."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path, self.detail = path, detail
        free = _free_bytes(path)
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}"
                         + (f" ({free / 1e6:.1f} MB free there)" if free is not None else "")
                         + ": nothing partial was kept; free space and run the same command again to resume")

    def __reduce__(self) -> tuple:  # Ray sends it from a worker to the driver
        return DiskFull, (self.path, self.detail)

    def __str__(self) -> str:
        return self.strerror


def _disk_full(e: OSError, path: str) -> OSError:
    """`e` as a DiskFull naming `path` when the device is full (ENOSPC, EDQUOT), else `e` itself."""
    return DiskFull(path, str(e)) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
        return st.f_bavail * st.f_frsize
    except OSError:
        return None


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _single_try(fs: pafs.FileSystem) -> pafs.FileSystem:
    """`fs` with the S3 client's own retries off, so every retry is curation/retry.py's (backoff with jitter,
    counted in the manifest); other filesystems as they are. Direct users of Storage.fs keep the client's."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    try:
        _, (kwargs,) = fs.__reduce__()
        # allow_delayed_open: a small object is one PutObject, not a multipart upload of 3 calls (each can fail)
        kwargs["allow_delayed_open"] = True
        return pafs.S3FileSystem(**kwargs, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    except (TypeError, ValueError):  # another pyarrow's constructor: keep its client retries (not counted)
        return fs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or URI. Object-store options ride in the query string,
    e.g. s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http (pyarrow's URI syntax)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Expand input globs (local paths or object-store URIs) into a sorted list of file URIs/paths."""
    import glob
    import fnmatch

    out: list[str] = []
    for pat in patterns:
        if "://" in pat:
            # Globs are matched by listing below the part before the first wildcard.
            head, sep, query = pat.partition("?")
            scheme = head.split("://", 1)[0]
            wild = any(ch in head for ch in "*?[")
            base_uri = head[:min(head.find(ch) for ch in "*[" if ch in head)].rsplit("/", 1)[0] if wild else head
            fs, base = pafs.FileSystem.from_uri(base_uri + sep + query)
            pattern = base + head[len(base_uri):]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)) \
                if wild else [fs.get_file_info(base)]
            for info in infos:
                if info.type == pafs.FileType.File and fnmatch.fnmatch(info.path, pattern):
                    out.append(f"{scheme}://{info.path}{sep}{query}")
        else:
            hits = glob.glob(os.path.expanduser(pat), recursive=True)
            out.extend(os.path.abspath(h) for h in hits if os.path.isfile(h))
    return sorted(set(out))
