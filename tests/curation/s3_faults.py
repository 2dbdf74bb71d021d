"""A fault-injecting TCP proxy in front of a real S3 API server (moto), on 127.0.0.1.

Each request (one per connection: the proxy makes it `Connection: close`) is classified by call type
(get, put, head, list, delete, post) and, with seeded per-type rates, answered with a 503 SlowDown, delayed,
or dropped (the connection closed without a reply); the rest are passed through byte for byte.
Bounded: it serves until stop(), and each connection ends when either side closes it.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n")
SLOWDOWN_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass
class Faults:
    """Fault rates per call type (a missing type: no faults)."""

    error: dict = field(default_factory=dict)  # type -> share of calls answered 503 SlowDown
    drop: dict = field(default_factory=dict)  # type -> share of calls whose connection is closed unanswered
    slow: dict = field(default_factory=dict)  # type -> share of calls delayed by `delay_s`
    delay_s: float = 0.3  # how slow a slow call is
    seed: int = 0  # RNG seed: the same faults for the same call sequence


def call_type(head: bytes) -> str:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    if method == "GET" and ("list-type" in query or "delimiter" in query or "prefix=" in query
                            or path.strip("/").count("/") == 0):
        return "list"
    return {"GET": "get", "PUT": "put", "HEAD": "head", "DELETE": "delete", "POST": "post"}.get(method, method.lower())


class FaultProxy:
    """Proxy 127.0.0.1:<port> -> `upstream` (host:port) with `faults`; counts what it did per call type."""

    def __init__(self, upstream: str, faults: Faults) -> None:
        host, port = upstream.split(":")
        self.upstream = (host, int(port))
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.seen: Counter = Counter()  # (type, "ok"|"error"|"drop"|"slow") -> calls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _decide(self, kind: str) -> str:
        f = self.faults
        with self.lock:
            x = self.rng.random()
            for what, rates in (("error", f.error), ("drop", f.drop), ("slow", f.slow)):
                r = rates.get(kind, 0.0)
                if x < r:
                    self.seen[(kind, what)] += 1
                    return what
                x -= r
            self.seen[(kind, "ok")] += 1
            return "ok"

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            what = self._decide(call_type(head))
            if what == "drop":
                return
            if what == "error":
                conn.sendall(SLOWDOWN % len(SLOWDOWN_BODY) + SLOWDOWN_BODY)
                return
            if what == "slow":
                time.sleep(self.faults.delay_s)
            self._forward(conn, _close_after(head))
        except OSError:
            pass
        finally:
            conn.close()

    def _forward(self, conn: socket.socket, first: bytes) -> None:
        up = socket.create_connection(self.upstream, timeout=30)
        try:
            up.sendall(first)
            t = threading.Thread(target=_pipe, args=(conn, up), daemon=True)
            t.start()
            _pipe(up, conn)
            t.join(timeout=30)
        finally:
            up.close()


def _close_after(data: bytes) -> bytes:
    """The request with `Connection: close` (the next request then comes on a new connection: a new decision)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"]) + sep + body


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
