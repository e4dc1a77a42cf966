"""Global deduplication policies over the whole run (every shard at once), and decontamination.

Every policy keeps one row per duplicate group, chosen by the same deterministic preference
(``prefer``: highest ``clip_score``, else most pixels, else smallest key; columns a run does not
have are skipped), and records ``dup_of`` (the kept key) on every row it removes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from curate import storage
from curate.decide.base import DecideDB, Policy, PolicyConfig, embedding_matrix
from curate.decide.neardup import DEFAULT_K  # pHash bits; the measurement behind it is there

VERIFY_COLOUR = 8.0  # NearDedupConfig.verify_colour's default: measured, see benchmarks/verify_dedup.py
PAIR_CHUNK = 65_536  # pairs verified at a time
ORDER = re.compile(r"^(?P<col>[a-z_][a-z0-9_]*) (?P<dir>asc|desc)$")


class DedupConfig(PolicyConfig):
    prefer: list[str] = Field(
        default_factory=lambda: ["clip_score desc", "pixels desc", "key asc"],
        description="Which member of a duplicate group is kept: 'column asc|desc' in priority order.",
    )

    @field_validator("prefer")
    @classmethod
    def _orders(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not ORDER.match(v)]
        if bad:
            raise ValueError(f"each entry is 'column asc' or 'column desc', got {bad}")
        return value


def preference(db: DecideDB, prefer: list[str]) -> str:
    """``prefer`` as a SQL ORDER BY list over ``s`` (a samples row), ending with the key (no ties)."""
    have = db.columns()
    order = [f's."{m["col"]}" {m["dir"].upper()} NULLS LAST' for m in map(ORDER.match, prefer) if m["col"] in have]
    return ", ".join([*order, "s.key"])


def ranked(db: DecideDB, columns: list[str], where: str, prefer: list[str]) -> pa.Table:
    """Still-kept rows matching ``where``: key, ``columns`` and ``rank`` (0 = most preferred)."""
    select = "".join(f', s."{c}"' for c in columns)
    return db.con.sql(
        f"""SELECT s.key{select}, (row_number() OVER (ORDER BY {preference(db, prefer)}) - 1)::BIGINT AS rank
            FROM kept s WHERE {where}"""
    ).to_arrow_table()


def reject_to_representatives(db: DecideDB, rows: pa.Table, rep: np.ndarray, reason: str, stage: str) -> None:
    """Reject every row whose representative is another row, with ``dup_of`` = that row's key."""
    idx = np.flatnonzero(rep != np.arange(len(rep)))
    keys = rows.column("key")
    dups = pa.table({"key": keys.take(pa.array(idx)), "dup_of": keys.take(pa.array(rep[idx]))})
    db.reject_keys(dups, reason, stage)


class ExactDedupConfig(DedupConfig):
    by: list[str] = Field(
        default_factory=lambda: ["sha256"],
        min_length=1,
        description="Columns whose equal values make duplicates: sha256 (same bytes, the default) "
        "or e.g. [url, caption] (LAION's URL + alt-text dedup).",
    )


class ExactDedup(Policy):
    """Rows with equal ``by`` values: keep the preferred one, reject the rest as dup_exact."""

    name = "exact_dedup"
    Config = ExactDedupConfig
    reasons = ("dup_exact",)

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self.config.by)

    def apply(self, db: DecideDB) -> None:
        """One window over the groups inside DuckDB (partitioned, spills to disk): no rows in Python."""
        by = ", ".join(f's."{c}"' for c in self.config.by)
        not_null = " AND ".join(f's."{c}" IS NOT NULL' for c in self.config.by)
        first = f"first_value(s.key) OVER (PARTITION BY {by} ORDER BY {preference(db, self.config.prefer)})"
        dups = f"""SELECT key, dup_of FROM (
                       SELECT s.key, {first} AS dup_of FROM kept s WHERE {not_null})
                   WHERE key <> dup_of"""
        db.reject_query(dups, "dup_exact", self.name)


