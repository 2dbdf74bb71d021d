"""`inspect --serve`: listens on loopback only, serves files inside the root, and refuses every way out of it
(raw HTTP requests: no client normalises the paths before the server sees them)."""
from __future__ import annotations

import http.client
import os
import socket
import threading

import pytest

from vidcurate import inspect as insp
from test_inspect_rules import scores_table, write_root

SECRET = b"outside the root: never served"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    root = str(base / "root")
    t, schema = scores_table(12, seed=5)
    write_root(root, t, schema, parts=1)
    clip = t.column("path")[0].as_py()
    os.makedirs(os.path.dirname(os.path.join(root, clip)), exist_ok=True)
    with open(os.path.join(root, clip), "wb") as f:
        f.write(b"clip bytes " * 20)
    (base / "outside.txt").write_bytes(SECRET)
    os.makedirs(base / "elsewhere")
    (base / "elsewhere" / "secret.txt").write_bytes(SECRET)
    os.symlink(base / "elsewhere", os.path.join(root, "link_out"))  # a folder symlink out of the root
    os.symlink(base / "outside.txt", os.path.join(root, "clips", "link_file.mp4"))  # a file symlink out
    srv = insp.make_server(root, 0)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv, clip
    srv.shutdown()
    srv.server_close()


def get(srv, path: str) -> tuple[int, bytes]:
    """One GET with `path` sent byte for byte."""
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    try:
        c.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", "127.0.0.1")
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_serves_a_clip_inside_the_root(server):
    srv, clip = server
    status, body = get(srv, f"/root/{clip}")
    assert status == 200 and body == b"clip bytes " * 20


@pytest.mark.parametrize("path", [
    "/root/../outside.txt",  # plain ../
    "/root/clips/../../outside.txt",  # ../ after a real folder
    "/root/%2e%2e/outside.txt",  # encoded dots
    "/root/%2E%2E%2Foutside.txt",  # encoded dots and slash
    "/root/..%2f..%2f..%2fetc/passwd",  # encoded slashes only
    "/root//etc/passwd",  # absolute path after the prefix
    "/root/%2Fetc%2Fpasswd",  # encoded absolute path
    "/root/link_out/secret.txt",  # a folder symlink out of the root
    "/root/clips/link_file.mp4",  # a file symlink out of the root
    "/root/clips%00/../../outside.txt",  # NUL byte
])
def test_traversal_refused(server, path):
    srv, _ = server
    status, body = get(srv, path)
    assert status == 404 and SECRET not in body and b"root:" not in body, (path, status, body[:80])


def test_listens_on_loopback_only(server):
    srv, _ = server
    assert srv.server_address[0] == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # this host's outward address (no packet sent)
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            ip = None
    if not ip or ip.startswith("127."):
        pytest.skip("this host has no non-loopback IPv4 address to try the port on")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, srv.server_address[1]), timeout=5).close()
