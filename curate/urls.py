"""The URL list a run starts from: read Parquet/CSV/JSONL, name the columns, assign keys."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curate import storage
from curate.acquire import BLOCKED_COLUMN, ShardLayout, is_fetchable
from curate.decide.urls import blocked_mask
from curate.recipe import InputConfig


class InputError(ValueError):
    """The URL list cannot be used; the message says why and what to do."""


def read_url_list(path: str | Path) -> pa.Table:
    """Read a URL list from Parquet, CSV/TSV or JSON Lines (by extension); a local path or an fsspec URL."""
    if not storage.is_local(path):
        return _read_remote(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file. Pass --input a Parquet, CSV or JSONL URL list.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet" or path.is_dir():
            return pq.read_table(path)
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: cannot be read as {suffix[1:]}: {err}") from None
    raise InputError(f"{path}: unknown extension {suffix!r}; use .parquet, .csv, .tsv or .jsonl")


def _read_remote(url: str) -> pa.Table:
    """Read a URL list on object storage (``s3://...``) through a local copy (fsspec; credentials from the environment)."""
    if not storage.isfile(url):
        raise InputError(f"{url}: no such file. Pass --input a Parquet, CSV or JSONL URL list.")
    scratch = storage.local_tmp()
    try:
        local = Path(scratch, storage.name(url))
        fs, path = storage.fs_path(url)
        fs.get_file(path, str(local))
        return read_url_list(local)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    """A CSV/TSV whose rows are each one line: a quoted value may not run on into the next line.

    An unclosed quote otherwise swallows the lines after it into one value, silently; a caption
    with a real line break belongs in Parquet or JSON Lines.
    """
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(check_utf8=False),  # repaired in to_text
        )
    except pa.ArrowInvalid:
        _refuse_multiline_rows(path, delimiter)  # names the line when a quote is the cause
        raise
    if any(_has_line_break(column) for column in table.columns):
        _refuse_multiline_rows(path, delimiter)
    return table


def _has_line_break(column: pa.ChunkedArray) -> bool:
    if not (pa.types.is_string(column.type) or pa.types.is_binary(column.type)):
        return False
    found = pc.any(pc.match_substring_regex(column, "[\r\n]"))
    return bool(found.as_py())


def _refuse_multiline_rows(path: Path, delimiter: str) -> None:
    """Raise :class:`InputError` naming the first line whose quoted value is not closed on it."""
    with open(path, newline="", encoding="utf-8", errors="replace") as file:
        reader = csv.reader(file, delimiter=delimiter, strict=True)
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
        f"{path}: line {end + 1}: a quoted value is not closed on its line, so it would swallow the lines "
        f'after it. Close the quote (write a quote inside a value as ""); captions with line breaks go in '
        f"Parquet or JSON Lines."
    )


def prepare_inputs(table: pa.Table, cfg: InputConfig, samples_per_shard: int, source: str) -> pa.Table:
    """Select and rename the recipe's columns and add ``key``, ``raw_shard`` and ``fetchable``."""
    wanted = [cfg.url_col, cfg.caption_col, *cfg.save_additional_columns]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise InputError(
            f"{source}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}). "
            f"Name the right one in the recipe's input section, e.g. --set input.url_col=NAME."
        )
    if len(table) == 0:
        raise InputError(f"{source}: no rows (only the columns {', '.join(table.column_names)}): nothing to curate.")
    layout = ShardLayout(len(table), samples_per_shard)
    url = to_text(table.column(cfg.url_col))
    caption = to_text(table.column(cfg.caption_col))
    columns = {"key": pa.array(layout.keys(), pa.string()), "url": url, "caption": caption}
    for name in cfg.save_additional_columns:
        columns[name] = table.column(name)
    shard_of_row = [layout.shard_name(i // samples_per_shard) for i in range(len(table))]
    columns["raw_shard"] = pa.array(shard_of_row, pa.string())
    columns["fetchable"] = is_fetchable(url)
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


def fingerprint(inputs: pa.Table) -> str:
    """A hash of the URLs and captions, to refuse resuming a run with a different input."""
    digest = hashlib.sha256()
    for name in ("key", "url", "caption"):
        for chunk in inputs.column(name).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    digest.update(buf)
    return digest.hexdigest()[:16]


def download_rows(
    inputs: pa.Table,
    layout: ShardLayout,
    shard_id: int,
    extra: list[str],
    blocklist: tuple[set[str], list[str]] | None = None,
) -> pa.Table:
    """The rows handed to the downloader for one shard; unfetchable URLs become '' (never requested).

    With ``blocklist`` (the url_filter's domains and patterns), blocked rows are marked in column
    ``BLOCKED_COLUMN`` and are never requested either; they end with reason ``blocked_url``.
    """
    per = layout.samples_per_shard
    rows = inputs.slice(shard_id * per, per)  # inputs are in row order, shard by shard
    url = pc.if_else(rows.column("fetchable"), rows.column("url"), pa.scalar("", pa.string()))
    table = pa.table({"url": url, "caption": rows.column("caption"), **{c: rows.column(c) for c in extra}})
    if blocklist is not None and (blocklist[0] or blocklist[1]):
        table = table.append_column(BLOCKED_COLUMN, blocked_mask(rows.column("url"), *blocklist))
    return table
