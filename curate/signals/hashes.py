"""Content hashes of the image bytes (exact-duplicate detection)."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from curate.stage import Stage, append_columns


class Hashes(Stage):
    """sha256 of the image bytes exactly as downloaded."""

    name = "hashes"
    reads = ("image",)
    writes = {"sha256": pa.string()}

    def process(self, batch: pa.Table) -> pa.Table:
        digests = [
            None if data is None else hashlib.sha256(data).hexdigest() for data in batch.column("image").to_pylist()
        ]
        return append_columns(batch, {"sha256": digests}, self.writes)
