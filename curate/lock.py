"""One writer per run directory: ``RUN/curate.lock``.

``curate run``, ``curate decide`` and ``curate demo`` hold the lock for their whole run; a second
writer fails at once with :class:`RunLocked` (the CLI exits 2) naming the holder. Readers
(``stats``, ``report``, ``status``) never take it: every output is committed by an atomic rename,
so a reader sees the old version or the new one, never half of one.

The lock is a ``flock`` on the file, so the kernel releases it when the holder dies however it
dies (``kill -9`` included); the JSON inside (pid, host, start time, command) is only there to
name the holder. A file whose lock nobody holds was left by a dead process: it is taken over
with a message. ``flock`` works on local disks and on NFSv4.

On object storage (``s3://``) the lock is a lease (:class:`Lease`): ``RUN/curate.lock`` is created
with a conditional PUT (``If-None-Match: *``), so of two writers exactly one creates it; it holds
the same owner record plus a ``heartbeat`` time that a thread of the holder rewrites every
:data:`HEARTBEAT_S`. A lease whose heartbeat is older than :data:`LEASE_TIMEOUT_S` was left by a
writer that died (or lost the network): it is taken over with a message. Other object stores
(``gs://``, ``abfs://``, ...) are not locked yet: curate prints a warning and runs unlocked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from curate import storage
from curate.acquire.inputs import InputError

LOCK_NAME = "curate.lock"
PROBE_GRACE_S = 0.5
"""How long a writer retries a held lock before giving up: :func:`holder` holds it for microseconds."""


class RunLocked(InputError):
    """Another live process is writing the run directory."""


def RunLock(run_dir: str | Path, command: str | None = None) -> FileLock | Lease:
    """Exclusive writer lock on ``run_dir``: a ``flock`` locally, a :class:`Lease` on object storage."""
    return FileLock(run_dir, command) if storage.is_local(run_dir) else Lease(str(run_dir), command)


class FileLock:
    """Exclusive writer lock on a local ``run_dir``; use as a context manager."""

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        run_dir = storage.local_path(run_dir)
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command or " ".join(sys.argv)
        self._fd: int | None = None
        self.took_over: dict | None = None
        """The owner record of a stale lock this one replaced (a process that died holding it)."""

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLocked` naming the process that holds it."""
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:  # perhaps only a reader's probe (holder()): try again
                    time.sleep(0.05)
                    continue
                raise RunLocked(
                    f"{self.path.parent} is being written by {describe(read_owner(self.path))}. Wait for it "
                    "to finish, or stop it; readers (curate stats, report, status) work meanwhile."
                ) from None
            if _same_file(fd, self.path):  # not unlinked by a releasing holder meanwhile
                break
            os.close(fd)
        self._fd = fd
        previous = read_owner(self.path)
        if previous:
            self.took_over = previous
            print(
                f"curate: taking over the stale lock on {self.path.parent} left by {describe(previous)}, "
                "which is no longer running.",
                file=sys.stderr,
            )
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: the next writer finds no stale record
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def read_owner(path: str | Path) -> dict:
    """The owner record in a lock file; empty when there is none (or it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holder(run_dir: str | Path) -> dict | None:
    """The owner record of the process writing ``run_dir`` now, or None when no live process holds it."""
    if not storage.is_local(run_dir):
        owner = Lease(str(run_dir)).read()
        return owner if owner and not _expired(owner) else None
    path = Path(storage.local_path(run_dir)) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_owner(path) or {"pid": "?", "host": "?", "started": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(owner: dict) -> str:
    """``pid 123 on host h (started ..., command: ...)``."""
    if not owner:
        return "another process (no owner record yet)"
    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')}"
    return text + (f", command: {owner['command']})" if owner.get("command") else ")")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


LEASE_TIMEOUT_S = 300.0
"""A lease on object storage whose heartbeat is older than this (seconds; environment variable
``CURATE_LEASE_TIMEOUT_S`` overrides it) was left by a dead writer and is taken over."""

HEARTBEAT_S = 30.0
"""How often the holder of a lease rewrites its heartbeat (at most a quarter of the timeout)."""


def lease_timeout() -> float:
    """:data:`LEASE_TIMEOUT_S`, or ``CURATE_LEASE_TIMEOUT_S`` from the environment."""
    return float(os.environ.get("CURATE_LEASE_TIMEOUT_S", LEASE_TIMEOUT_S))


def _expired(owner: dict) -> bool:
    return time.time() - float(owner.get("heartbeat", 0)) > lease_timeout()


def boto_kwargs() -> dict:
    """``boto3.client("s3")`` arguments from fsspec's ``s3`` config (a recipe's ``storage_options.s3``), so the
    lease uses s3fs's endpoint and credentials; what is not set there comes from the standard environment."""
    import fsspec

    conf = fsspec.config.conf.get("s3", {})
    names = {"endpoint_url": "endpoint_url", "key": "aws_access_key_id", "secret": "aws_secret_access_key"}
    names |= {"token": "aws_session_token"}
    kwargs = dict(conf.get("client_kwargs") or {})
    kwargs |= {boto: conf[s3fs] for s3fs, boto in names.items() if conf.get(s3fs) is not None}
    return kwargs


