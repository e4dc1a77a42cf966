"""Run directories and inputs on any filesystem: local paths and fsspec URLs (``s3://``, ``gs://``, ...).

Every module that reads or writes a run directory goes through here, with the run directory as a
string (``Path`` would fold ``s3://`` into ``s3:/``). Credentials and endpoints come from the
standard environment and config files of each filesystem (for S3: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``~/.aws``), so the
driver and every Ray worker open the same run the same way. A recipe's ``storage_options``
(:func:`configure`) go into fsspec's config, and :func:`worker_env` hands fsspec's config to Ray
workers as fsspec's own environment variables (``FSSPEC_S3='{"endpoint_url": ...}'``).

Commits without rename (object storage has none):

* one file: written whole by one PUT (:class:`curate.io.AtomicFile` writes a temporary name and
  moves it, which is a server-side copy), so a reader sees the old object or the new one;
* a raw shard: ``NAME.tar`` and ``NAME.parquet`` are uploaded first and ``NAME_stats.json`` last;
  the stats file is the completion marker acquire trusts (a shard without it is downloaded again);
* annotate's ``samples/{shard}.parquet`` and ``embeddings/{shard}.parquet``: one file each, as above, with no
  folder marker (a folder's stale ``_COMMITTED`` is removed first, see :mod:`curate.annotated`);
* a folder (``shards/``, ``metadata/``, ``llava/``, ``report/``):
  :func:`commit_dir` writes the new version under ``RUN/.tmp/...``, copies its files into the
  folder, then writes ``FOLDER/_COMMITTED`` (a JSON list of the version's files, one PUT), then
  deletes the files no longer listed. Readers list a folder with :func:`files`, which returns
  exactly what ``_COMMITTED`` names, so they never see a half-copied version of the Parquet
  folders (whose file names are new each time). Files with fixed names (``shards/00000.tar``,
  ``sizes.json``) are each replaced whole, but a reader listing during the copy may pair a new
  tar with the old ``sizes.json``: on object storage, read ``shards/`` when no writer holds
  the run (``curate status``). Locally, folders are swapped atomically (:func:`curate.io.replace_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow.fs as pafs

if TYPE_CHECKING:
    import duckdb

COMMITTED = "_COMMITTED"
"""Marker in a folder committed on object storage: the JSON list of the current version's files."""


def configure(options: dict[str, dict[str, Any]]) -> None:
    """Make ``options`` (``{protocol: {option: value}}``, e.g. ``{"s3": {"endpoint_url": ...}}``) the defaults
    of every filesystem this process opens (fsspec's config, read by ``fsspec.filesystem`` and ``url_to_fs``)."""
    for protocol, values in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(values)


def worker_env() -> dict[str, str]:
    """fsspec's config of this process as environment variables (``FSSPEC_<PROTOCOL>``, a JSON object) for Ray
    workers, which read them when they import fsspec: they open filesystems as the driver does."""
    return {
        f"FSSPEC_{protocol.upper()}": json.dumps(values) for protocol, values in fsspec.config.conf.items() if values
    }


def is_local(url: str | Path) -> bool:
    """True for a local path (or ``file://`` URL)."""
    text = str(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | Path) -> str:
    """A local path without a ``file://`` prefix."""
    text = str(url)
    return text[len("file://") :] if text.startswith("file://") else text


