"""The writer contract: one class per output format, made once per emitted shard.

In each shard's task, emit calls ``open`` → ``write`` for every sample → ``close`` (a small summary);
once every shard is written, ``finish`` combines the per-shard outputs (e.g. ``sizes.json``). A writer
owns one folder of the run (``folder``); emit builds it under a temporary directory and commits it.
A new format is a subclass in its own module plus one line in :data:`curate.emit.formats.FORMATS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from curate import storage

if TYPE_CHECKING:
    from curate.emit.shards import EmitConfig


@dataclass(frozen=True)
class Sample:
    """One kept sample as writers see it."""

    key: str
    jpeg: bytes
    """The image as JPEG (bytes copied from ``raw/``, or re-encoded when the source was not JPEG); empty
    when no selected format reads images (:attr:`Writer.images`)."""
    caption: str
    """The caption to train on (:func:`curate.emit.shards.final_caption`)."""
    meta: dict[str, Any]
    """The metadata row: every sample column (Parquet types) with ``caption``, ``caption_alt``, ``caption_source``."""


class Writer:
    """Base of an output format: paths, naming, and the per-shard protocol (no-ops by default)."""

    name: ClassVar[str]
    """The format's name in the recipe's ``emit.formats``."""
    folder: ClassVar[str]
    """The folder of ``RUN/`` the format writes (committed as a whole, replacing the previous one)."""
    images: ClassVar[bool] = True
    """Whether the format reads :attr:`Sample.jpeg` (when no selected format does, no image is read)."""

    def __init__(self, out_dir: str, cfg: EmitConfig) -> None:
        self.out_dir = out_dir
        self.cfg = cfg
        self.shard = ""
        self.schema = pa.schema([])

    @classmethod
    def root(cls, out_dir: str) -> str:
        """The format's folder inside emit's temporary directory ``out_dir``."""
        return f"{out_dir}/{cls.folder}"

    @classmethod
    def scratch(cls, out_dir: str) -> str:
        """Where per-shard parts live until :meth:`finish` combines them (never committed)."""
        return f"{out_dir}/parts/{cls.name}"

    def path(self, suffix: str) -> str:
        """The current shard's file in the format's folder, e.g. ``shards/00003.tar``."""
        return f"{self.root(self.out_dir)}/{self.shard}{suffix}"

    def open(self, shard: str, schema: pa.Schema) -> None:
        """Start shard ``shard``; ``schema`` is that of :attr:`Sample.meta`."""
        self.shard, self.schema = shard, schema

    def write(self, sample: Sample) -> None:
        """Add one sample to the open shard."""
        raise NotImplementedError

    def close(self) -> dict:
        """Finish the open shard; return a JSON-able summary handed to :meth:`finish`."""
        return {}

    def abort(self) -> None:
        """Drop the open shard after a failure (its atomic files are not committed)."""

    @classmethod
    def finish(cls, out_dir: str, cfg: EmitConfig, summaries: list[dict]) -> dict:
        """Combine the shards' outputs (``summaries`` in shard order); return what the manifest records."""
        storage.makedirs(cls.root(out_dir))
        return {}

    @classmethod
    def wrote(cls, record: dict) -> bool:
        """Whether the emit recorded as ``record`` (the manifest's) wrote this format's folder."""
        return cls.name in record.get("formats", ())