class Lease:
    """Writer lock on a run directory on S3: a conditionally created ``RUN/curate.lock`` with a heartbeat."""

    def __init__(self, run_dir: str, command: str | None = None) -> None:
        self.run_dir = run_dir
        self.url = storage.join(run_dir, LOCK_NAME)
        self.command = command or " ".join(sys.argv)
        self.took_over: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner: dict = {}
        bucket, _, self._key = self.url.split("://", 1)[1].partition("/")
        self._bucket = bucket
        self._s3 = self.url.startswith("s3://")

    def _client(self):
        import boto3

        return boto3.client("s3", **boto_kwargs())

    def read(self) -> dict:
        """The lease's owner record; empty when there is none."""
        try:
            owner = storage.read_json(self.url)
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> None:
        """Create the lease, or take over a stale one; raise :class:`RunLocked` when a live writer holds it."""
        if not self._s3:
            print(
                f"curate: {self.run_dir} is not locked: only s3:// run directories have a lease yet.", file=sys.stderr
            )
            return
        for _ in range(3):
            if self._create():
                break
            previous = self.read()
            if previous and not _expired(previous):
                raise RunLocked(
                    f"{self.run_dir} is being written by {describe(previous)}. Wait for it to finish, or stop it "
                    f"(a lease whose heartbeat is older than {lease_timeout():.0f} s is taken over); "
                    "readers (curate stats, report, status) work meanwhile."
                )
            self.took_over = previous or None
            print(
                f"curate: taking over the stale lease on {self.run_dir} left by {describe(previous)}, "
                f"whose heartbeat is older than {lease_timeout():.0f} s.",
                file=sys.stderr,
            )
            self._client().delete_object(Bucket=self._bucket, Key=self._key)
        else:
            raise RunLocked(f"{self.run_dir}: could not take the lease (another writer raced for it); try again.")
        self._thread = threading.Thread(target=self._beat, name="curate-lease", daemon=True)
        self._thread.start()

    def _record(self) -> bytes:
        self._owner.update(heartbeat=time.time())
        return json.dumps(self._owner).encode()

    def _create(self) -> bool:
        from botocore.exceptions import ClientError

        self._owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        try:
            self._client().put_object(Bucket=self._bucket, Key=self._key, Body=self._record(), IfNoneMatch="*")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def _beat(self) -> None:
        client = self._client()
        while not self._stop.wait(min(HEARTBEAT_S, lease_timeout() / 4)):
            try:
                client.put_object(Bucket=self._bucket, Key=self._key, Body=self._record())
            except Exception as err:
                print(f"curate: lease heartbeat on {self.url} failed: {err}", file=sys.stderr)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._client().delete_object(Bucket=self._bucket, Key=self._key)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
