"""Concepts of a vocabulary found in a text column as whole words (MetaCLIP substring matching)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.concepts import cached_automaton, load_vocabulary, match
from curate.stage import Stage, StageConfig, append_columns


class ConceptsConfig(StageConfig):
    vocabulary: str | None = Field(
        None,
        description="Concept vocabulary: a text file (one entry per line, '#' comment lines) or a "
        "Parquet file with a 'concept' column (a 'weight' column is ignored here). Unset: WordNet "
        "3.0 noun lemmas from /usr/share/wordnet (Debian wordnet-base), else the ImageNet-21k "
        "lemmas shipped in timm. A concept's id is its index in the de-duplicated, lower-cased list.",
    )
    column: str = Field(
        "caption",
        description="Text column to match; matching is case-insensitive and whole-word.",
    )


class ConceptMatch(Stage):
    """Sorted ids of the vocabulary concepts in each text, and their count; [] / 0 for a null text."""

    name = "concepts"
    Config = ConceptsConfig
    reads = ("caption",)
    writes = {"concept_ids": pa.list_(pa.int32()), "concept_count": pa.int32()}
    uses_actors = False  # the cached automaton loads in well under a second; tasks let Ray fuse
    transient = ("_automaton",)  # a (large) automaton is loaded per worker, never pickled

    def __init__(self, config: ConceptsConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.reads = (self.config.column,)  # the configured column, shadowing the class default
        self._automaton = None

    def check(self) -> None:
        load_vocabulary(self.config.vocabulary)

    def setup(self) -> None:
        self._automaton, _ = cached_automaton(self.config.vocabulary)

    def process(self, batch: pa.Table) -> pa.Table:
        if self._automaton is None:
            raise RuntimeError("ConceptMatch.process() called before setup(); call the stage itself")
        ids = [
            [] if text is None else match(self._automaton, text)
            for text in batch.column(self.config.column).to_pylist()
        ]
        counts = [len(i) for i in ids]
        return append_columns(batch, {"concept_ids": ids, "concept_count": counts}, self.writes)
