"""Writers' common ground: fsspec paths and atomic commits (write a temp name, rename when done)."""

from __future__ import annotations

import json
import os
import shutil
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
    """Replace local directory ``final`` with ``new``; the old contents go only once ``new`` is in place."""
    new.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}-old-{uuid.uuid4().hex[:6]}")
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def parquet_files(folder: str | Path) -> list[str]:
    """The Parquet files in ``folder``, sorted: a list for DuckDB's ``read_parquet``, so no character
    of the folder's path (``*``, ``[``, ``'``) is read as a glob or as SQL."""
    return [str(p) for p in sorted(Path(folder).glob("*.parquet"))]
