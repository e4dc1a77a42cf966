"""Caption signals computed from the text alone."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.stage import Stage


class CaptionSignals(Stage):
    """Character and word counts of the caption (null caption counts as empty)."""

    name = "caption"
    reads = ("caption",)
    writes = {"caption_chars": pa.int32(), "caption_words": pa.int32()}

    def process(self, batch: pa.Table) -> pa.Table:
        text = pc.utf8_trim_whitespace(pc.fill_null(batch.column("caption"), ""))
        chars = pc.cast(pc.utf8_length(text), pa.int32())
        words = pc.list_value_length(pc.utf8_split_whitespace(text))  # "" splits into [""]
        words = pc.cast(pc.if_else(pc.equal(chars, 0), 0, words), pa.int32())
        return batch.append_column("caption_chars", chars).append_column("caption_words", words)
