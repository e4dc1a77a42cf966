"""The URL list a run starts from: read Parquet/CSV/JSONL, name the columns, assign keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curate.acquire import BLOCKED_COLUMN, ShardLayout, is_fetchable
from curate.decide.urls import blocked_mask
from curate.recipe import InputConfig


class InputError(ValueError):
    """The URL list cannot be used; the message says why and what to do."""


def read_url_list(path: str | Path) -> pa.Table:
    """Read a URL list from Parquet, CSV/TSV or JSON Lines (by extension)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file. Pass --input a Parquet, CSV or JSONL URL list.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet" or path.is_dir():
            return pq.read_table(path)
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            return pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(check_utf8=False),  # repaired in to_text
            )
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: cannot be read as {suffix[1:]}: {err}") from None
    raise InputError(f"{path}: unknown extension {suffix!r}; use .parquet, .csv, .tsv or .jsonl")


def prepare_inputs(table: pa.Table, cfg: InputConfig, samples_per_shard: int, source: str) -> pa.Table:
    """Select and rename the recipe's columns and add ``key``, ``raw_shard`` and ``fetchable``."""
    wanted = [cfg.url_col, cfg.caption_col, *cfg.save_additional_columns]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise InputError(
            f"{source}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}). "
            f"Name the right one in the recipe's input section, e.g. --set input.url_col=NAME."
        )
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