class NearDedupConfig(DedupConfig):
    k: int = Field(
        DEFAULT_K, ge=0, le=32, description="Hamming distance (bits of 64) within which hashes are duplicates."
    )
    column: str = Field("phash", description="64-bit perceptual hash column (phash or dhash).")
    verify_colour: float | None = Field(
        VERIFY_COLOUR,
        ge=0,
        description="A hash pair counts only when the rows' colour signatures (the image stage's colour_sig) are "
        "within this curate.images.colour_distance (CIELAB ΔE); null: no check. Default "
        f"{VERIFY_COLOUR:g}, measured on real glyphs (benchmarks/verify_dedup.py): dup_near precision 0.455 -> "
        "0.998 at recall 0.819 -> 0.961 on quality-corpus images, 0.326 -> 0.805 at 0.575 -> 0.827 on clip-art. "
        "Rows without colour_sig (runs annotated before it existed) are not checked; the manifest counts them.",
    )
    verify_cosine: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="When RUN/embeddings has clip_image_emb for both rows, a hash pair also needs CLIP image cosine >= "
        "this; null (default): off (no pretrained CLIP ships offline to measure a default on).",
    )


class NearDedup(Policy):
    """Perceptual near-duplicates: hashes within ``k`` bits, found exactly by multi-index hashing, each
    pair confirmed by colour (and optionally CLIP cosine), grouped by connected components of the
    confirmed pairs (union-find), one row kept per group."""

    name = "near_dedup"
    Config = NearDedupConfig
    reasons = ("dup_near",)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.config.column,)  # colour_sig is optional: old runs decide without the check

    def apply(self, db: DecideDB) -> None:
        from curate.decide.neardup import all_row_pairs, components, near_pairs, representatives

        c = self.config
        rows = ranked(db, [c.column], f's."{c.column}" IS NOT NULL', c.prefer).sort_by("rank")
        hashes = rows.column(c.column).to_numpy().astype(np.uint64)
        pairs = near_pairs(hashes, c.k)
        if c.verify_colour is not None or c.verify_cosine is not None:
            pairs = all_row_pairs(hashes, pairs)  # a check that is not transitive needs the rows' own pairs
        info = {"k": c.k, "pairs": len(pairs)}
        if c.verify_colour is not None:
            pairs = _verify_colour(db, rows, pairs, c.verify_colour, info)
        if c.verify_cosine is not None:
            pairs = _verify_cosine(db, rows, pairs, c.verify_cosine, info)
        db.info[self.name] = {**info, "verified_pairs": len(pairs)}
        labels = components(len(rows), pairs)
        reject_to_representatives(db, rows, representatives(labels, np.arange(len(rows))), "dup_near", self.name)


