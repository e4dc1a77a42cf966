"""Writers' common ground: fsspec paths and atomic commits (write a temp name, rename when done)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import fsspec


class AtomicFile:
    """A file written under a temporary name and renamed to ``path`` only on success."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fs, self._final = fsspec.core.url_to_fs(path)
        self._tmp = f"{self._final}.tmp-{uuid.uuid4().hex[:8]}"
        self._fh: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.fs.makedirs(os.path.dirname(self._final) or ".", exist_ok=True)
        self._fh = self.fs.open(self._tmp, "wb")
        return self._fh

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._fh is not None
        self._fh.close()
        if exc_type is None:
            self.fs.mv(self._tmp, self._final)
        else:
            self.fs.rm(self._tmp)


def cache_dir(kind: str) -> Path:
    """Where curate keeps what it builds or fetches once: ``$CURATE_CACHE/KIND`` (default ``~/.cache/curate``)."""
    return Path(os.environ.get("CURATE_CACHE", "~/.cache/curate")).expanduser() / kind


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with AtomicFile(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def replace_dir(new: Path, final: Path) -> None:
    """Replace local directory ``final`` with ``new``; the old contents go only once ``new`` is in place.

    Where the OS can swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``), a
    reader never finds ``final`` missing or half-replaced; elsewhere there is a moment between two
    renames when it is missing.
    """
    new.mkdir(parents=True, exist_ok=True)
    if final.exists() and _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old contents
        return
    old = final.with_name(f".{final.name}-old-{uuid.uuid4().hex[:6]}")
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b`` (Linux 3.15+, glibc 2.28+); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    args = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if renameat2(*args) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: this kernel or filesystem cannot swap
        return False
    raise OSError(errno, os.strerror(errno), str(b))
