"""The registry of output formats: the recipe's ``emit.formats`` names them (plus ``emit.llava: true``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.emit.base import Writer
from curate.emit.llava import LlavaFormat
from curate.emit.parquet import MetadataFormat
from curate.emit.webdataset import WebDatasetFormat

if TYPE_CHECKING:
    from curate.emit.shards import EmitConfig

FORMATS: dict[str, type[Writer]] = {
    "webdataset": WebDatasetFormat,
    "parquet": MetadataFormat,
    "llava": LlavaFormat,
}
"""Format name → writer class. A new format: a :class:`curate.emit.base.Writer` subclass and one line here."""


def selected(cfg: EmitConfig) -> list[type[Writer]]:
    """The writer classes of ``cfg.formats``, with ``llava`` added when ``cfg.llava`` is set."""
    names = list(dict.fromkeys([*cfg.formats, *(["llava"] if cfg.llava else [])]))
    return [FORMATS[name] for name in names]
