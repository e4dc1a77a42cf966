"""The images ``curate calibrate`` measures: a seeded sample of the run's own, known duplicate pairs of the run's
rows (``--duplicates``), and known-distinct images from a folder or WebDataset tars (``--distinct``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import storage
from curate.acquire.raw import _tar_images, read_images
from curate.errors import CalibrationError, NotFound

NEEDED = ("key", "phash", "raw_shard", "image_offset", "image_size")
"""Samples columns calibration reads (``sha256`` too when the hashes stage ran)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PAIR_COLUMNS = (("key_a", "key_b"), ("key", "dup_of"))
"""The column pairs a ``--duplicates`` file may name its pairs with (the second: RUN/decisions' own)."""


def _samples_dataset(run_dir: str) -> pads.Dataset:
    paths = storage.files(storage.join(run_dir, "samples"))
    if not paths:
        raise CalibrationError(f"{run_dir}/samples: no Parquet files; finish annotate first (`curate run`).")
    fsys, local = storage.arrow_paths(paths)
    dataset = pads.dataset(local, filesystem=fsys, format="parquet")
    missing = [c for c in NEEDED if c not in dataset.schema.names]
    if missing:
        raise CalibrationError(
            f"{run_dir}/samples has no column {', '.join(missing)}: calibration reads the image stage's pHash "
            "and the raw image of each row; add `- stage: image` to annotate and run again."
        )
    return dataset


def _query(run_dir: str, sql: str, params: dict | None = None) -> pa.Table:
    """``sql`` over view ``samples`` (the run's samples as an Arrow dataset) in DuckDB: out of core, nothing of
    the pool is held here but what the query returns."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("samples", _samples_dataset(run_dir))
        return con.execute(sql, params or {}).to_arrow_table()
    finally:
        con.close()


def _columns(run_dir: str) -> str:
    names = _samples_dataset(run_dir).schema.names
    return ", ".join([*NEEDED, *(["sha256"] if "sha256" in names else [])])


def pool_size(run_dir: str) -> int:
    """Rows of the run with a pHash (their image decoded): the pool near_dedup works on."""
    return int(_query(run_dir, "SELECT count(*) AS n FROM samples WHERE phash IS NOT NULL").column("n")[0].as_py())


def read_samples(run_dir: str, limit: int, seed: int) -> pa.Table:
    """A seeded sample of at most ``limit`` of the run's decoded rows, one per distinct image (sha256, when the
    hashes stage recorded it): key, phash, where the bytes are (and sha256), in key order.

    DuckDB picks the rows with the smallest seeded hash of their key (a top-``limit`` heap, deterministic, and it
    spills): a pool of 1e9 rows never comes to this process."""
    columns = _columns(run_dir)
    distinct = "QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY key) = 1" if "sha256" in columns else ""
    return _query(
        run_dir,
        f"""SELECT * FROM (
                SELECT {columns} FROM (SELECT {columns} FROM samples WHERE phash IS NOT NULL {distinct})
                ORDER BY hash(key || $seed) LIMIT {int(limit)})
            ORDER BY key""",
        {"seed": str(seed)},
    )


def rows_for_keys(run_dir: str, keys: set[str]) -> pa.Table:
    """The decoded rows of ``keys`` (a trusted set's few keys)."""
    return _query(
        run_dir,
        f"SELECT {_columns(run_dir)} FROM samples WHERE phash IS NOT NULL AND list_contains($keys, key)",
        {"keys": sorted(keys)},
    )


def samples_columns(run_dir: str) -> list[str]:
    """The columns of RUN/samples (from the Parquet schema; no rows read)."""
    fsys, local = storage.arrow_paths(storage.files(storage.join(run_dir, "samples")))
    return pads.dataset(local, filesystem=fsys, format="parquet").schema.names


def sample_rows(samples: pa.Table, n: int, seed: int, exclude: set[str] | frozenset = frozenset()) -> pa.Table:
    """A seeded sample of up to ``n`` rows, in their order, leaving out the keys in ``exclude``."""
    if exclude:
        samples = samples.filter(pc.invert(pc.is_in(samples.column("key"), pa.array(sorted(exclude)))))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    return samples.take(pa.array(np.sort(chosen)))


def run_images(run_dir: str, rows: pa.Table) -> list[bytes]:
    """The raw image bytes of ``rows`` (from RUN/raw, wherever its shards are), in row order."""
    try:
        found = read_images(rows, run_dir)
    except FileNotFoundError as err:
        raise CalibrationError(
            f"{run_dir}: a raw shard is missing ({err.filename or err}); calibration reads the run's images from "
            "RUN/raw (or the already-downloaded input it was made from): restore it, or pass --duplicates and "
            "--distinct sets."
        ) from None
    return [found[key] for key in rows.column("key").to_pylist()]


def duplicate_pairs(path: str, run_dir: str) -> tuple[list[bytes], list[bytes], set[str]]:
    """The two images of each known duplicate pair in ``path`` (CSV or Parquet of run keys), and the keys named."""
    table = _read_pairs(path)
    a, b = next((x, y) for x, y in PAIR_COLUMNS if x in table.column_names and y in table.column_names)
    table = table.filter(pc.and_(pc.is_valid(table.column(a)), pc.is_valid(table.column(b))))
    left, right = table.column(a).to_pylist(), table.column(b).to_pylist()
    keys = set(left) | set(right)
    rows = rows_for_keys(run_dir, keys)
    missing = sorted(keys - set(rows.column("key").to_pylist()))
    if missing:
        raise CalibrationError(
            f"{path}: {len(missing)} key(s) are not decoded rows of {run_dir} (e.g. {missing[:3]}); list pairs of "
            'the run\'s own keys (`curate stats RUN "SELECT key FROM samples"`) whose images decoded.'
        )
    if not left:
        raise CalibrationError(f"{path}: no pairs; list at least one pair of duplicate keys.")
    images = dict(zip(rows.column("key").to_pylist(), run_images(run_dir, rows), strict=True))
    return [images[k] for k in left], [images[k] for k in right], keys


def _read_pairs(path: str) -> pa.Table:
    """The pairs file as a table of string columns; a missing file or a file without a pair of key columns is an error."""
    if not storage.isfile(path):
        raise NotFound(f"--duplicates {path}: no such file (a CSV or Parquet of duplicate key pairs).")
    strings = {c: pa.string() for pair in PAIR_COLUMNS for c in pair}
    fsys, inner = storage.arrow_fs(path)
    if path.endswith(".parquet"):
        table = pq.read_table(inner, filesystem=fsys)
        table = table.cast(pa.schema([(f.name, strings.get(f.name, f.type)) for f in table.schema]))
    else:
        with fsys.open_input_stream(inner) as f:
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=strings))
    if not any(x in table.column_names and y in table.column_names for x, y in PAIR_COLUMNS):
        raise CalibrationError(
            f"--duplicates {path}: columns {table.column_names}; name the two keys of each pair key_a,key_b "
            "(or key,dup_of as in RUN/decisions)."
        )
    return table


