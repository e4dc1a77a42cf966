"""Curate what is already downloaded: an img2dataset output folder or plain WebDataset tars as ``--input``.

Nothing is downloaded and no image byte is copied. Staging writes ``RUN/raw/sources.json``, which
maps each raw shard name to the input's files (:func:`curate.acquire.raw.raw_file` reads it, on the driver
and on every worker), and ``RUN/input/urls.parquet`` from the input's own keys, URLs and captions:

- an img2dataset folder (``output_format: webdataset``: ``NNNNN.tar`` + ``NNNNN.parquet`` +
  ``NNNNN_stats.json``): its per-shard Parquet gives key, url, caption, status and error_message;
  failed rows keep their status, so they end in decisions with their reason. The shards are used
  where they are. ``output_format: parquet`` (images in a ``jpg``/``png``/``webp`` column of the
  per-shard Parquet, no tar) is read in place too: an image's ``image_offset`` is then its row.
- plain WebDataset tars (a folder of ``.tar`` files, a glob, or a brace pattern such as
  ``shards/{00000..00009}.tar``): members ``{key}.jpg|.jpeg|.png|.webp`` + ``{key}.txt`` + optional
  ``{key}.json`` (its ``url``). One task per tar (:func:`index_tar`) streams it once and writes the
  per-shard Parquet curate needs into ``RUN/raw/``; the tar is read in place.

The input and the run directory may each be local or on object storage (fsspec URLs, through
:mod:`curate.storage`): a folder there is a prefix, listed; sources.json records full URLs (local
paths resolved), which the driver and every worker open the same way.

``input.format`` (``auto``, ``urls``, ``img2dataset``, ``webdataset``) names the kind; ``auto``
decides by what the path holds (see :func:`detect_format`).
"""

from __future__ import annotations

import glob
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import braceexpand
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curate import storage
from curate.acquire.download import is_fetchable
from curate.acquire.inputs import InputError, to_text
from curate.acquire.raw import IMAGE_EXTS, SOURCES, forget_sources, raw_sources, split_member
from curate.acquire.staging import Staged, commit_shard, shard_path
from curate.emit.parquet import write_parquet
from curate.io import write_json

if TYPE_CHECKING:
    import duckdb

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
    ]
)
"""The per-shard Parquet :func:`index_tar` writes for a plain WebDataset tar (img2dataset's columns)."""


def detect_format(path: str, declared: str = "auto") -> str:
    """``urls``, ``img2dataset`` or ``webdataset`` for ``--input path`` (``declared`` unless ``auto``).

    auto: a folder holding ``*_stats.json`` is an img2dataset output folder; a folder holding ``.tar``
    files, a ``.tar`` file, or a glob/brace pattern of them is WebDataset; anything else is a URL list.
    """
    if declared != "auto":
        return declared
    text = str(path)
    if _is_folder(text):
        listed = storage.entries(text)
        if any(p.endswith("_stats.json") for p in listed):
            return "img2dataset"
        if any(p.endswith(".tar") for p in listed):
            return "webdataset"
        return "urls"
    if text.endswith(".tar") or text.endswith(".tar}"):
        return "webdataset"
    return "urls"


def _is_folder(url: str) -> bool:
    """A local folder, or a prefix on object storage that holds objects (a pattern is never one)."""
    if storage.is_local(url):
        return Path(storage.local_path(url)).is_dir()
    return not glob.has_magic(url) and "{" not in url and storage.isdir(url)


def _absolute(url: str) -> str:
    """``url`` as sources.json records it: a resolved local path, or the URL itself."""
    return str(Path(storage.local_path(url)).resolve()) if storage.is_local(url) else url


def img2dataset_shards(folder: str) -> dict[str, dict[str, str]]:
    """Each complete shard of an img2dataset output folder (it has ``_stats.json``): its tar and Parquet, or
    (``parquet`` output format) its Parquet and the column holding the images."""
    if not storage.isdir(folder):
        raise InputError(f"{folder}: not a folder; an img2dataset input is its output folder (input.format).")
    listed = {storage.name(p): p for p in storage.entries(folder)}
    names = sorted(n[: -len("_stats.json")] for n in listed if n.endswith("_stats.json"))
    if not names:
        raise InputError(f"{folder}: no *_stats.json: not an img2dataset output folder (or no shard finished).")
    shards = {}
    for name in names:
        tar, parquet = listed.get(f"{name}.tar"), listed.get(f"{name}.parquet")
        if parquet is None:
            raise InputError(f"{folder}: shard {name} has no {name}.parquet; run img2dataset with save_metadata.")
        if tar is not None:
            shards[name] = {".tar": _absolute(tar), ".parquet": _absolute(parquet)}
            continue
        fsys, path = storage.arrow_fs(parquet)
        columns = [c for c in IMAGE_EXTS if c in pq.read_schema(path, filesystem=fsys).names]
        if not columns:
            raise InputError(
                f"{folder}: shard {name} has no {name}.tar and {name}.parquet has no image column (jpg, png, webp): "
                "img2dataset's output_format 'webdataset' or 'parquet' is read; download again with one of them."
            )
        shards[name] = {".parquet": _absolute(parquet), "image_column": columns[0]}
    return shards


