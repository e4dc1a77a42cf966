"""Acquire: download URL shards into ``RUN/raw/`` in img2dataset's layout, through ``curate.acquire.fetch``.

One shard is one call of :func:`download_shard`, a plain picklable function any distributor
can run (``curate.runtime`` runs it as a Ray task). Each shard downloads into a private
temporary folder and is moved into ``raw/`` with its ``_stats.json`` last, so a shard in
``raw/`` is always complete and a re-run skips it.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate import storage
from curate.acquire.fetch import MAX_ERROR_CHARS, AddressPolicy, FetchConfig, FetchError, fetch, user_agent

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks online at import


class AcquireConfig(BaseModel):
    """How URLs are downloaded: img2dataset's shard layout with curate's hardened fetch (``curate.acquire.fetch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(10_000, gt=0, description="URLs per download shard (one task).")
    threads: int = Field(64, gt=0, description="Download threads inside one shard task.")
    timeout: float = Field(
        20.0,
        gt=0,
        allow_inf_nan=False,
        description="Wall-clock seconds one URL may take, all redirect hops, headers and body together "
        "(download_timeout after that). Must be finite.",
    )
    max_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest body accepted, in bytes (too_large_download beyond)."
    )
    allow_private_addresses: bool | list[str] = Field(
        False,
        description="False: only public addresses are fetched (loopback, private, link-local, multicast, "
        "reserved and shared ones end as blocked_address, checked after DNS and on every redirect). "
        "True: any address. A list of CIDRs (e.g. ['127.0.0.0/8']): those too, everything else private "
        "stays blocked.",
    )
    max_redirects: int = Field(5, ge=0, description="Redirect hops followed per URL (download_error beyond).")
    max_per_domain: int | None = Field(
        None, gt=0, description="Most concurrent requests to one host name inside a shard task (None: no limit)."
    )
    retries: int = Field(0, ge=0, description="Extra attempts for a download that failed or timed out.")
    max_side: int | None = Field(
        None,
        gt=0,
        description="Downscale images whose longer side exceeds this (never upscale or pad). "
        "None keeps the original bytes untouched, so signals see the image as served.",
    )
    contact_url: str | None = Field(
        None, description="URL named in the User-Agent ('curate/VERSION (+URL; TOKEN)') so site owners can reach you."
    )
    user_agent_token: str | None = Field(
        None, description="Token added to the User-Agent; X-Robots-Tag directives scoped to it apply too."
    )
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that refuse a download (robots_disallowed).",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per shard task.")

    @field_validator("allow_private_addresses")
    @classmethod
    def _cidrs(cls, value: bool | list[str]) -> bool | list[str]:
        if not isinstance(value, bool):
            for cidr in value:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ValueError(f"{cidr!r} is not an IP network such as 127.0.0.0/8") from None
        return value

    def fetch_config(self) -> FetchConfig:
        """The :class:`curate.acquire.fetch.FetchConfig` these settings describe."""
        token = None if self.user_agent_token is None else self.user_agent_token.strip().lower()
        return FetchConfig(
            deadline_s=self.timeout,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            addresses=AddressPolicy.from_setting(self.allow_private_addresses),
            user_agent=user_agent(self.contact_url, self.user_agent_token),
            user_agent_token=token,
            disallowed_directives=frozenset(d.strip().lower() for d in self.disallowed_header_directives),
        )


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

    def keys(self, start: int = 0, stop: int | None = None) -> pa.StringArray:
        """img2dataset's key of input rows ``start`` to ``stop`` (all by default), in row order.

        Computed in Arrow (no Python object per row): row i is shard ``i // per``, sample ``i % per``.
        """
        rows = np.arange(start, self.n_rows if stop is None else stop, dtype=np.int64)
        per, scale = self.samples_per_shard, 10**self.sample_digits
        numbers = pa.array((rows // per) * scale + rows % per).cast(pa.string())
        return pc.utf8_lpad(numbers, width=self.shard_digits + self.sample_digits, padding="0")


def is_fetchable(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a URL is http(s); everything else (file://, ftp, empty, null) is never requested."""
    return pc.fill_null(pc.match_substring_regex(urls, r"^(?i)https?://\S+$"), False)


def complete_shards(raw_dir: str | Path) -> set[str]:
    """Names of shards whose download finished (their ``_stats.json`` is present)."""
    return {storage.name(p)[: -len("_stats.json")] for p in storage.files(raw_dir, "_stats.json")}


BLOCKED_COLUMN = "curate_blocked_url"
"""Optional boolean column of a shard's rows: True rows are on the url_filter blocklist, never requested."""

RETRIED = ("download_error", "download_timeout")
"""Failure codes worth another attempt; policy refusals and oversize bodies are final."""


def download_shard(shard_id: int, rows: pa.Table, raw_dir: str, layout: ShardLayout, cfg: AcquireConfig) -> dict:
    """Download one shard of ``rows`` (columns ``url``, ``caption``, extras) into ``raw_dir``.

    Writes img2dataset's layout (``NAME.tar``, ``NAME.parquet`` with an extra ``error_code`` column,
    ``NAME_stats.json``) with its writer and resizer; every URL goes through :func:`curate.fetch.fetch`.
    Returns the shard's stats. Safe to call again after a crash.
    """
    name = layout.shard_name(shard_id)
    local = storage.is_local(raw_dir)  # on object storage: download to local scratch, then upload
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=storage.local_path(raw_dir) if local else None) as tmp:
        _download_into(tmp, shard_id, rows, layout, cfg)
        for suffix in (".tar", ".parquet", "_stats.json"):  # stats last: it marks completion
            if local:
                shutil.move(f"{tmp}/{name}{suffix}", f"{storage.local_path(raw_dir)}/{name}{suffix}")
            else:
                storage.upload(f"{tmp}/{name}{suffix}", f"{raw_dir}/{name}{suffix}")
    return storage.read_json(f"{raw_dir}/{name}_stats.json")


FINAL_ERRORS = re.compile(
    r"^(HTTP (Error )?4(?!08|25|29)\d\d\b|not an http\(s\) URL|redirect loop|more than \d+ redirects)"
)
"""``download_error`` messages another attempt would not change: client errors (4xx except 408, 425 and
429), URLs that are not http(s), and redirect loops. 5xx, refused connections and DNS failures are retried."""


def retryable_keys(parquet: str | Path, reasons: Collection[str]) -> list[str]:
    """Keys of a raw shard's rows whose download failed with one of ``reasons`` and might succeed again.

    Shards written before ``error_code`` existed count every failed download as ``download_error``.
    """
    with fsspec.open(str(parquet), "rb") as f:
        table = pq.read_table(f)
    codes = table.column("error_code") if "error_code" in table.column_names else pa.nulls(len(table), pa.string())
    keys = []
    for key, status, message, code in zip(
        *(table.column(c).to_pylist() for c in ("key", "status", "error_message")), codes.to_pylist(), strict=True
    ):
        code = code or "download_error"
        final = code == "download_error" and FINAL_ERRORS.match(message or "")
        if status == "failed_to_download" and code in reasons and not final:
            keys.append(key)
    return keys


def retry_shard(
    shard_id: int,
    rows: pa.Table,
    only: Collection[int],
    raw_dir: str,
    layout: ShardLayout,
    cfg: AcquireConfig,
    invalidate: Collection[str] = (),
) -> dict:
    """Download rows ``only`` (indices into ``rows``, the shard's rows as for :func:`download_shard`) of a
    complete shard again, and commit a new version of it: its images plus the recovered ones, the retried
    rows' records replaced, the stats recounted. When no retried row's outcome changed, nothing is written;
    else the files ``invalidate`` (what was computed from the old version) are removed first.

    The tar is replaced first, then the Parquet, then the stats, so a crash at any point leaves a readable
    shard (an image whose record still says failed is downloaded again by the next retry). Returns counts:
    ``retried``, ``recovered`` (now success), ``still_failing`` (failed to download again) and ``changed``
    (rows whose status or reason changed).
    """
    name = layout.shard_name(shard_id)
    with fsspec.open(f"{raw_dir}/{name}.parquet", "rb") as f:
        old = pq.read_table(f)
    scratch = storage.local_path(raw_dir) if storage.is_local(raw_dir) else None  # else local scratch, then upload
    with tempfile.TemporaryDirectory(prefix=f".{name}-retry-", dir=scratch) as tmp:
        _download_into(tmp, shard_id, rows, layout, cfg, only=set(only))
        new = pq.read_table(f"{tmp}/{name}.parquet")
        before, after = _outcomes(old), _outcomes(new)
        changed = sum(before.get(key) != outcome for key, outcome in after.items())
        if changed:
            for path in invalidate:
                storage.rm(path)
            _commit_retry(raw_dir, name, tmp, old, new)
    status = new.column("status").to_pylist()
    recovered, failing = status.count("success"), status.count("failed_to_download")
    return {"retried": len(new), "recovered": recovered, "still_failing": failing, "changed": changed}


def _outcomes(table: pa.Table) -> dict[str, tuple[str, str | None]]:
    """Each row's (status, reason code) by key, as ``curate.acquire.raw`` reads them."""
    codes = table.column("error_code") if "error_code" in table.column_names else pa.nulls(len(table), pa.string())
    return {
        key: (status, (code or "download_error") if status == "failed_to_download" else None)
        for key, status, code in zip(
            table.column("key").to_pylist(), table.column("status").to_pylist(), codes.to_pylist(), strict=True
        )
    }


def _commit_retry(raw_dir: str, name: str, tmp: str, old: pa.Table, new: pa.Table) -> None:
    """Replace shard ``name`` in ``raw_dir`` with its old records and images merged with the retried ones
    (downloaded into ``tmp``): tar, then Parquet, then stats, each moved into place whole."""
    retried = new.column("key").combine_chunks()
    _merge_tar(f"{raw_dir}/{name}.tar", f"{tmp}/{name}.tar", set(retried.to_pylist()), f"{tmp}/merged.tar")
    kept = old.filter(pc.invert(pc.is_in(old.column("key"), retried)))
    merged = pa.concat_tables([kept, new], promote_options="default").sort_by("key")  # old shards lack error_code
    pq.write_table(merged, f"{tmp}/merged.parquet")
    stats = _recount(storage.read_json(f"{raw_dir}/{name}_stats.json"), merged, len(new))
    Path(f"{tmp}/merged_stats.json").write_text(json.dumps(stats, indent=4))
    for suffix in (".tar", ".parquet", "_stats.json"):
        if storage.is_local(raw_dir):
            os.replace(f"{tmp}/merged{suffix}", f"{storage.local_path(raw_dir)}/{name}{suffix}")
        else:
            storage.upload(f"{tmp}/merged{suffix}", f"{raw_dir}/{name}{suffix}")


def _merge_tar(old: str, new: str, replaced: set[str], out: str) -> None:
    """Write ``out``: the members of ``old`` except those of keys in ``replaced``, then every member of ``new``."""
    with tarfile.open(out, "w") as dst:
        for path, skip in ((old, replaced), (new, set())):
            with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as src:
                for member in src:
                    if member.name.rpartition(".")[0] not in skip:
                        dst.addfile(member, src.extractfile(member) if member.isfile() else None)


def _recount(stats: dict, table: pa.Table, retried: int) -> dict:
    """img2dataset's shard stats for ``table`` (the shard's records after a retry)."""
    status = Counter(table.column("status").to_pylist())
    messages = Counter(m or "success" for m in table.column("error_message").to_pylist())
    return stats | {
        "count": len(table),
        "successes": status["success"],
        "failed_to_download": status["failed_to_download"],
        "failed_to_resize": status["failed_to_resize"],
        "status_dict": dict(messages),
        "retried_rows": stats.get("retried_rows", 0) + retried,
        "retry_end_time": time.time(),
    }


def _download_into(
    folder: str,
    shard_id: int,
    rows: pa.Table,
    layout: ShardLayout,
    cfg: AcquireConfig,
    only: Collection[int] | None = None,
) -> None:
    """img2dataset's shard loop (bounded thread pool, writer, resizer, stats) over curate's fetch.

    ``only``: the row indices to download (all when None); keys always come from a row's index in ``rows``.
    """
    from img2dataset.downloader import compute_key
    from img2dataset.logger import CappedCounter, write_stats
    from img2dataset.writer import WebDatasetSampleWriter

    start = time.time()
    blocked = rows.column(BLOCKED_COLUMN).to_pylist() if BLOCKED_COLUMN in rows.column_names else None
    rows = rows.drop_columns([BLOCKED_COLUMN]) if blocked is not None else rows
    columns = rows.column_names
    schema = rows.schema
    for col, typ in META_FIELDS:
        schema = schema.append(pa.field(col, typ))
    samples = rows.to_pylist()
    jobs = [(i, r["url"], bool(blocked and blocked[i])) for i, r in enumerate(samples) if only is None or i in only]
    writer = WebDatasetSampleWriter(shard_id, folder, True, layout.shard_digits, schema, "jpg")
    resizer, fetch_cfg = _resizer(cfg), cfg.fetch_config()
    limiter = DomainLimiter(cfg.max_per_domain)
    counts, errors = {"success": 0, "failed_to_download": 0, "failed_to_resize": 0}, CappedCounter()
    in_flight = threading.Semaphore(cfg.threads * 2)  # bounds bodies waiting for the resizer

    def gated():
        for job in jobs:
            in_flight.acquire()
            yield job

    def work(job: tuple[int, str, bool]) -> tuple[int, bytes | None, str | None, str | None]:
        i, url, is_blocked = job
        if is_blocked:
            return i, None, "blocked_url", "URL on the url_filter blocklist; not requested"
        return (i, *_fetch_with_retries(url, fetch_cfg, cfg.retries, limiter))

    digits = layout.sample_digits  # as ShardLayout.keys (img2dataset's, except it gives 0 digits for 1 per shard)
    with ThreadPool(cfg.threads) as pool:
        for i, body, code, message in pool.imap_unordered(work, gated()):
            try:
                key = compute_key(i, shard_id, digits, layout.shard_digits)
                meta = {c: samples[i][c] for c in columns} | {f: None for f, _ in META_FIELDS} | {"key": key}
                status = _store(writer, resizer, key, samples[i].get("caption"), meta, body, code, message)
                counts[status] += 1
                errors.increment(meta["error_message"] or "success")
            finally:
                in_flight.release()
    writer.close()
    write_stats(
        folder,
        shard_id,
        len(jobs),
        counts["success"],
        counts["failed_to_download"],
        counts["failed_to_resize"],
        start,
        time.time(),
        errors,
        layout.shard_digits,
    )


META_FIELDS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("error_code", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
]
"""img2dataset's per-sample metadata, plus ``error_code``: the reason code of a failed download."""


def _store(writer, resizer, key: str, caption, meta: dict, body: bytes | None, code: str | None, message) -> str:
    """Write one sample (image or failure record); returns its img2dataset status."""
    if body is None:
        meta.update(status="failed_to_download", error_message=message, error_code=code)
        writer.write(None, key, caption, meta)
        return "failed_to_download"
    img, width, height, original_width, original_height, err = resizer(io.BytesIO(body))
    if err is not None:
        meta.update(status="failed_to_resize", error_message=str(err)[:MAX_ERROR_CHARS])
        writer.write(None, key, caption, meta)
        return "failed_to_resize"
    meta.update(status="success", width=width, height=height)
    meta.update(original_width=original_width, original_height=original_height)
    writer.write(img, key, caption, meta)
    return "success"


def _fetch_with_retries(url: str, cfg: FetchConfig, retries: int, limiter: DomainLimiter):
    """(body, None, None) or (None, reason code, bounded message) after up to ``retries`` more attempts."""
    for _ in range(retries + 1):
        try:
            with limiter.slot(url):
                return fetch(url, cfg), None, None
        except FetchError as err:
            code, message = err.code, err.message
            if code not in RETRIED:
                break
    return None, code, message


class DomainLimiter:
    """At most ``limit`` concurrent fetches per URL host name (no limit when None)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def slot(self, url: str) -> Iterator[None]:
        """Hold one of the host's slots while the body of the ``with`` runs."""
        if self._limit is None:
            yield
            return
        host = (urlsplit(url).hostname or "").lower()
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self._limit))
        with sem:
            yield


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
