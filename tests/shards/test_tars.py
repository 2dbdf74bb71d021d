"""The loader's tar reader yields exactly what webdataset's does, on whole, cut and unusual tars."""
from __future__ import annotations

import gzip
import io
import random
import tarfile

import pytest
from webdataset.tariterators import tar_file_expander

from shards.tars import tar_members


class _Stream(io.BytesIO):
    def __init__(self, data: bytes, chunk: int | None = None) -> None:
        super().__init__(data)
        self.chunk = chunk  # return at most this many bytes per read, like a network stream

    def read(self, n: int | None = -1) -> bytes:
        return super().read(n if self.chunk is None or n is None or n < 0 else min(n, self.chunk))

    def __str__(self) -> str:
        return "<stream>"


def _tar(fmt: int, members: list[tuple[str, bytes | None]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def _run(reader, data: bytes, chunk: int | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []

    def handler(e: Exception) -> bool:
        errors.append((type(e).__name__, str(e.args[0]) if e.args else ""))
        return False

    return [dict(x) for x in reader(_Stream(data, chunk), handler)], errors


def _ours(stream, handler):
    return tar_members(stream, "u", handler)


def _theirs(stream, handler):
    return tar_file_expander([{"url": "u", "stream": stream}], handler=handler)


rng = random.Random(0)
MEMBERS = [("a.json", b'{"x": 1}'), ("a.mp4", bytes(rng.randrange(256) for _ in range(1500))), ("a.txt", b"cap"),
           ("dir", None), ("__meta__", b"m"), ("b.json", b"{}"), ("b.mp4", b"x" * 512), ("sub/c.png", b"p" * 700)]
TARS = {"gnu": _tar(tarfile.GNU_FORMAT, MEMBERS), "ustar": _tar(tarfile.USTAR_FORMAT, MEMBERS),
        # pax and GNU long-name headers go to tarfile from that header on
        "pax-long": _tar(tarfile.PAX_FORMAT, MEMBERS + [("L" * 150 + ".mp4", b"long"), ("ü.txt", b"u")]),
        "gnu-long": _tar(tarfile.GNU_FORMAT, MEMBERS + [("L" * 150 + ".mp4", b"long"), ("z.txt", b"z")]),
        "gzip": _tar(tarfile.GNU_FORMAT, MEMBERS, gz=True), "empty": b"", "zeros": bytes(4096)}


@pytest.mark.parametrize("name", sorted(TARS))
def test_same_members_and_errors_as_webdataset_whole_and_cut(name):
    data = TARS[name]
    for cut in sorted({*range(0, len(data), 97), *range(0, len(data), 512), *range(1, len(data), 512), len(data)}):
        assert _run(_ours, data[:cut]) == _run(_theirs, data[:cut]), f"{name} cut at {cut}"
    whole, errors = _run(_ours, data, chunk=300)  # short reads are read on, not taken for the end
    assert (whole, errors) == _run(_theirs, data)
    if name in ("gnu", "ustar"):
        assert [m["fname"] for m in whole[:-1]] == ["a.json", "a.mp4", "a.txt", "b.json", "b.mp4", "sub/c.png"]
        assert whole[1]["data"] == MEMBERS[1][1] and errors == []


def test_same_outcome_as_webdataset_on_damaged_bytes():
    data = TARS["gnu"]
    for _ in range(300):
        broken = bytearray(data)
        broken[rng.randrange(len(data))] = rng.randrange(256)
        assert _run(_ours, bytes(broken)) == _run(_theirs, bytes(broken))