def fs_path(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path inside it.

    Listings cached by fsspec are dropped for the path: other processes (Ray workers, another
    command) write the run too, and a stale listing would hide their files.
    """
    fs, path = fsspec.core.url_to_fs(str(url))
    if not is_local(url):
        fs.invalidate_cache(path)
    return fs, path


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a path or a URL."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts if p)])


def name(url: str | Path) -> str:
    """The last part of a path or URL."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def exists(url: str | Path) -> bool:
    fs, path = fs_path(url)
    return fs.exists(path)


def isfile(url: str | Path) -> bool:
    fs, path = fs_path(url)
    return fs.isfile(path)


def isdir(url: str | Path) -> bool:
    fs, path = fs_path(url)
    return fs.isdir(path)


def makedirs(url: str | Path) -> None:
    """Create a folder (a no-op on object storage, where folders are prefixes)."""
    if is_local(url):
        Path(local_path(url)).mkdir(parents=True, exist_ok=True)


def read_text(url: str | Path) -> str:
    with fsspec.open(str(url), "rt", encoding="utf-8") as f:
        return f.read()


def read_json(url: str | Path) -> Any:
    return json.loads(read_text(url))


def entries(folder: str | Path) -> list[str]:
    """The URLs of what ``folder`` holds directly (files and sub-folders), sorted; empty when missing."""
    fs, path = fs_path(folder)
    try:
        found = fs.ls(path, detail=False, refresh=True) if not is_local(folder) else fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(join(folder, name(p)) for p in found if p.rstrip("/") != path.rstrip("/"))


def files(folder: str | Path, suffix: str = ".parquet") -> list[str]:
    """The files of ``folder`` ending in ``suffix``, sorted: those its ``_COMMITTED`` marker lists when it has one.

    A list, not a glob, so no character of the path is read as a glob or SQL.
    """
    if is_local(folder):
        return [str(p) for p in sorted(Path(local_path(folder)).glob(f"*{suffix}"))]
    marker = join(folder, COMMITTED)
    if isfile(marker):
        return [join(folder, n) for n in read_json(marker) if n.endswith(suffix)]
    return [p for p in entries(folder) if p.endswith(suffix)]


def rm(url: str | Path) -> None:
    """Remove a file or a folder with everything in it; nothing when it is missing."""
    if is_local(url):
        path = Path(local_path(url))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, path = fs_path(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def upload(local: str | Path, url: str) -> None:
    """Copy local file ``local`` to ``url`` (one PUT)."""
    fs, path = fs_path(url)
    if is_local(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fs.put_file(str(local), path)


def upload_dir(local: str | Path, url: str) -> None:
    """Copy every file under local folder ``local`` to the same relative path under ``url``."""
    root = Path(local)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        upload(path, join(url, *path.relative_to(root).parts))


def commit_dir(new: str, final: str) -> None:
    """Replace folder ``final`` with folder ``new`` (see the module docstring); ``new`` is gone after."""
    if is_local(final):
        from curate.io import replace_dir

        replace_dir(Path(local_path(new)), Path(local_path(final)))
        return
    fs, src = fs_path(new)
    _, dst = fs_path(final)
    names = sorted(p[len(src.rstrip("/")) + 1 :] for p in fs.find(src))
    for rel in names:
        fs.copy(f"{src.rstrip('/')}/{rel}", f"{dst.rstrip('/')}/{rel}")
    fs.pipe_file(f"{dst.rstrip('/')}/{COMMITTED}", json.dumps(names).encode())
    listed = set(names) | {COMMITTED}
    stale = [p for p in fs.find(dst) if p[len(dst.rstrip("/")) + 1 :] not in listed]
    if stale:
        fs.rm(stale)
    rm(new)
    fs.invalidate_cache()


def arrow_fs(url: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for ``url`` and the path inside it (fsspec's, so it reads the same settings)."""
    if is_local(url):
        return pafs.LocalFileSystem(), local_path(url)
    fs, path = fs_path(url)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def arrow_paths(urls: list[str]) -> tuple[pafs.FileSystem | None, list[str]]:
    """A pyarrow filesystem and in-filesystem paths for ``urls`` (all on one filesystem)."""
    if not urls or is_local(urls[0]):
        return None, [local_path(u) for u in urls]
    fsys, _ = arrow_fs(urls[0])
    return fsys, [fs_path(u)[1] for u in urls]


def duckdb_for(url: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads files under ``url`` (the fsspec filesystem registered when remote)."""
    import duckdb

    con = con or duckdb.connect()
    if not is_local(url):
        fs, _ = fs_path(url)
        con.register_filesystem(fs)
    return con


def local_tmp() -> str:
    """A fresh local scratch folder (for building what is then uploaded)."""
    import tempfile

    return tempfile.mkdtemp(prefix="curate-", dir=os.environ.get("CURATE_TMPDIR"))