def webdataset_tars(path: str) -> list[str]:
    """The tar files ``path`` names: a folder (its ``*.tar``), a file, a glob, or a brace pattern (any filesystem)."""
    text = str(path)
    if _is_folder(text):
        tars = [_absolute(p) for p in storage.entries(text) if p.endswith(".tar")]
    else:
        tars = []
        for pattern in braceexpand.braceexpand(text):
            tars += [_absolute(m) for m in _glob(pattern)] if glob.has_magic(pattern) else [_absolute(pattern)]
    if not tars:
        raise InputError(f"{text}: no .tar files; pass a folder of WebDataset tars, a glob or a brace pattern.")
    missing = _missing(tars)
    if missing:
        raise InputError(f"{missing}: no such WebDataset tar (from --input {text}).")
    return list(dict.fromkeys(tars))


def _missing(paths: list[str]) -> str | None:
    """The first of ``paths`` that is not a file; on object storage one listing per folder, not a request per file."""
    listed: dict[str, set[str]] = {}
    for path in paths:
        if storage.is_local(path):
            if not storage.isfile(path):
                return path
            continue
        folder = path.rsplit("/", 1)[0]
        if folder not in listed:
            listed[folder] = set(storage.entries(folder))
        if path not in listed[folder]:
            return path
    return None


