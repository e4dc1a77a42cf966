"""Parquet writer for the metadata of emitted samples."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io import AtomicFile


def write_parquet(path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically."""
    with AtomicFile(path) as f:
        pq.write_table(table, f)
