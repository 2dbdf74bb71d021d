"""One owner per dataset root and stage: a lease file, `<root>/leases/<stage>.json`.

Two runs on one root at the same time (a re-submitted `ray job submit`, two people) would otherwise
both split and score everything. A run takes the lease of each of its stages before any work and keeps
it alive with a heartbeat; a second run refuses with a message naming the holder and the age of its
heartbeat, or waits (`--wait`). A lease whose heartbeat stopped (the holder was killed) expires after
`ttl_s` and the next run takes it over; the takeover is recorded in that run's manifest.

The lease is only as good as its compare-and-swap:
- local roots: creation is a hard link of a finished temporary file (atomic, fails if the name exists);
  replacing a lease (heartbeat, takeover) happens under a guard file made the same way.
- object stores: S3 conditional writes (`If-None-Match: *` to create, `If-Match: <etag>` to replace),
  through botocore. Other object stores (and s3:// without botocore) run without a lease, with a warning.
Timestamps are the writer's wall clock: hosts whose clocks disagree by more than `ttl_s` see a live lease
as stale (keep clocks in sync, or raise `ttl_s`).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, unquote

from curation.storage import Storage
from curation.uris import redact

TTL_S = 60.0  # a lease whose heartbeat is older than this is stale (its holder is presumed dead)
HEARTBEAT_S = 10.0  # how often a holder renews its lease (well under TTL_S: a busy driver may stall)
WAIT_POLL_S = 2.0  # --wait: how often a waiting run looks at the lease again
GUARD_STALE_S = 30.0  # a local replace guard older than this was left by a killed process: removed


class LeaseHeld(ValueError):
    """Another live run holds the lease (a ValueError: the CLI prints it as one line, exit 2)."""


class NoLease(RuntimeError):
    """This root cannot hold a lease (the run goes on without one, with a warning)."""


@dataclass
class Holder:
    """What a lease file says about its holder."""

    owner: str  # run id of the holder
    host: str  # hostname of the holder's driver
    pid: int  # process id of the holder's driver on that host
    stage: str  # the stage it holds
    acquired: float  # unix time the lease was taken
    heartbeat: float  # unix time of the last renewal
    ttl_s: float  # the holder's own time-to-live: stale once heartbeat + ttl_s has passed

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self.heartbeat

    def stale(self, now: float | None = None) -> bool:
        """No heartbeat for ttl_s, or the holder was on this host and its process is gone (a run killed with
        kill -9 and started again at once need not wait out the ttl)."""
        return self.age(now) > self.ttl_s or (self.host == socket.gethostname() and not _alive(self.pid))

    def describe(self) -> str:
        return (f"run {self.owner} (host {self.host}, pid {self.pid}); its heartbeat is {self.age():.1f} s old "
                f"(stale after {self.ttl_s:.0f} s)")


def _alive(pid: int) -> bool:
    """Whether a process of this host has this id (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


# ------------------------------------------------------------------------------------------ backends
class _LocalBackend:
    """Compare-and-swap on a local (or shared POSIX) folder."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _path(self, rel: str) -> str:
        return self.storage.local_path(rel)

    def read(self, rel: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(rel), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha1(data).hexdigest()

    def create(self, rel: str, data: bytes) -> str | None:
        """Write `rel` only if it does not exist; the token of the new content, else None."""
        path = self._path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # atomic, and readers never see a half-written lease
        except FileExistsError:
            return None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return hashlib.sha1(data).hexdigest()

    def replace(self, rel: str, data: bytes, token: str) -> str | None:
        """Replace `rel` only if its content still has `token`; the new token, else None."""
        guard = self._path(rel) + ".guard"
        if not self._take_guard(guard):
            return None
        try:
            cur = self.read(rel)
            if cur is None or cur[1] != token:
                return None
            tmp = f"{self._path(rel)}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(rel))
            return hashlib.sha1(data).hexdigest()
        finally:
            os.remove(guard)

    def _take_guard(self, guard: str) -> bool:
        for _ in range(50):  # bounded: a guard is held for a read and a rename
            try:
                os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                try:
                    if time.time() - os.path.getmtime(guard) > GUARD_STALE_S:
                        os.remove(guard)  # left by a process killed while replacing
                        continue
                except FileNotFoundError:
                    continue
                time.sleep(0.02)
        return False

    def delete(self, rel: str, token: str) -> None:
        cur = self.read(rel)
        if cur is not None and cur[1] == token:
            os.remove(self._path(rel))


class _S3Backend:
    """Compare-and-swap with S3 conditional writes (If-None-Match / If-Match on PutObject)."""

    def __init__(self, storage: Storage) -> None:
        try:
            import botocore.session
            from botocore.config import Config
        except ImportError as e:  # not a dependency of local-only installs
            raise NoLease("the lease on an s3:// root needs botocore (pip install boto3)") from e
        u = urlsplit(storage.root)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        endpoint = q.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
        kw = {}
        if u.username:
            kw = {"aws_access_key_id": unquote(u.username), "aws_secret_access_key": unquote(u.password or "")}
        self.client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint, region_name=q.get("region", "us-east-1"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}), **kw)
        self.storage = storage

    def _key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.storage.path(rel).partition("/")
        return bucket, key

    def read(self, rel: str) -> tuple[bytes, str] | None:
        b, k = self._key(rel)
        try:
            r = self.client.get_object(Bucket=b, Key=k)
        except self.client.exceptions.NoSuchKey:
            return None
        return r["Body"].read(), r["ETag"]

    def _put(self, rel: str, data: bytes, **cond: str) -> str | None:
        from botocore.exceptions import ClientError

        b, k = self._key(rel)
        try:
            return self.client.put_object(Bucket=b, Key=k, Body=data, **cond)["ETag"]
        except ClientError as e:  # 412: someone else wrote first; 409: a concurrent conditional write
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") \
                    or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return None
            raise

    def create(self, rel: str, data: bytes) -> str | None:
        return self._put(rel, data, IfNoneMatch="*")

    def replace(self, rel: str, data: bytes, token: str) -> str | None:
        return self._put(rel, data, IfMatch=token)

    def delete(self, rel: str, token: str) -> None:
        cur = self.read(rel)
        if cur is not None and cur[1] == token:
            b, k = self._key(rel)
            self.client.delete_object(Bucket=b, Key=k)


def backend(storage: Storage) -> "_LocalBackend | _S3Backend":
    if storage.is_local:
        return _LocalBackend(storage)
    if storage.root.startswith("s3://"):
        return _S3Backend(storage)
    raise NoLease("only local folders and s3:// roots have the atomic conditional writes a lease needs")


# --------------------------------------------------------------------------------------------- lease
@dataclass
class Lease:
    """The lease of one stage of one root, held by this process while it is acquired."""

    storage: Storage
    stage: str
    owner: str  # this run's id
    ttl_s: float = TTL_S
    heartbeat_s: float = HEARTBEAT_S
    took_over: dict | None = None  # the stale holder this lease replaced (for the manifest)
    lost: str | None = None  # set when a renewal found the lease taken by someone else
    _token: str | None = None
    _acquired: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def rel(self) -> str:
        return f"leases/{self.stage}.json"

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "stage": self.stage, "acquired": self._acquired or now, "heartbeat": now,
                           "ttl_s": self.ttl_s}).encode()

    def try_acquire(self, be) -> Holder | None:
        """Take the lease if free or stale; None on success, else the live holder."""
        self._acquired = time.time()
        for _ in range(5):  # bounded: each loop either wins, sees a live holder, or lost a race
            tok = be.create(self.rel, self._record())
            if tok is not None:
                self._token = tok
                return None
            cur = be.read(self.rel)
            if cur is None:
                continue  # released between our create and our read
            holder = parse(cur[0], self.rel)
            if not holder.stale():
                return holder
            tok = be.replace(self.rel, self._record(), cur[1])
            if tok is not None:
                self._token = tok
                self.took_over = {"stage": self.stage, "owner": holder.owner, "host": holder.host,
                                  "pid": holder.pid, "heartbeat_age_s": round(holder.age(), 1)}
                return None
        cur = be.read(self.rel)
        return parse(cur[0], self.rel) if cur else Holder("unknown (lease contended)", "?", 0, self.stage, 0, 0, 0)

    def start_heartbeat(self, be) -> None:
        self._thread = threading.Thread(target=self._beat, args=(be,), daemon=True, name=f"lease-{self.stage}")
        self._thread.start()

    def _beat(self, be) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                tok = be.replace(self.rel, self._record(), self._token)
            except Exception as e:  # an object-store hiccup: try again at the next beat (ttl >> beat)
                print(f"lease {self.rel}: renewal failed ({type(e).__name__}: {e}); retrying", file=sys.stderr)
                continue
            if tok is None:
                cur = be.read(self.rel)
                self.lost = f"taken by {parse(cur[0], self.rel).describe()}" if cur else "deleted"
                print(f"warning: lease {self.rel} lost: {self.lost}", file=sys.stderr)
                return
            self._token = tok

    def release(self, be) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._token is not None and self.lost is None:
            be.delete(self.rel, self._token)
        self._token = None


def parse(data: bytes, rel: str) -> Holder:
    """The holder a lease file names; an unreadable lease (torn by a broken disk) counts as stale."""
    try:
        d = json.loads(data)
        return Holder(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d["stage"]), float(d["acquired"]),
                      float(d["heartbeat"]), float(d["ttl_s"]))
    except (ValueError, KeyError, TypeError):
        return Holder("unknown (unreadable lease)", "?", 0, rel, 0.0, 0.0, 0.0)


@dataclass
class Leases:
    """The leases of all stages of one run: taken together before any work, released together at the end."""

    storage: Storage
    owner: str  # this run's id
    held: list[Lease] = field(default_factory=list)
    history: list[Lease] = field(default_factory=list)  # every lease this run held (the manifest's record)
    _be: object = None

    def acquire(self, stages: list[str], wait: bool = False, ttl_s: float = TTL_S,
                heartbeat_s: float = HEARTBEAT_S, wait_timeout_s: float | None = None) -> None:
        """Take every stage's lease, or raise LeaseHeld naming the holder (`wait`: until free or stale)."""
        try:
            self._be = self._be or backend(self.storage)
        except NoLease as e:  # the run still runs, as before leases existed; say what is not guarded
            print(f"warning: no lease on {redact(self.storage.root)} ({e}): a second run at the same time "
                  "would not be noticed", file=sys.stderr, flush=True)
            return
        t0, said = time.time(), False
        for stage in sorted(set(stages)):  # one global order: two waiting runs never hold what the other waits for
            lease = Lease(self.storage, stage, self.owner, ttl_s, heartbeat_s)
            while (holder := lease.try_acquire(self._be)) is not None:
                msg = (f"stage {stage!r} of root {redact(self.storage.root)} is held by {holder.describe()}: "
                       f"another run is working on it")
                if not wait or (wait_timeout_s is not None and time.time() - t0 > wait_timeout_s):
                    self.release()
                    raise LeaseHeld(msg + ("" if wait else "; add --wait to wait for it, or let it finish "
                                           f"(a dead holder's lease is taken over after {holder.ttl_s:.0f} s)"))
                if not said:
                    print(f"waiting: {msg}", file=sys.stderr, flush=True)
                    said = True
                time.sleep(min(WAIT_POLL_S, heartbeat_s))
            lease.start_heartbeat(self._be)
            self.held.append(lease)
            self.history.append(lease)

    def release(self) -> None:
        for lease in reversed(self.held):
            try:
                lease.release(self._be)
            except Exception as e:  # the lease then expires by itself after ttl_s
                print(f"warning: lease {lease.rel} not released ({type(e).__name__}: {e})", file=sys.stderr)
        self.held = []

    def record(self) -> dict:
        """For the manifest: stages held, stale leases taken over, leases lost to another run."""
        return {"stages": [lease.stage for lease in self.history],
                "took_over": [lease.took_over for lease in self.history if lease.took_over],
                "lost": {lease.stage: lease.lost for lease in self.history if lease.lost}}
