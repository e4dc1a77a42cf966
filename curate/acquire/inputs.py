"""The URL list a run starts from: read img2dataset's list formats from any fsspec filesystem, name the columns,
assign keys."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

try:
    from zstandard import ZstdError
except ImportError:  # without zstandard a .zst list cannot be opened at all (fsspec says so)
    ZstdError = OSError

from curate.acquire.download import BLOCKED_COLUMN, ShardLayout, is_fetchable
from curate.decide.urls import blocked_mask
from curate.errors import UserError


class InputConfig(BaseModel):
    """Which columns of the URL list hold what (img2dataset's names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url_col: str = Field("url", description="Column holding the image URL.")
    caption_col: str | None = Field(
        "caption", description="Column holding the alt text / caption; null for a URL-only list (empty captions)."
    )
    save_additional_columns: list[str] = Field(
        default_factory=list, description="Input columns carried through to samples and metadata."
    )
    format: Literal["auto", "urls", "img2dataset", "webdataset"] = Field(
        "auto",
        description="What --input is: a URL list ('urls'), an img2dataset output folder ('img2dataset', "
        "output_format webdataset) or WebDataset tars ('webdataset': a folder, glob or brace pattern). "
        "auto: a folder with *_stats.json is img2dataset, .tar files are webdataset, else a URL list. "
        "Already-downloaded input is curated in place; nothing is downloaded.",
    )
    driver_max_bytes: int = Field(
        64 * 2**20,
        ge=0,
        description="URL lists whose files total more bytes than this (as stored, compressed or not) are read "
        "by Ray tasks, one per list file, never collected on the driver; smaller ones are read on the driver, "
        "so their errors come before Ray starts. Both give the same input/ files.",
    )


class InputError(UserError):
    """The URL list cannot be used; the message says why and what to do."""


FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".txt": "txt",
}
"""URL list formats by extension (img2dataset's: txt, csv, tsv, json, jsonl, parquet)."""

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}
"""Compressed lists (``urls.csv.gz``), decompressed while read through fsspec."""

HELP = "use .parquet, .csv, .tsv, .json, .jsonl or .txt, optionally compressed .gz, .zst or .bz2"

_READ_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    OSError,
    EOFError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    ZstdError,
)


@dataclass(frozen=True)
class ListFile:
    """One URL list file: its filesystem, its path there, how to name it to the user, format and compression."""

    fs: fsspec.AbstractFileSystem
    path: str
    name: str
    fmt: str
    compression: str | None

    def open(self) -> IO[bytes]:
        """The file's bytes, decompressed."""
        return self.fs.open(self.path, "rb", compression=self.compression)


def list_files(spec: str | Path | Sequence[str | Path], storage_options: dict | None = None) -> list[ListFile]:
    """The URL list files ``spec`` names, in read order.

    ``spec`` is a file, a folder (its list files, sorted, names starting with ``.`` or ``_`` skipped), a glob
    (``urls/*.parquet``, matches sorted), or a list of those; each local or an fsspec URL (``s3://``, ``gs://``,
    ``hf://``, ``http(s)://`` for a single file). Keys follow this order, so it is deterministic.
    """
    items = [spec] if isinstance(spec, str | Path) else list(spec)
    if not items:
        raise InputError("--input: no URL list given. Pass a file, a folder or a glob.")
    files = []
    for item in items:
        files += _expand(str(item), storage_options or {})
    return files


def _expand(item: str, storage_options: dict) -> list[ListFile]:
    try:
        fs, path = fsspec.core.url_to_fs(item, **storage_options)
    except (ImportError, ValueError) as err:
        raise InputError(f"{item}: cannot open this location ({err}).") from None
    remote_http = item.startswith(("http://", "https://"))
    if not remote_http and any(c in path for c in "*?[") and not fs.exists(path):  # data[1].csv is a file
        found = sorted(p for p, info in fs.glob(path, detail=True).items() if info["type"] == "file")
        if not found:
            raise InputError(f"{item}: the pattern matches no file. Check it (quote it so the shell leaves it alone).")
        return [_list_file(fs, p, _shown(fs, p)) for p in found]
    if not remote_http and fs.isdir(path):
        found = sorted(p for p in fs.find(path) if _is_list_name(p))
        if not found:
            raise InputError(f"{item}: a folder without URL list files; {HELP}.")
        return [_list_file(fs, p, _shown(fs, p)) for p in found]
    if not fs.exists(path):
        raise InputError(f"{item}: no such file. Pass --input a URL list ({HELP}), a folder or a glob.")
    return [_list_file(fs, path, item)]


