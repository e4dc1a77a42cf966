"""Parquet writers: :func:`write_parquet` (atomic) and the ``metadata/`` output format."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from curate.emit.base import Sample, Writer
from curate.io import AtomicFile


def write_parquet(path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically."""
    with AtomicFile(path) as f:
        pq.write_table(table, f)


class MetadataFormat(Writer):
    """``metadata/{shard}.parquet``: the metadata rows of a shard, with the tar they are in (``shard``)."""

    name = "parquet"
    folder = "metadata"
    images = False

    def open(self, shard: str, schema: pa.Schema) -> None:
        super().open(shard, schema)
        self._rows: list[dict] = []

    def write(self, sample: Sample) -> None:
        self._rows.append(sample.meta)

    def close(self) -> dict:
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        table = table.append_column("shard", pa.array([f"{self.shard}.tar"] * len(table), pa.string()))
        write_parquet(self.path(".parquet"), table)
        return {"rows": len(table)}
