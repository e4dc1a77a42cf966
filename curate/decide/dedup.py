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
    have = {row[0] for row in db.con.sql("DESCRIBE samples").fetchall()}
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


class NearDedup(Policy):
    """Perceptual near-duplicates: hashes within ``k`` bits, found exactly by multi-index hashing,
    grouped by connected components (union-find), one row kept per group."""

    name = "near_dedup"
    Config = NearDedupConfig
    reasons = ("dup_near",)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.config.column,)

    def apply(self, db: DecideDB) -> None:
        from curate.decide.neardup import components, near_pairs, representatives

        col = self.config.column
        rows = ranked(db, [col], f's."{col}" IS NOT NULL', self.config.prefer).sort_by("rank")
        hashes = rows.column(col).to_numpy().astype(np.uint64)
        labels = components(len(rows), near_pairs(hashes, self.config.k))
        reject_to_representatives(db, rows, representatives(labels, np.arange(len(rows))), "dup_near", self.name)


class SemanticDedupConfig(DedupConfig):
    eps: float = Field(0.05, ge=0.0, le=2.0, description="Rows with cosine > 1 - eps are duplicates.")
    n_clusters: int | None = Field(None, ge=1, description="k-means clusters; null: sqrt(rows).")
    seed: int = Field(0, description="k-means seed.")
    column: str = Field("clip_image_emb", description="Embedding column in RUN/embeddings.")


class SemanticDedup(Policy):
    """SemDeDup: k-means over stored CLIP image embeddings, then groups of cosine > 1 - eps per cluster."""

    name = "semantic_dedup"
    Config = SemanticDedupConfig
    reasons = ("dup_semantic",)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.config.column,)

    def apply(self, db: DecideDB) -> None:
        from curate.decide.semantic import semantic_groups

        rows = ranked(db, [], "TRUE", self.config.prefer)
        rows, emb = _with_embeddings(rows, db.embeddings_dir, self.config.column)
        if len(rows) < 2:
            return
        n_clusters = self.config.n_clusters or max(1, int(len(rows) ** 0.5))
        rep = semantic_groups(emb, rows.column("rank").to_numpy(), n_clusters, self.config.eps, self.config.seed)
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
