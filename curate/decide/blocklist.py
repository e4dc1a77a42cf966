"""Policy ``blocklist``: reject images whose bytes (sha256) or picture (pHash) are on a list of known-bad hashes.

Re-LAION-5B removed links whose images matched partners' lists of known-bad image hashes; this is that step,
for any list the recipe names. The list is read once per decide, never copied into any output; its sha256 and
entry counts go to the manifest (the decide step's ``policies.blocklist``) so a run says which list it was checked against.

List formats (a local path or any fsspec URL: ``s3://``, ``https://``):

- text: one hash per line; blank lines and ``#`` comments are skipped. ``sha256:HEX`` / ``phash:HEX``, or a
  bare hex string: 64 digits is a sha256, 16 digits a pHash (the 64-bit value curate stores in
  ``samples.phash``, as ``printf('%016x', phash)`` prints it);
- Parquet: a ``sha256`` column (hex strings) and/or a ``phash`` column (unsigned or signed 64-bit integers,
  or 16-digit hex strings).

Matching runs inside DuckDB, out of core: sha256 by an equality join; pHash within ``k`` bits by the
pigeonhole rule (cut the 64 bits into k + 1 bands: two hashes within k bits agree exactly on at least one
band), one equality join per band, each candidate verified with ``bit_count(xor(a, b)) <= k``. The pool
side streams; the list side (about 100 bytes an entry) is held in memory.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curate import storage
from curate.decide.base import DecideDB, Policy, PolicyConfig
from curate.errors import UserError

_HEX = re.compile(r"^[0-9a-f]+$")


class BlocklistError(UserError):
    """The blocklist cannot be read or holds an entry that is not a hash."""


class BlocklistConfig(PolicyConfig):
    path: str = Field(
        ..., description="The list: a text file (one sha256 or pHash per line) or Parquet, local or an fsspec URL."
    )
    k: int = Field(
        4,
        ge=0,
        le=16,
        description="pHash bits within which a pool image matches a listed pHash (0: equal hashes only). "
        "4 catches JPEG re-encodes and resizes (benchmarks/dedup.py --calibrate: p99 2, max 4 bits) and stays "
        "10 bits inside the closest pair of distinct images measured (14).",
    )
    match: list[Literal["sha256", "phash"]] = Field(
        default_factory=lambda: ["sha256", "phash"],
        min_length=1,
        description="Which hashes to match: sha256 needs the hashes stage, phash the image stage.",
    )


class Blocklist(Policy):
    """Reject images on a hash blocklist: sha256 exactly, pHash within ``k`` bits (reason ``blocklisted``)."""

    name = "blocklist"
    Config = BlocklistConfig
    reasons = ("blocklisted",)

    @property
    def reads(self) -> tuple[str, ...]:  # type: ignore[override]
        """The samples columns the configured ``match`` needs."""
        return tuple(self.config.match)

    def apply(self, db: DecideDB) -> None:
        sha256, phash, digest = read_blocklist(self.config.path)
        c = self.config
        if "sha256" in c.match and len(sha256):
            db.con.register("_block_sha256", pa.table({"sha256": sha256}))
            db.reject_query(
                "SELECT s.key, NULL::VARCHAR AS dup_of FROM samples s JOIN _block_sha256 b ON lower(s.sha256) = b.sha256",
                "blocklisted",
                self.name,
            )
            db.con.unregister("_block_sha256")
        if "phash" in c.match and len(phash):
            db.con.register("_block_phash", _banded(phash, c.k))
            db.reject_query(_phash_query(c.k), "blocklisted", self.name, {"k": c.k})
            db.con.unregister("_block_phash")
        entry = {"sha256": digest, "sha256_entries": len(sha256), "phash_entries": len(phash), "k": c.k}
        db.info.setdefault(self.name, []).append(entry)


def bands(k: int) -> list[tuple[int, int]]:
    """``k + 1`` contiguous (shift, bits) bands covering 64 bits: within k bits, some band agrees exactly."""
    widths = [64 // (k + 1) + (i < 64 % (k + 1)) for i in range(k + 1)]
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(shifts, widths, strict=True))


def _band_values(phash: np.ndarray, shift: int, bits: int) -> np.ndarray:
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    return (phash >> np.uint64(shift)) & mask


def _banded(phash: np.ndarray, k: int) -> pa.Table:
    """The listed pHashes with one column per band (``band0`` ...), for the equality joins."""
    columns = {"phash": pa.array(phash, pa.uint64())}
    for i, (shift, bits) in enumerate(bands(k)):
        columns[f"band{i}"] = pa.array(_band_values(phash, shift, bits), pa.uint64())
    return pa.table(columns)


def _phash_query(k: int) -> str:
    """Keys of samples whose pHash is within ``$k`` bits of a listed one: one band join per band, verified."""
    joins = []
    for i, (shift, bits) in enumerate(bands(k)):
        mask = (1 << bits) - 1
        band = "s.phash" if bits == 64 else f"((s.phash >> {shift}) & {mask}::UBIGINT)"
        joins.append(
            f"SELECT s.key FROM samples s JOIN _block_phash b ON {band} = b.band{i} "
            "WHERE bit_count(xor(s.phash, b.phash)) <= $k"
        )
    return f"SELECT DISTINCT key, NULL::VARCHAR AS dup_of FROM ({' UNION ALL '.join(joins)})"


def read_blocklist(path: str) -> tuple[list[str], np.ndarray, str]:
    """(sha256 hex strings, uint64 pHashes, sha256 of the list file's bytes) of a text or Parquet list."""
    fs, fpath = storage.fs_path(path)
    if not fs.exists(fpath):
        raise BlocklistError(f"blocklist {path}: no such file. Give decide.blocklist.path a text or Parquet list.")
    with fs.open(fpath, "rb") as f:  # read once: the digest is of the very bytes parsed (a URL may change)
        data = f.read()
    if path.endswith(".parquet"):
        sha256, phash = _from_parquet(pq.read_table(io.BytesIO(data)), path)
    else:
        sha256, phash = _from_text(data.decode("utf-8").splitlines(), path)
    return sha256, np.array(phash, dtype=np.uint64), hashlib.sha256(data).hexdigest()


def _from_parquet(table: pa.Table, path: str) -> tuple[list[str], list[int]]:
    if "sha256" not in table.column_names and "phash" not in table.column_names:
        raise BlocklistError(f"blocklist {path}: needs a 'sha256' and/or a 'phash' column, has {table.column_names}")
    sha256 = [_sha256(v, path, i) for i, v in enumerate(_column(table, "sha256")) if v is not None]
    phash = [_phash(v, path, i) for i, v in enumerate(_column(table, "phash")) if v is not None]
    return sha256, phash


def _column(table: pa.Table, name: str) -> list:
    if name not in table.column_names:
        return []
    column = table.column(name)
    if pa.types.is_signed_integer(column.type):  # int64 pHashes: the same 64 bits
        return [None if v is None else v % 2**64 for v in column.to_pylist()]
    return column.to_pylist()


def _from_text(lines, path: str) -> tuple[list[str], list[int]]:
    sha256: list[str] = []
    phash: list[int] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        kind, _, value = line.rpartition(":")
        kind = kind or ("sha256" if len(value) == 64 else "phash" if len(value) == 16 else "")
        if kind == "sha256":
            sha256.append(_sha256(value, path, number))
        elif kind == "phash":
            phash.append(_phash(value, path, number))
        else:
            raise BlocklistError(
                f"blocklist {path}, line {number}: {raw.strip()!r} is not a hash. "
                "Write a 64-digit sha256 or a 16-digit pHash in hex, optionally prefixed 'sha256:' or 'phash:'."
            )
    return sha256, phash


def _sha256(value: str, path: str, where: int) -> str:
    value = str(value).strip().lower()
    if len(value) != 64 or not _HEX.match(value):
        raise BlocklistError(f"blocklist {path}, entry {where}: {value!r} is not a sha256 (64 hex digits)")
    return value


def _phash(value: int | str, path: str, where: int) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if len(text) != 16 or not _HEX.match(text):
        raise BlocklistError(f"blocklist {path}, entry {where}: {value!r} is not a pHash (16 hex digits)")
    return int(text, 16)
