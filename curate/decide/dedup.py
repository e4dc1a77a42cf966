"""Global deduplication policies over the whole run (every shard at once)."""

from __future__ import annotations

from pydantic import Field

from curate.decide.base import DecideDB, Policy, PolicyConfig


class ExactDedupConfig(PolicyConfig):
    by: list[str] = Field(
        default_factory=lambda: ["sha256"],
        min_length=1,
        description="Columns whose equal values make duplicates: sha256 (same bytes, the default) "
        "or e.g. [url, caption] (LAION's URL + alt-text dedup).",
    )


class ExactDedup(Policy):
    """Rows with equal ``by`` values: keep the smallest key, reject the rest as dup_exact."""

    name = "exact_dedup"
    Config = ExactDedupConfig
    reasons = ("dup_exact",)

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self.config.by)

    def apply(self, db: DecideDB) -> None:
        columns = ", ".join(f's."{c}"' for c in self.config.by)  # names checked against the samples
        not_null = " AND ".join(f's."{c}" IS NOT NULL' for c in self.config.by)
        dups = db.con.sql(
            f"""SELECT key, dup_of FROM (
                 SELECT v.key, first_value(v.key) OVER (PARTITION BY {columns} ORDER BY v.key) AS dup_of
                 FROM verdict v JOIN samples s USING (key)
                 WHERE v.reason IS NULL AND {not_null})
               WHERE key <> dup_of"""
        ).to_arrow_table()
        db.reject_keys(dups, "dup_exact", self.name)