def pair_keys(rows: pa.Table, pairs: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """The distinct rows that appear in ``pairs`` (sorted indices into ``rows``) and their keys."""
    used = np.unique(pairs)
    return used, rows.column("key").take(pa.array(used)).combine_chunks()


def _verify_colour(db: DecideDB, rows: pa.Table, pairs: np.ndarray, limit: float, info: dict) -> np.ndarray:
    """``pairs`` whose colour signatures are within ``limit``; pairs with a missing signature pass unchecked."""
    from curate.images import colour_distance

    used, keys = pair_keys(rows, pairs)
    sig = None
    if "colour_sig" in db.columns() and len(used):
        db.con.register("_pair_keys", pa.table({"key": keys, "_i": pa.array(np.arange(len(used)))}))
        found = db.con.sql(
            "SELECT p._i, s.colour_sig FROM _pair_keys p JOIN samples s USING (key) WHERE s.colour_sig IS NOT NULL"
        ).to_arrow_table()
        db.con.unregister("_pair_keys")
        sig = _rows_matrix(found, "colour_sig", len(used))
    return _check_pairs(pairs, used, sig, lambda a, b: colour_distance(a, b) <= limit, info, "colour")


def _verify_cosine(db: DecideDB, rows: pa.Table, pairs: np.ndarray, limit: float, info: dict) -> np.ndarray:
    """``pairs`` whose CLIP image cosine is >= ``limit``; pairs without both embeddings pass unchecked."""
    used, keys = pair_keys(rows, pairs)
    emb = None
    found = storage.files(str(db.embeddings_dir)) if db.embeddings_dir is not None else []
    if found and len(used):
        fsys, paths = storage.arrow_paths(found)
        data = pads.dataset(paths, filesystem=fsys, format="parquet")
        if "clip_image_emb" in data.schema.names:
            table = data.to_table(columns=["key", "clip_image_emb"], filter=pc.field("key").isin(keys))
            table = table.filter(pc.is_valid(table.column("clip_image_emb")))
            index = pc.index_in(table.column("key"), value_set=keys)
            emb = _rows_matrix(pa.table({"_i": index, "e": table.column("clip_image_emb")}), "e", len(used))
    return _check_pairs(pairs, used, emb, lambda a, b: _cosine(a, b) >= limit, info, "cosine")


def _rows_matrix(found: pa.Table, column: str, n: int) -> np.ndarray:
    """An (n, d) float32 matrix with row ``_i`` of ``found`` filled from ``column``, NaN where absent."""
    width = len(found.column(column)[0]) if len(found) else 1
    out = np.full((n, width), np.nan, np.float32)
    out[found.column("_i").to_numpy()] = embedding_matrix(found.column(column))
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _check_pairs(
    pairs: np.ndarray, used: np.ndarray, values: np.ndarray | None, ok, info: dict, what: str
) -> np.ndarray:
    """Keep the pairs that pass ``ok(values[i], values[j])`` (row-wise, chunked) or lack a value; count both."""
    if values is None:
        info[f"{what}_unchecked_pairs"] = len(pairs)
        return pairs
    local = np.searchsorted(used, pairs)
    checked = ~(np.isnan(values[local[:, 0], 0]) | np.isnan(values[local[:, 1], 0]))
    keep = ~checked
    for s in range(0, len(pairs), PAIR_CHUNK):
        part = np.flatnonzero(checked[s : s + PAIR_CHUNK]) + s
        keep[part] = ok(values[local[part, 0]], values[local[part, 1]])
    info[f"{what}_unchecked_pairs"] = int((~checked).sum())
    info[f"{what}_rejected_pairs"] = int((checked & ~keep).sum())
    return pairs[keep]


class SemanticDedupConfig(DedupConfig):
    eps: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="A row is a duplicate of a kept row when their cosine is > 1 - eps (each removed row is within "
        "eps of the very row kept for it: no chains).",
    )
    caption_veto: bool = Field(
        False,
        description="Never merge two rows whose captions (the caption column) name disjoint English colour words or "
        "numbers ('A red flag.' / 'A green flag.', '2 cats' / 'three cats'): CLIP image embeddings place such "
        "colour variants within eps.",
    )
    n_clusters: int | None = Field(None, ge=1, description="k-means clusters; null: sqrt(rows).")
    seed: int = Field(0, description="k-means seed.")
    column: str = Field("clip_image_emb", description="Embedding column in RUN/embeddings.")


class SemanticDedup(Policy):
    """SemDeDup: k-means over stored CLIP image embeddings, then per cluster each row within cosine 1 - eps of a
    better-ranked kept row is its duplicate (optionally unless the captions disagree)."""

    name = "semantic_dedup"
    Config = SemanticDedupConfig
    reasons = ("dup_semantic",)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.config.column,)

    def apply(self, db: DecideDB) -> None:
        from curate.decide.semantic import caption_keys, semantic_groups

        c = self.config
        rows = ranked(db, ["caption"] if c.caption_veto else [], "TRUE", c.prefer)
        rows, emb = _with_embeddings(rows, db.embeddings_dir, c.column)
        if len(rows) < 2:
            return
        n_clusters = c.n_clusters or max(1, int(len(rows) ** 0.5))
        keys = caption_keys(rows.column("caption").to_pylist()) if c.caption_veto else None
        rep = semantic_groups(emb, rows.column("rank").to_numpy(), n_clusters, c.eps, c.seed, caption_keys=keys)
        reject_to_representatives(db, rows, rep, "dup_semantic", self.name)


