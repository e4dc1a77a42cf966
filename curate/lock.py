"""One writer per run directory: ``RUN/curate.lock``.

``curate run``, ``curate decide`` and ``curate demo`` hold the lock for their whole run; a second
writer fails at once with :class:`RunLocked` (the CLI exits 2) naming the holder. Readers
(``stats``, ``report``, ``status``) never take it: every output is committed by an atomic rename,
so a reader sees the old version or the new one, never half of one.

The lock is a ``flock`` on the file, so the kernel releases it when the holder dies however it
dies (``kill -9`` included); the JSON inside (pid, host, start time, command) is only there to
name the holder. A file whose lock nobody holds was left by a dead process: it is taken over
with a message. ``flock`` works on local disks and on NFSv4; a run directory on object storage
needs a lease instead (not built yet).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from curate.urls import InputError

LOCK_NAME = "curate.lock"
PROBE_GRACE_S = 0.5
"""How long a writer retries a held lock before giving up: :func:`holder` holds it for microseconds."""


class RunLocked(InputError):
    """Another live process is writing the run directory."""


class RunLock:
    """Exclusive writer lock on ``run_dir``; use as a context manager."""

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
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

    def __enter__(self) -> RunLock:
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
    path = Path(run_dir) / LOCK_NAME
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