def _glob(pattern: str) -> list[str]:
    """The files matching glob ``pattern``, sorted, as local paths or URLs like the pattern."""
    if storage.is_local(pattern):
        return sorted(glob.glob(storage.local_path(pattern)))
    fs, path = storage.fs_path(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


def index_tar(tar_path: str, out_parquet: str) -> int:
    """Stream one WebDataset tar and write its samples' key, url, caption and status to ``out_parquet``.

    A key with an image member is ``success``; a key with none (only ``.txt``/``.json``) is ``no_image``.
    A caption that is not UTF-8 is repaired; a ``.json`` that is not a JSON object gives a null URL.
    Returns the number of samples.
    """
    samples: dict[str, dict] = {}
    with fsspec.open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            sample = samples.setdefault(key, {})
            if ext in IMAGE_EXTS or ext in ("txt", "json"):
                sample.setdefault(ext, tar.extractfile(member).read() if ext in ("txt", "json") else True)
    rows = {name: [] for name in INDEX_SCHEMA.names}
    for key, sample in samples.items():
        has_image = any(ext in sample for ext in IMAGE_EXTS)
        rows["key"].append(key)
        rows["url"].append(_json_url(sample.get("json")))
        rows["caption"].append(sample["txt"].decode("utf-8", "replace") if "txt" in sample else None)
        rows["status"].append("success" if has_image else "no_image")
        rows["error_message"].append(None if has_image else "the tar has no image member for this key")
        rows["original_width"].append(None)
        rows["original_height"].append(None)
    table = pa.table(rows, schema=INDEX_SCHEMA).sort_by("key")
    write_parquet(out_parquet, table)
    return len(table)


def _json_url(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    url = value.get("url") if isinstance(value, dict) else None
    return url if isinstance(url, str) else None


def check_input(fmt: str, input_path: str) -> None:
    """Fail before Ray starts when already-downloaded input has no shards to read (names them otherwise)."""
    if fmt == "img2dataset":
        img2dataset_shards(input_path)
    elif fmt == "webdataset":
        webdataset_tars(input_path)


def stage_existing(
    fmt: str, input_path: str, raw_dir: str, run_tasks: Callable, num_cpus: float = 1.0
) -> dict[str, dict[str, str]]:
    """Write ``raw_dir/sources.json`` and return its shards (name: files), in shard order.

    ``run_tasks`` is :func:`curate.runtime.run_tasks` (indexes WebDataset tars as tasks).
    """
    storage.makedirs(raw_dir)
    run_dir = raw_dir.rstrip("/").rsplit("/", 1)[0]
    if fmt == "img2dataset":
        shards = img2dataset_shards(input_path)
    elif fmt == "webdataset":
        tars = webdataset_tars(input_path)
        digits = max(5, len(str(len(tars) - 1)))
        shards = {f"{i:0{digits}d}": {".tar": tar} for i, tar in enumerate(tars)}
        calls = [(s[".tar"], f"{raw_dir}/{name}.parquet") for name, s in shards.items()]
        before = raw_sources(run_dir).get("shards", {})
        indexed = set(storage.entries(raw_dir))
        calls = [  # a resumed run indexed these already
            (tar, out)
            for (name, files), (tar, out) in zip(shards.items(), calls, strict=True)
            if not (out in indexed and before.get(name, {}).get(".tar") == files[".tar"])
        ]
        if calls:
            run_tasks(index_tar, calls, "index tars", num_cpus)
    else:
        raise InputError(f"input.format {fmt!r}: not already-downloaded data")
    write_json(f"{raw_dir}/{SOURCES}", {"format": fmt, "input": str(input_path), "shards": shards})
    forget_sources(run_dir)
    return shards


def stage_inputs(
    fmt: str,
    raw_dir: str,
    shards: dict[str, dict[str, str]],
    extra: list[str],
    source: str,
    folder: str | None,
    run_tasks: Callable,
) -> Staged:
    """Write each raw shard's ``RUN/input/{shard}.parquet`` in a task (into ``folder``; None: only digest them),
    then refuse a key that is in two rows (:func:`check_unique_keys`)."""
    calls = [
        (fmt, name, files.get(".parquet", f"{raw_dir}/{name}.parquet"), extra, shard_path(folder, name))
        for name, files in shards.items()
    ]
    results = [result for result, _ in run_tasks(shard_input, calls, "stage input shards")]
    if folder is not None:  # a task: DuckDB's hash table of every key must not live in the driver
        run_tasks(check_unique_keys, [([out for *_, out in calls], source)], "check unique keys")
    return Staged(sum(rows for rows, _ in results), [digest for _, digest in results])


def shard_input(fmt: str, name: str, path: str, extra: list[str], out: str | None) -> tuple[int, str]:
    """Task: raw shard ``name``'s input rows (key, url, caption, extras, raw_shard, fetchable) from its Parquet at
    ``path``, written to ``out`` (None: not written); returns their number and digest."""
    fsys, in_fs = storage.arrow_fs(path)
    names = pq.read_schema(in_fs, filesystem=fsys).names
    missing = [c for c in ("key", "url", "status", *extra) if c not in names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); not an img2dataset shard.")
    has_caption = "caption" in names  # img2dataset run without caption_col saves none: null captions
    table = pq.read_table(in_fs, filesystem=fsys, columns=["key", "url", *(["caption"] if has_caption else []), *extra])
    columns = {"key": to_text(table.column("key")), "url": _text_or_null(table.column("url"))}
    captions = table.column("caption") if has_caption else pa.nulls(len(table), pa.string())
    columns["caption"] = _text_or_null(captions)
    columns |= {c: table.column(c) for c in extra}
    columns["raw_shard"] = pa.repeat(pa.scalar(name, pa.string()), len(table))
    # img2dataset kept the status of an unfetchable URL (bad_url, as for a URL list); a WebDataset
    # sample's URL is only a note (often null): its status comes from the tar alone.
    fetchable = pa.repeat(pa.scalar(True), len(table))
    columns["fetchable"] = is_fetchable(columns["url"]) if fmt == "img2dataset" else fetchable
    rows = pa.table(columns)
    return len(rows), commit_shard(rows, out)


def _text_or_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return to_text(column) if not pa.types.is_null(column.type) else column.cast(pa.string())


def check_unique_keys(paths: list[str], source: str) -> None:
    """Every key names one sample: two rows with the same key cannot be told apart in decisions. Checked by
    DuckDB over the input files (out of core), not with every key on the driver."""
    import duckdb

    if not paths:
        return
    scratch = storage.local_tmp()  # where DuckDB spills the key counts beyond its memory limit
    try:
        con = storage.duckdb_for(paths[0], duckdb.connect(config={"temp_directory": scratch}))
        _check_unique_keys(con, paths, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_unique_keys(con: duckdb.DuckDBPyConnection, paths: list[str], source: str) -> None:
    """Raise :class:`InputError` naming the first key found in two rows of ``paths`` and the shards holding it."""
    params = {"files": paths}
    found = con.sql(
        "SELECT key FROM read_parquet($files) GROUP BY key HAVING count(*) > 1 LIMIT 1", params=params
    ).fetchall()
    if not found:
        return
    key = found[0][0]
    shards = con.sql(
        "SELECT raw_shard FROM read_parquet($files) WHERE key = $key ORDER BY raw_shard",
        params=params | {"key": key},
    ).fetchall()
    raise InputError(
        f"{source}: key {key!r} is in more than one shard (raw shards {', '.join(s for (s,) in shards)}): keys "
        "must be unique across the input. Rename the members, or curate the shards in separate runs."
    )