def _with_embeddings(rows: pa.Table, folder: Path | None, column: str) -> tuple[pa.Table, np.ndarray]:
    """``rows`` that have a non-null embedding (in the same order) and the (n, d) matrix."""
    found = storage.files(str(folder)) if folder is not None else []
    if not found:
        raise ValueError(f"semantic_dedup needs {column} in RUN/embeddings: add the clip stage to annotate")
    fsys, paths = storage.arrow_paths(found)
    table = pads.dataset(paths, filesystem=fsys, format="parquet").to_table(columns=["key", column])
    table = table.filter(pc.is_valid(table.column(column)))
    position = pa.table({"key": table.column("key"), "_row": pa.array(np.arange(len(table)))})
    joined = rows.join(position, "key").sort_by("rank")  # float16 lists cannot pass through a join
    emb = embedding_matrix(table.column(column).take(joined.column("_row")))
    return joined.drop_columns(["_row"]), emb


class DecontaminateConfig(PolicyConfig):
    eval_hashes: str | None = Field(
        None, description="Parquet of the evaluation set's hashes: a uint64 `phash` column (+ optional `id`)."
    )
    eval_images: str | None = Field(None, description="A folder of evaluation images (hashed here).")
    eval_shards: str | None = Field(None, description="Evaluation WebDataset shards: a folder, glob or {a..b} pattern.")
    k: int = Field(DEFAULT_K, ge=0, le=32, description="pHash bits within which a pool image matches.")


class Decontaminate(Policy):
    """Remove pool images that are near-duplicates (pHash within k bits) of evaluation images."""

    name = "decontaminate"
    Config = DecontaminateConfig
    reads = ("phash",)
    reasons = ("eval_contaminated",)

    def apply(self, db: DecideDB) -> None:
        from curate.decide.neardup import near_pairs

        c = self.config
        ids, eval_hashes = eval_set_hashes(c.eval_hashes, c.eval_images, c.eval_shards)
        rows = db.con.sql("SELECT key, phash FROM kept WHERE phash IS NOT NULL").to_arrow_table()
        pool_hashes = rows.column("phash").to_numpy().astype(np.uint64)
        pairs = near_pairs(np.concatenate([eval_hashes, pool_hashes]), self.config.k)
        n_eval = len(eval_hashes)
        cross = pairs[(pairs[:, 0] < n_eval) & (pairs[:, 1] >= n_eval)]
        # near_pairs links identical hashes as a star around their first row: extend each hit to
        # every pool row with the same hash, so no second copy of a contaminated image survives
        hit_hash = dict(zip(pool_hashes[cross[:, 1] - n_eval].tolist(), cross[:, 0].tolist(), strict=True))
        pool = np.flatnonzero(np.isin(pool_hashes, np.fromiter(hit_hash, np.uint64, len(hit_hash))))
        matches = [f"eval:{ids[hit_hash[int(h)]]}" for h in pool_hashes[pool]]
        hits = pa.table({"key": rows.column("key").take(pa.array(pool)), "dup_of": matches})
        db.reject_keys(hits, "eval_contaminated", self.name)


def eval_set_hashes(
    hashes_file: str | None, images_dir: str | None, shards: str | None = None
) -> tuple[list[str], np.ndarray]:
    """Identifiers and uint64 pHashes of an evaluation set: a Parquet of hashes, a folder, or shards."""
    if hashes_file:
        table = pq.read_table(hashes_file)
        ids = table.column("id").to_pylist() if "id" in table.column_names else list(map(str, range(len(table))))
        return [str(i) for i in ids], table.column("phash").to_numpy().astype(np.uint64)
    if images_dir:
        from curate.images import decode
        from curate.signals.image import perceptual_hashes

        paths = sorted(p for p in Path(images_dir).rglob("*") if p.is_file())
        hashes = [perceptual_hashes(decode(path), False)["phash"] for path in paths]
        return [p.name for p in paths], np.array(hashes, dtype=np.uint64)
    if shards:
        from curate.signals.image import perceptual_hashes
        from curate.train.data import expand_shards, iter_pairs

        pairs = [(key, perceptual_hashes(image, False)["phash"]) for key, image, _ in iter_pairs(expand_shards(shards))]
        return [key for key, _ in pairs], np.array([h for _, h in pairs], dtype=np.uint64)
    raise ValueError("decontaminate needs eval_hashes (Parquet), eval_images (a folder) or eval_shards")