def _split_name(path: str) -> tuple[str | None, str | None]:
    """``(format, compression)`` from a file name's extensions; format None when unknown."""
    name = PurePosixPath(path.split("?", 1)[0]).name.lower()
    compression = next((c for ext, c in COMPRESSIONS.items() if name.endswith(ext)), None)
    if compression:
        name = name.rsplit(".", 1)[0]
    return FORMATS.get(PurePosixPath(name).suffix), compression


def _is_list_name(path: str) -> bool:
    name = PurePosixPath(path).name
    return not name.startswith((".", "_")) and _split_name(path)[0] is not None


def _shown(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """How to name a file found in a folder or by a glob: its path, with the protocol when remote."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _list_file(fs: fsspec.AbstractFileSystem, path: str, name: str) -> ListFile:
    fmt, compression = _split_name(path)
    if fmt is None:
        raise InputError(f"{name}: unknown extension {PurePosixPath(path).suffix or '(none)'!r}; {HELP}.")
    return ListFile(fs, path, name, fmt, compression)


def read_url_list(
    spec: str | Path | Sequence[str | Path],
    columns: Sequence[str] | None = None,
    storage_options: dict | None = None,
    url_col: str = "url",
) -> pa.Table:
    """Read the URL list(s) ``spec`` names (see :func:`list_files`) into one table, rows in file order.

    ``columns``: read only these (a missing one is an :class:`InputError` naming the file); all when None.
    A ``.txt`` list is one URL per line (blank lines skipped) in column ``url_col``, and has no other column.
    """
    tables = [read_list_file(file, columns, url_col) for file in list_files(spec, storage_options)]
    return concat(tables, str(spec))


def read_list_file(file: ListFile, columns: Sequence[str] | None = None, url_col: str = "url") -> pa.Table:
    """One list file's ``columns`` (all when None), read by its format; a read failure is an :class:`InputError`."""
    what = f"{file.compression}-compressed {file.fmt}" if file.compression else file.fmt
    try:
        table = _READERS[file.fmt](file, columns, url_col)
    except InputError:
        raise
    except _READ_ERRORS as err:
        raise InputError(f"{file.name}: cannot be read as {what}: {err}. Check the file or its extension.") from None
    return table


def check_columns(file: ListFile, names: Sequence[str], columns: Sequence[str] | None) -> None:
    """Refuse a file that lacks one of ``columns``, naming the file, the column and the fix."""
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise InputError(
            f"{file.name}: no column {missing[0]!r} (columns: {', '.join(names)}). Name the right one in the "
            f"recipe's input section, e.g. --set input.url_col=NAME (input.caption_col=null for no caption)."
        )


def _read_parquet(file: ListFile, columns: Sequence[str] | None, url_col: str) -> pa.Table:
    with file.open() as stream:
        source = pa.BufferReader(stream.read()) if file.compression else stream  # a compressed one cannot seek
        parquet = pq.ParquetFile(source)
        check_columns(file, parquet.schema_arrow.names, columns)
        return parquet.read(columns=list(columns) if columns is not None else None)  # only the needed columns


def _read_txt(file: ListFile, columns: Sequence[str] | None, url_col: str) -> pa.Table:
    check_columns(file, [url_col], columns)
    with file.open() as stream:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=[url_col]),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),  # a line is the whole URL
            convert_options=pacsv.ConvertOptions(column_types={url_col: pa.string()}, check_utf8=False),
        )
        urls = to_text(reader.read_all().column(url_col))
    return pa.table({url_col: urls}).filter(pc.not_equal(pc.utf8_trim_whitespace(urls), ""))


def _read_json(file: ListFile, columns: Sequence[str] | None, url_col: str) -> pa.Table:
    """A JSON array of objects (img2dataset's ``json``), parsed whole; JSON Lines in a ``.json`` file too."""
    with file.open() as stream:
        data = stream.read()
    if not data.lstrip().startswith(b"["):
        return _select(file, pajson.read_json(pa.BufferReader(data)), columns)
    rows = json.loads(data)
    if not all(isinstance(row, dict) for row in rows):
        raise InputError(f"{file.name}: a JSON list must be an array of objects, one per URL; or use JSON Lines.")
    if not rows:  # refused as a list without rows, whatever its columns
        return pa.table({name: pa.array([], pa.string()) for name in columns or [url_col]})
    names = list(dict.fromkeys(name for row in rows for name in row))
    check_columns(file, names, columns)
    return pa.table({name: pa.array([row.get(name) for row in rows]) for name in columns or names})


