"""Global deduplication policies over the whole run (every shard at once)."""

from __future__ import annotations

from curate.decide.base import DecideDB, Policy


class ExactDedup(Policy):
    """Byte-identical images (same sha256): keep the smallest key, reject the rest as dup_exact."""

    name = "exact_dedup"
    reads = ("sha256",)
    reasons = ("dup_exact",)

    def apply(self, db: DecideDB) -> None:
        dups = db.con.sql(
            """SELECT key, dup_of FROM (
                 SELECT v.key, first_value(v.key) OVER (PARTITION BY s.sha256 ORDER BY v.key) AS dup_of
                 FROM verdict v JOIN samples s USING (key)
                 WHERE v.reason IS NULL AND s.sha256 IS NOT NULL)
               WHERE key <> dup_of"""
        ).to_arrow_table()
        db.reject_keys(dups, "dup_exact", self.name)