def distinct_images(path: str, n: int, seed: int) -> list[bytes]:
    """Up to ``n`` (seeded) known-distinct images: image files under a folder, or the images of WebDataset tars
    (a folder of .tar, a tar, a glob or a brace pattern)."""
    from curate.acquire.existing import webdataset_tars

    files = _image_files(path) if storage.isdir(path) else []
    if storage.isdir(path) and not files and not any(p.endswith(".tar") for p in storage.entries(path)):
        raise CalibrationError(f"--distinct {path}: no image files ({' '.join(IMAGE_SUFFIXES)}) and no .tar in it.")
    if files:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))
        return [_read_bytes(files[i]) for i in chosen]
    images = [blob for tar in webdataset_tars(path) for blob in _tar_images(tar).column("image").to_pylist()]
    if not images:
        raise CalibrationError(f"--distinct {path}: no images (.jpg .png .webp ...) in it or in its tars.")
    rng = np.random.default_rng(seed)
    return [images[i] for i in sorted(rng.choice(len(images), size=min(n, len(images)), replace=False))]


def _image_files(folder: str) -> list[str]:
    """Image files anywhere under ``folder``, sorted, as paths or URLs like ``folder``."""
    fs, inner = storage.fs_path(folder)
    found = sorted(p for p in fs.find(inner) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    return found if storage.is_local(folder) else [fs.unstrip_protocol(p) for p in found]


def _read_bytes(url: str) -> bytes:
    fs, inner = storage.fs_path(url)
    return fs.cat_file(inner)
