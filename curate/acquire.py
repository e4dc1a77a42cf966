"""Acquire: download URL shards with img2dataset's own Downloader into ``RUN/raw/``.

One shard is one call of :func:`download_shard`, a plain picklable function any distributor
can run (``curate.runtime`` runs it as a Ray task). Each shard downloads into a private
temporary folder and is moved into ``raw/`` with its ``_stats.json`` last, so a shard in
``raw/`` is always complete and a re-run skips it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
from pydantic import BaseModel, ConfigDict, Field

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks online at import


class AcquireConfig(BaseModel):
    """How URLs are downloaded (img2dataset's Downloader settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(10_000, gt=0, description="URLs per download shard (one task).")
    threads: int = Field(64, gt=0, description="Download threads inside one shard task.")
    timeout: float = Field(10.0, gt=0, description="Seconds before a request is abandoned.")
    retries: int = Field(0, ge=0, description="Extra attempts for a failed download.")
    max_side: int | None = Field(
        None,
        gt=0,
        description="Downscale images whose longer side exceeds this (never upscale or pad). "
        "None keeps the original bytes untouched, so signals see the image as served.",
    )
    user_agent_token: str | None = Field(None, description="Token added to the User-Agent.")
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that make a download count as refused.",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per shard task.")


@dataclass(frozen=True)
class ShardLayout:
    """Key and file naming shared by acquire and every later step."""

    n_rows: int
    samples_per_shard: int

    @property
    def n_shards(self) -> int:
        return max(1, math.ceil(self.n_rows / self.samples_per_shard))

    @property
    def shard_digits(self) -> int:
        return max(5, len(str(self.n_shards - 1)))

    @property
    def sample_digits(self) -> int:
        return max(1, math.ceil(math.log10(self.samples_per_shard)))

    def shard_name(self, shard_id: int) -> str:
        return f"{shard_id:0{self.shard_digits}d}"

    def keys(self) -> list[str]:
        """img2dataset's key of every input row, in row order."""
        width = self.shard_digits + self.sample_digits
        per, scale = self.samples_per_shard, 10**self.sample_digits
        return [f"{(i // per) * scale + i % per:0{width}d}" for i in range(self.n_rows)]


def is_fetchable(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a URL is http(s); everything else (file://, ftp, empty, null) is never requested."""
    return pc.fill_null(pc.match_substring_regex(urls, r"^(?i)https?://\S+$"), False)


def complete_shards(raw_dir: Path) -> set[str]:
    """Names of shards whose download finished (their ``_stats.json`` is present)."""
    return {p.name[: -len("_stats.json")] for p in raw_dir.glob("*_stats.json")}


def download_shard(shard_id: int, rows: pa.Table, raw_dir: str, layout: ShardLayout, cfg: AcquireConfig) -> dict:
    """Download one shard of ``rows`` (columns ``url``, ``caption``, extras) into ``raw_dir``.

    Returns img2dataset's stats for the shard. Safe to call again after a crash.
    """
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter

    name = layout.shard_name(shard_id)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=raw_dir) as tmp:
        feather.write_feather(rows, f"{tmp}/input.feather")
        downloader = Downloader(
            sample_writer_class=WebDatasetSampleWriter,
            resizer=_resizer(cfg),
            thread_count=cfg.threads,
            save_caption=True,
            extract_exif=False,
            output_folder=tmp,
            column_list=rows.column_names,
            timeout=cfg.timeout,
            number_sample_per_shard=layout.samples_per_shard,
            oom_shard_count=layout.shard_digits,
            compute_hash=None,
            verify_hash_type=None,
            encode_format="jpg",
            retries=cfg.retries,
            user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=cfg.disallowed_header_directives,
        )
        downloader.download_shard((shard_id, f"{tmp}/input.feather"))
        for suffix in (".tar", ".parquet", "_stats.json"):  # stats last: it marks completion
            shutil.move(f"{tmp}/{name}{suffix}", f"{raw_dir}/{name}{suffix}")
    return json.loads(Path(f"{raw_dir}/{name}_stats.json").read_text())


def _resizer(cfg: AcquireConfig):
    from img2dataset.resizer import Resizer

    if cfg.max_side is None:
        return Resizer(image_size=0, resize_mode="no", resize_only_if_bigger=False, disable_all_reencoding=True)
    return Resizer(
        image_size=cfg.max_side,
        resize_mode="keep_ratio_largest",
        resize_only_if_bigger=True,
        skip_reencode=True,
        encode_quality=95,
    )
