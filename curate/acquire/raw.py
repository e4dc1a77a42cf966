"""Read acquired shards back as Arrow tables: every input row of a shard, with its image bytes.

``status`` is img2dataset's (``success``, ``failed_to_download``, ``failed_to_resize``) or, for a
download curate refused or cut off, its reason code (``download_timeout``, ``too_large_download``,
``blocked_address``, ``blocked_redirect``, ``robots_disallowed``, ``blocked_url``; see ``curate.acquire.fetch``);
``bad_url``, ``missing`` and ``missing_image`` name what img2dataset cannot (see ``_fix_status``).

The input rows (``RUN/input/{shard}.parquet``, or one ``RUN/input/urls.parquet`` in runs made by earlier
versions) are the source of truth for which rows exist;
img2dataset's per-shard Parquet adds the download status and the tar adds the bytes. A row
img2dataset lost still comes out, with status ``missing``, so nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import storage

BASE_COLUMNS: dict[str, pa.DataType] = {
    "key": pa.string(),
    "url": pa.string(),
    "caption": pa.string(),
    "status": pa.string(),
    "error_message": pa.string(),
    "raw_shard": pa.string(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "image_offset": pa.int64(),
    "image_size": pa.int64(),
    "image": pa.binary(),
}
"""Columns every annotate batch starts with (plus the recipe's additional input columns)."""

RAW_META_COLUMNS = ["key", "status", "error_message", "original_width", "original_height"]
"""What img2dataset's per-shard Parquet adds (original sizes are set only when it resized)."""

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
"""Image members of a raw tar (img2dataset names every image .jpg; plain WebDataset tars use any of these).
The first image member of a key is its image."""

SOURCES = "sources.json"
"""``RUN/raw/sources.json``: for a run made from already-downloaded data (``curate.acquire.existing``), where each
raw shard's files are, by shard name and suffix; a suffix it does not name is in ``RUN/raw/``."""

_sources_cache: dict[str, dict] = {}


def raw_file(run_dir: str | Path, shard: str, suffix: str) -> str:
    """Where raw shard ``shard``'s file with ``suffix`` (``.tar``, ``.parquet``, ``_stats.json``) is.

    The one place that knows the layout: every reader of acquired bytes goes through it. A run made
    from an img2dataset folder or WebDataset tars reads them in place (``RUN/raw/sources.json``).
    """
    files = raw_sources(run_dir).get("shards", {}).get(shard, {})
    return files.get(suffix) or f"{run_dir}/raw/{shard}{suffix}"


def raw_sources(run_dir: str | Path) -> dict:
    """``RUN/raw/sources.json`` (empty when the run downloaded its shards), read once per process."""
    key = str(run_dir)
    if key not in _sources_cache:
        try:
            with fsspec.open(f"{key}/raw/{SOURCES}", "rb") as f:
                _sources_cache[key] = json.loads(f.read())
        except FileNotFoundError:
            _sources_cache[key] = {}  # staging writes it before any shard is read, then calls forget_sources
    return _sources_cache[key]


def image_column(run_dir: str | Path, shard: str) -> str | None:
    """The Parquet column holding shard ``shard``'s images (img2dataset's ``parquet`` output format), or
    None when they are in its tar."""
    return raw_sources(run_dir).get("shards", {}).get(shard, {}).get("image_column")


def forget_sources(run_dir: str | Path) -> None:
    """Drop this process's copy of ``run_dir``'s sources (after staging rewrote them)."""
    _sources_cache.pop(str(run_dir), None)


def shard_names(run_dir: str | Path, downloaded: set[str]) -> list[str]:
    """The run's raw shards: those of ``sources.json`` when it has one, else ``downloaded`` (complete ones)."""
    sources = raw_sources(run_dir)
    return sorted(sources["shards"]) if sources else sorted(downloaded)


def read_shard(run_dir: str, shard: str, chunk_rows: int = 512, part: int = 0, parts: int = 1) -> Iterator[pa.Table]:
    """Yield the rows of raw shard ``shard`` in chunks, joined with their bytes: all of them, or the ``part``-th
    of ``parts`` contiguous runs of its rows (sorted by key) when several tasks share a shard."""
    inputs = _input_rows(run_dir, shard)
    meta_path, tar_path = raw_file(run_dir, shard, ".parquet"), raw_file(run_dir, shard, ".tar")
    meta = _raw_meta(meta_path)
    column = image_column(run_dir, shard)
    images, tar = (_parquet_images(meta_path, column), None) if column else _tar_index(tar_path)
    check_pairing(shard, meta_path, tar_path, inputs, meta, images)
    meta = meta.drop_columns(["raw_url", "raw_caption"])
    table = _join_rows(inputs.join(meta, "key", join_type="left outer"), images)
    first, end = len(table) * part // parts, len(table) * (part + 1) // parts
    for start in range(first, end, chunk_rows):
        yield _fix_status(_with_images(table.slice(start, min(chunk_rows, end - start)), images, tar))


def _join_images(rows: pa.Table, images: pa.Table, tar: bytes | None = None) -> pa.Table:
    """``rows`` left-joined with ``images`` by key, sorted by key (:func:`_join_rows` + :func:`_with_images`)."""
    return _with_images(_join_rows(rows, images), images, tar)


def _join_rows(rows: pa.Table, images: pa.Table) -> pa.Table:
    """``rows`` left-joined by key with ``images`` less its bytes (the tar offsets, when there are) and its row
    numbers (``_image_row``), sorted by key. The join and the sort move no image bytes (a join carrying them
    copied every byte twice)."""
    index = images.drop_columns([c for c in ("image",) if c in images.column_names])
    index = index.append_column("_image_row", pa.array(range(len(images)), pa.int64()))
    return rows.join(index, "key", join_type="left outer").sort_by("key")


def _with_images(rows: pa.Table, images: pa.Table, tar: bytes | None) -> pa.Table:
    """``rows`` (from :func:`_join_rows`) with their image bytes, gathered in their order: from ``images``'
    column, or cut from the ``tar`` its offsets point into. Read calls it block by block, so a shard's bytes
    are held once (the tar) plus one block's copy."""
    order = rows.column("_image_row").combine_chunks()
    gathered = images.column("image").take(order) if tar is None else _gather(tar, images, order)
    return rows.drop_columns(["_image_row"]).append_column("image", gathered)


def _raw_meta(path: str) -> pa.Table:
    """The per-shard Parquet's metadata; a download's reason code (``error_code``) replaces its status.

    Shards written before curate recorded ``error_code`` lack the column and keep img2dataset's status.
    """
    fsys, path = storage.arrow_fs(path)
    names = pq.read_schema(path, filesystem=fsys).names
    extra = [c for c in ("error_code", "url", "caption") if c in names]
    meta = pq.read_table(path, filesystem=fsys, columns=RAW_META_COLUMNS + extra)
    for name in ("url", "caption"):  # what the shard says each key is, checked against the input
        column = meta.column(name).cast(pa.string()) if name in names else pa.nulls(len(meta), pa.string())
        meta = meta.drop_columns([name]) if name in names else meta
        meta = meta.append_column(f"raw_{name}", column)
    if "error_code" not in names:
        return meta
    code = meta.column("error_code")
    specific = pc.and_(pc.is_valid(code), pc.not_equal(code, "download_error"))
    status = pc.if_else(pc.fill_null(specific, False), code, meta.column("status"))
    return meta.set_column(meta.column_names.index("status"), "status", status).drop_columns(["error_code"])


MISMATCH_HINT = (
    "The raw shards were made from another URL list or another acquire.samples_per_shard (or files were "
    "copied or renamed between shards): curate will not pair a caption with another sample's image. "
    "Use a new --output, or pass the downloaded folder itself as --input."
)


def check_pairing(
    shard: str, meta_path: str, tar_path: str, inputs: pa.Table, meta: pa.Table, images: pa.Table
) -> None:
    """Raise :class:`curate.acquire.inputs.InputError` unless raw shard ``shard`` holds exactly the input's samples for its keys.

    Every key of the shard's Parquet must be an input row of this shard, with the same URL (an
    unfetchable URL is recorded as '') and caption; every image in the tar must have a record.
    """
    known = pc.is_in(meta.column("key"), inputs.column("key"))
    if not pc.all(known).as_py():
        key = pc.filter(meta.column("key"), pc.invert(known))[0].as_py()
        raise _error(f"raw shard {shard} ({meta_path}): key {key!r} is not an input row of this shard. {MISMATCH_HINT}")
    orphan = pc.invert(pc.is_in(images.column("key"), meta.column("key")))
    if pc.any(orphan).as_py():
        key = pc.filter(images.column("key"), orphan)[0].as_py()
        raise _error(
            f"raw shard {shard} ({tar_path}): image of key {key!r} has no record in {meta_path}. {MISMATCH_HINT}"
        )
    joined = meta.select(["key", "raw_url", "raw_caption"]).join(
        inputs.select(["key", "url", "caption", "fetchable"]), "key"
    )
    url, raw_url = joined.column("url"), joined.column("raw_url")
    blanked = pc.and_(pc.invert(joined.column("fetchable")), pc.equal(raw_url, ""))  # acquire never sent it
    checks = {
        "url": pc.and_(pc.fill_null(pc.not_equal(url, raw_url), False), pc.invert(pc.fill_null(blanked, False))),
        "caption": pc.fill_null(pc.not_equal(joined.column("caption"), joined.column("raw_caption")), False),
    }
    for name, differs in checks.items():
        if pc.any(differs).as_py():
            row = joined.filter(differs).slice(0, 1).to_pylist()[0]
            raise _error(
                f"raw shard {shard} ({meta_path}): key {row['key']!r} has {name} {row[f'raw_{name}']!r} in the shard "
                f"but {row[name]!r} in the input. {MISMATCH_HINT}"
            )


def _error(message: str) -> Exception:
    from curate.acquire.inputs import InputError  # not at import: curate.acquire.inputs imports acquire and the recipe

    return InputError(message)


LEGACY_INPUT = "urls.parquet"
"""``RUN/input/urls.parquet``: every input row in one file, as runs made by earlier versions have it."""


def input_file(run_dir: str | Path, shard: str) -> str:
    """``RUN/input/{shard}.parquet``: raw shard ``shard``'s input rows (key, url, caption, extras, raw_shard,
    fetchable), in key order."""
    return storage.join(str(run_dir), "input", f"{shard}.parquet")


def _input_rows(run_dir: str, shard: str) -> pa.Table:
    """Raw shard ``shard``'s input rows: its own file, or its rows of an earlier version's ``urls.parquet``."""
    own = input_file(run_dir, shard)
    legacy = storage.join(run_dir, "input", LEGACY_INPUT)
    if not storage.exists(own) and storage.exists(legacy):
        fsys, path = storage.arrow_fs(legacy)
        return pads.dataset(path, filesystem=fsys).to_table(filter=pc.field("raw_shard") == shard)
    fsys, path = storage.arrow_fs(own)
    return pq.read_table(path, filesystem=fsys)


def _tar_images(path: str) -> pa.Table:
    """Key, data offset, size and bytes of every image member of a raw tar (the first one of each key)."""
    index, data = _tar_index(path)
    return index.append_column("image", _gather(data, index, pa.array(range(len(index)), pa.int64())))


def _tar_index(path: str) -> tuple[pa.Table, bytes]:
    """Key, data offset and size of every image member of a raw tar (the first one of each key), and its bytes.

    The tar is read whole (one request on object storage); members are sliced out of that buffer by
    :func:`_gather` once their final order is known (3x faster than streaming each member through ``tarfile``,
    and one copy of the image bytes instead of two).
    """
    keys, offsets, sizes = [], [], []
    seen: set[str] = set()
    with fsspec.open(path, "rb") as f:
        data = f.read()
    for name, offset, size in _plain_tar_files(data) or _tarfile_files(data):
        stem, ext = split_member(name)
        if ext not in IMAGE_EXTS or stem in seen:
            continue
        seen.add(stem)
        keys.append(stem)
        offsets.append(offset)
        sizes.append(size)
    index = pa.table(
        {"key": keys, "image_offset": offsets, "image_size": sizes},
        schema=pa.schema([(n, BASE_COLUMNS[n]) for n in ("key", "image_offset", "image_size")]),
    )
    return index, data


def _tarfile_files(data: bytes) -> Iterator[tuple[str, int, int]]:
    """Name, data offset and size of each regular file of the tar ``data``, as :mod:`tarfile` reads them."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, member.offset_data, member.size


TAR_BLOCK = 512
PLAIN_TYPES = {b"0": True, b"\0": True, b"5": False, b"x": False}
"""Tar member types the fast path reads (regular file or not; ``x``: a pax header for the next member); any
other (GNU long names, global pax headers, links, sparse files) sends the whole tar to :mod:`tarfile`."""
PAX_KEYS = {b"path", b"size", b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname", b"mode"}
"""Pax header keys the fast path knows (Python's tarfile writes ``mtime`` for each WebDataset member)."""


def _plain_tar_files(data: bytes) -> list[tuple[str, int, int]] | None:
    """:func:`_tarfile_files` for a plain ustar tar (what WebDataset writers make), parsed straight from its
    headers as :mod:`tarfile` parses them: 7x faster than :mod:`tarfile`, which costs ~24 µs a member. None for
    anything else (a pax or GNU extension, a bad checksum, a truncated or unterminated tar): :mod:`tarfile` then
    reads it, errors and all."""
    files, headers, sums, offset = [], [], [], 0
    pax: dict[bytes, bytes] = {}
    while True:
        header = data[offset : offset + TAR_BLOCK]
        if len(header) < TAR_BLOCK:
            return None  # truncated, or no end-of-archive block
        if not header.strip(b"\0"):
            break
        kind = header[156:157]
        if kind not in PLAIN_TYPES or header[124] & 0x80 or (kind == b"x" and pax):  # base-256 size; pax on pax
            return None
        try:  # a pax size overrides the header's
            size = int(pax[b"size"]) if b"size" in pax else _number(header[124:136])
            checksum = _number(header[148:156])
        except ValueError:
            return None
        if size < 0:
            return None
        headers.append(offset // TAR_BLOCK)
        sums.append(checksum)
        data_at, offset = offset + TAR_BLOCK, offset + TAR_BLOCK * (1 + -(-size // TAR_BLOCK))
        if kind == b"x":
            pax = _pax_records(data[data_at : data_at + size])
            if pax is None:
                return None
            continue
        name, prefix = _text(header[:100]), _text(header[345:500])
        name = f"{prefix}/{name}" if prefix else name
        if b"path" in pax:
            name = pax[b"path"].decode("utf-8", "surrogateescape")
        pax = {}
        if name.endswith("/") and PLAIN_TYPES[kind]:
            return None  # tarfile calls some of these directories
        if PLAIN_TYPES[kind]:
            files.append((name, data_at, size))
    return files if _checksums_match(data, headers, sums) else None


def _pax_records(body: bytes) -> dict[bytes, bytes] | None:
    """The ``key=value`` records of a pax header (``LENGTH key=value\\n`` each); None when malformed or when a
    key is one :data:`PAX_KEYS` does not list."""
    records, pos = {}, 0
    while pos < len(body) and body[pos] != 0:
        space = body.find(b" ", pos)
        try:
            end = pos + int(body[pos:space])
        except ValueError:
            return None
        key, eq, value = body[space + 1 : end - 1].partition(b"=")
        if space < 0 or end <= space or body[end - 1 : end] != b"\n" or not eq or key not in PAX_KEYS:
            return None
        records[key], pos = value, end
    return records


def _number(raw: bytes) -> int:
    """A tar header's octal number field."""
    return int(raw.split(b"\0", 1)[0].strip() or b"0", 8)


def _text(raw: bytes) -> str:
    """A tar header's text field."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksums_match(data: bytes, blocks: list[int], sums: list[int]) -> bool:
    """Whether each header (at block number ``blocks``) has the (unsigned) checksum it records: its bytes summed
    with the checksum field counted as spaces."""
    if not blocks:
        return True
    whole = len(data) // TAR_BLOCK * TAR_BLOCK
    headers = np.frombuffer(data, np.uint8, count=whole).reshape(-1, TAR_BLOCK)[np.asarray(blocks)]
    computed = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    return bool(np.array_equal(computed, np.asarray(sums)))


def _gather(data: bytes, index: pa.Table, rows: pa.Array) -> pa.Array:
    """The image bytes of ``index``'s rows ``rows`` (null where ``rows`` is null), cut from the tar ``data``
    into one new buffer in that order."""
    if not len(index):  # a tar without images: every row's image is null
        return pa.nulls(len(rows), pa.binary())
    valid = rows.is_valid().to_numpy(zero_copy_only=False)
    picked = rows.fill_null(0).to_numpy()
    starts = index.column("image_offset").to_numpy()[picked]
    lengths = np.where(valid, index.column("image_size").to_numpy()[picked], 0)
    ends = np.cumsum(lengths)
    if len(ends) and ends[-1] >= 2**31:  # beyond a binary array's 32-bit offsets: let Arrow chunk it
        view = memoryview(data)
        return pa.array(
            [view[a : a + n] if ok else None for a, n, ok in zip(starts, lengths, valid, strict=True)], pa.binary()
        )
    source = np.frombuffer(data, np.uint8)
    values = np.concatenate([source[a : a + n] for a, n in zip(starts, lengths, strict=True) if n] or [source[:0]])
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    bitmap = pa.array(valid, pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(rows), [bitmap, pa.py_buffer(offsets), pa.py_buffer(values)])


def split_member(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension) of a tar member name: the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _fix_status(table: pa.Table) -> pa.Table:
    """Name the row states img2dataset cannot: never requested, lost, or success without bytes."""
    status = table.column("status")
    has_image = pc.is_valid(table.column("image"))
    status = pc.if_else(pc.is_null(status), pa.scalar("missing"), status)
    status = pc.if_else(pc.and_(pc.equal(status, "success"), pc.invert(has_image)), "missing_image", status)
    status = pc.if_else(table.column("fetchable"), status, pa.scalar("bad_url"))
    table = table.set_column(table.column_names.index("status"), "status", status)
    return table.drop_columns(["fetchable"])


def _parquet_images(path: str, column: str) -> pa.Table:
    """Key, row index (as ``image_offset``), size and bytes of every image of an img2dataset Parquet shard."""
    table = _read_parquet(path, ["key", column])
    table = table.append_column("image_offset", pa.array(range(len(table)), pa.int64()))
    table = table.filter(pc.is_valid(table.column(column)))
    sizes = pc.binary_length(table.column(column)).cast(pa.int64())
    columns = {"key": table.column("key"), "image_offset": table.column("image_offset"), "image_size": sizes}
    columns["image"] = table.column(column).cast(pa.binary())
    return pa.table(columns, schema=pa.schema([(n, BASE_COLUMNS[n]) for n in columns]))


def _read_parquet(url: str, columns: list[str]) -> pa.Table:
    fsys, path = storage.arrow_fs(url)
    return pq.read_table(path, filesystem=fsys, columns=columns)


def read_span(run_dir: str | Path, shard: str, offset: int, size: int) -> bytes:
    """One image's bytes: ``size`` bytes at ``offset`` of the shard's tar (or row ``offset`` of its Parquet)."""
    column = image_column(run_dir, shard)
    if column:
        table = _read_parquet(raw_file(run_dir, shard, ".parquet"), [column])
        return table.column(column)[offset].as_py()
    with fsspec.open(raw_file(run_dir, shard, ".tar"), "rb") as f:
        f.seek(offset)
        return f.read(size)


def read_images(rows: pa.Table, run_dir: str) -> dict[str, bytes]:
    """Read each row's image bytes from its raw tar by offset, one open file per raw shard."""
    by_shard: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for key, shard, offset, size in zip(
        *(rows.column(c).to_pylist() for c in ("key", "raw_shard", "image_offset", "image_size")),
        strict=True,
    ):
        by_shard[shard].append((offset, size, key))
    images: dict[str, bytes] = {}
    for shard, spans in by_shard.items():
        column = image_column(run_dir, shard)
        if column:  # img2dataset's parquet output format: offset is the row
            table = _read_parquet(raw_file(run_dir, shard, ".parquet"), [column])
            images |= {key: table.column(column)[offset].as_py() for offset, _, key in spans}
            continue
        with fsspec.open(raw_file(run_dir, shard, ".tar"), "rb") as f:
            for offset, size, key in sorted(spans):
                f.seek(offset)
                images[key] = f.read(size)
    return images