def _read_jsonl(file: ListFile, columns: Sequence[str] | None, url_col: str) -> pa.Table:
    """JSON Lines, building only ``columns`` (typed as in the first block); all of them when a column is
    missing from the first block or changes type after it (Arrow then infers over the whole file)."""
    with file.open() as stream:
        first = pajson.open_json(stream).schema
    if columns is not None and all(c in first.names for c in columns):
        fields = [first.field(c) for c in columns]
        schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in fields])
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        with contextlib.suppress(pa.ArrowInvalid), file.open() as stream:
            return pajson.read_json(stream, parse_options=parse)
    with file.open() as stream:
        return _select(file, pajson.read_json(stream), columns)


def _select(file: ListFile, table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    check_columns(file, table.column_names, columns)
    return table.select(list(columns)) if columns is not None else table


def _read_csv(file: ListFile, columns: Sequence[str] | None, url_col: str) -> pa.Table:
    """A CSV/TSV whose rows are each one line: a quoted value may not run on into the next line.

    An unclosed quote otherwise swallows the lines after it into one value, silently; a caption
    with a real line break belongs in Parquet or JSON Lines. Streamed block by block keeping only ``columns``,
    typed as in the first block; when a column's type changes after it, Arrow's whole-file reader infers it.
    """
    delimiter = "\t" if file.fmt == "tsv" else ","
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(check_utf8=False, include_columns=columns)  # UTF-8 repaired in to_text
    with file.open() as stream:
        first = pacsv.open_csv(stream, parse_options=parse, convert_options=pacsv.ConvertOptions(check_utf8=False))
        check_columns(file, first.schema.names, columns)
    types = {f.name: pa.string() if pa.types.is_null(f.type) else f.type for f in first.schema}
    try:
        with file.open() as stream:
            streamed = pacsv.ConvertOptions(check_utf8=False, include_columns=columns, column_types=types)
            table = pacsv.open_csv(stream, parse_options=parse, convert_options=streamed).read_all()
    except pa.ArrowInvalid:
        with file.open() as stream:
            try:
                table = pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
            except pa.ArrowInvalid:
                _refuse_multiline_rows(file, delimiter)  # names the line when a quote is the cause
                raise
    if any(_has_line_break(column) for column in table.columns):
        _refuse_multiline_rows(file, delimiter)
    return table


_READERS = {
    "parquet": _read_parquet,
    "csv": _read_csv,
    "tsv": _read_csv,
    "jsonl": _read_jsonl,
    "json": _read_json,
    "txt": _read_txt,
}


def concat(tables: list[pa.Table], source: str) -> pa.Table:
    """The rows of ``tables`` in order; columns of compatible types are unified (int32 and int64, null and text)."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"{source}: the list files disagree on a column's type ({err}). Make them agree.") from None


def _has_line_break(column: pa.Array | pa.ChunkedArray) -> bool:
    if not (pa.types.is_string(column.type) or pa.types.is_binary(column.type)):
        return False
    found = pc.any(pc.match_substring_regex(column, "[\r\n]"))
    return bool(found.as_py())


def _refuse_multiline_rows(file: ListFile, delimiter: str) -> None:
    """Raise :class:`InputError` naming the first line whose quoted value is not closed on it."""
    with file.open() as raw, io.TextIOWrapper(raw, newline="", encoding="utf-8", errors="replace") as text:
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        end = 0
        try:
            for _ in reader:
                if reader.line_num > end + 1:
                    break
                end = reader.line_num
            else:
                return
        except csv.Error:
            pass
    raise InputError(
        f"{file.name}: line {end + 1}: a quoted value is not closed on its line, so it would swallow the lines "
        f'after it. Close the quote (write a quote inside a value as ""); captions with line breaks go in '
        f"Parquet or JSON Lines."
    )


def read_inputs(
    spec: str | Path | Sequence[str | Path],
    cfg: InputConfig,
    samples_per_shard: int,
    storage_options: dict | None = None,
) -> pa.Table:
    """The run's input table from the URL list(s) ``spec``: only the recipe's columns are read (see
    :func:`list_files` for what ``spec`` may be), then :func:`prepare_inputs`. Raises :class:`InputError` on
    any unusable file, before anything else starts."""
    extras = list(cfg.save_additional_columns)
    tables = [named_rows(file, cfg) for file in list_files(spec, storage_options)]
    named = InputConfig(url_col="url", caption_col="caption", save_additional_columns=extras)
    return prepare_inputs(concat(tables, spec_name(spec)), named, samples_per_shard, spec_name(spec))


def spec_name(spec: str | Path | Sequence[str | Path]) -> str:
    """How error messages name the URL list(s) ``spec``."""
    return str(spec) if isinstance(spec, str | Path) else ", ".join(map(str, spec))


def named_rows(file: ListFile, cfg: InputConfig) -> pa.Table:
    """One list file's rows as columns ``url``, ``caption`` (text; '' for a .txt list) and the recipe's extras."""
    extras = list(cfg.save_additional_columns)
    with_caption = cfg.caption_col is not None and file.fmt != "txt"  # a .txt list has URLs only
    table = read_list_file(file, [cfg.url_col, *([cfg.caption_col] if with_caption else []), *extras], cfg.url_col)
    url = _text_column(file, table, cfg.url_col)
    caption = _text_column(file, table, cfg.caption_col) if with_caption else _no_caption(len(table))
    return pa.table({"url": url, "caption": caption, **{c: table.column(c) for c in extras}})


def _text_column(file: ListFile, table: pa.Table, name: str) -> pa.ChunkedArray:
    try:
        return to_text(table.column(name))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise InputError(f"{file.name}: column {name!r} holds {table.column(name).type}, not text.") from None


def _no_caption(rows: int) -> pa.Array:
    """The caption of a URL-only row: the empty string (never null), like an empty alt text."""
    return pa.repeat(pa.scalar("", pa.string()), rows)


def prepare_inputs(table: pa.Table, cfg: InputConfig, samples_per_shard: int, source: str) -> pa.Table:
    """Select and rename the recipe's columns and add ``key``, ``raw_shard`` and ``fetchable``.

    With ``cfg.caption_col`` None (a URL-only list) every caption is the empty string.
    """
    wanted = [cfg.url_col, *([cfg.caption_col] if cfg.caption_col is not None else []), *cfg.save_additional_columns]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise InputError(
            f"{source}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}). "
            f"Name the right one in the recipe's input section, e.g. --set input.url_col=NAME."
        )
    if len(table) == 0:
        raise InputError(f"{source}: no rows (only the columns {', '.join(table.column_names)}): nothing to curate.")
    url = to_text(table.column(cfg.url_col))
    caption = to_text(table.column(cfg.caption_col)) if cfg.caption_col is not None else _no_caption(len(table))
    named = pa.table({"url": url, "caption": caption, **{c: table.column(c) for c in cfg.save_additional_columns}})
    return add_keys(named, ShardLayout(len(table), samples_per_shard))


def add_keys(named: pa.Table, layout: ShardLayout, start: int = 0) -> pa.Table:
    """``named`` (url, caption, extras: rows ``start`` on of the input) with ``key``, ``raw_shard`` and
    ``fetchable``: the input table's columns, in its order. Computed in Arrow, no Python object per row."""
    stop, per = start + len(named), layout.samples_per_shard
    first, last = start // per, max(start, stop - 1) // per
    names = pa.array([layout.shard_name(i) for i in range(first, last + 1)], pa.string())  # one per shard
    columns = {"key": layout.keys(start, stop), **{c: named.column(c) for c in named.column_names}}
    columns["raw_shard"] = names.take(np.arange(start, stop, dtype=np.int64) // per - first)
    columns["fetchable"] = is_fetchable(named.column("url"))
    return pa.table(columns)


def to_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Column as valid UTF-8 strings: invalid byte sequences become U+FFFD, numbers become text."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column.validate(full=True)
            return pc.cast(column, pa.string())
        except pa.ArrowInvalid:
            column = pc.cast(column, pa.binary())
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return pc.cast(column, pa.string())
    decoded = [None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()]
    return pa.chunked_array([pa.array(decoded, pa.string())])


def download_rows(
    inputs: pa.Table,
    layout: ShardLayout,
    shard_id: int,
    extra: list[str],
    blocklist: tuple[set[str], list[str]] | None = None,
) -> pa.Table:
    """:func:`shard_rows` of shard ``shard_id`` of ``inputs`` (the whole input table, in row order)."""
    per = layout.samples_per_shard
    return shard_rows(inputs.slice(shard_id * per, per), extra, blocklist)


def shard_rows(rows: pa.Table, extra: list[str], blocklist: tuple[set[str], list[str]] | None = None) -> pa.Table:
    """The rows handed to the downloader for one shard (``rows``: its input rows); unfetchable URLs become ''
    (never requested).

    With ``blocklist`` (the url_filter's domains and patterns), blocked rows are marked in column
    ``BLOCKED_COLUMN`` and are never requested either; they end with reason ``blocked_url``.
    """
    url = pc.if_else(rows.column("fetchable"), rows.column("url"), pa.scalar("", pa.string()))
    table = pa.table({"url": url, "caption": rows.column("caption"), **{c: rows.column(c) for c in extra}})
    if blocklist is not None and (blocklist[0] or blocklist[1]):
        table = table.append_column(BLOCKED_COLUMN, blocked_mask(rows.column("url"), *blocklist))
    return table
