"""The decide contract: a policy reads the samples table and rejects rows with a reason.

Decide runs in DuckDB over the run's Parquet, so it works out of core and re-runs in seconds.
Policies apply in recipe order; a row keeps the first reason it gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from curate import reasons
from curate.stage import make_config

if TYPE_CHECKING:
    from curate.recipe import Recipe


class PolicyConfig(BaseModel):
    """Base of policy configs: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


KEPT = "SELECT s.* FROM verdict v JOIN samples s USING (key) WHERE v.reason IS NULL"
"""The rows still kept: the one place that says what "kept" means during decide (view ``kept``)."""


class DecideDB:
    """A DuckDB connection with view ``samples``, table ``verdict(key, reason, stage, dup_of, ...)``
    (it also carries what the decisions files need: raw shard, url, caption) and view ``kept``.

    ``kept`` is the samples rows no policy has rejected yet (every ``samples`` column): policies read
    ``FROM kept s`` rather than joining ``verdict`` themselves. A view, so it is always current.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, embeddings_dir: Path | None = None) -> None:
        con.execute("CREATE OR REPLACE TEMP VIEW kept AS " + KEPT)
        self.con = con
        self.embeddings_dir = embeddings_dir  # RUN/embeddings, read with pyarrow (float16 lists)
        self.info: dict = {}  # what policies chose (e.g. balance's cap), recorded in the manifest

    def columns(self) -> set[str]:
        """Column names of ``samples``."""
        return {row[0] for row in self.con.sql("DESCRIBE samples").fetchall()}

    def reject_where(self, predicate: str, reason: str, stage: str) -> None:
        """Reject still-kept rows whose samples row satisfies the SQL ``predicate``."""
        reasons.check(reason)
        self.con.execute(
            f"""UPDATE verdict SET reason = $reason, stage = $stage
                FROM kept s WHERE verdict.key = s.key AND ({predicate})""",
            {"reason": reason, "stage": stage},
        )

    def reject_keys(self, rejected: pa.Table, reason: str, stage: str) -> None:
        """Reject the keys of ``rejected`` (columns ``key`` and optional ``dup_of``)."""
        reasons.check(reason)
        if "dup_of" not in rejected.column_names:
            rejected = rejected.append_column("dup_of", pa.nulls(len(rejected), pa.string()))
        self.con.register("_rejected", rejected)
        self.con.execute(
            """UPDATE verdict SET reason = $reason, stage = $stage, dup_of = r.dup_of
               FROM _rejected r WHERE verdict.key = r.key AND verdict.reason IS NULL""",
            {"reason": reason, "stage": stage},
        )
        self.con.unregister("_rejected")

    def reject_query(self, query: str, reason: str, stage: str, params: dict | None = None) -> None:
        """Reject the keys SQL ``query`` returns (columns ``key``, ``dup_of``), computed inside DuckDB (out of core)."""
        reasons.check(reason)
        self.con.execute(
            f"""UPDATE verdict SET reason = $reason, stage = $stage, dup_of = r.dup_of
                FROM ({query}) r WHERE verdict.key = r.key AND verdict.reason IS NULL""",
            {"reason": reason, "stage": stage, **(params or {})},
        )


class Policy:
    """Base class: subclasses set ``name``, ``Config``, ``reads``, ``reasons`` and ``apply``.

    Build one from its config or from keyword parameters: ``ImageSize(min_side=64)``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig
    reads: ClassVar[tuple[str, ...]] = ()
    reasons: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PolicyConfig | None = None, **params: Any) -> None:
        self.config: Any = make_config(self.Config, config, params, f"{type(self).__name__} (policy {self.name!r})")

    def check(self, recipe: Recipe) -> None:
        """Fail fast while the recipe is validated, on the driver (e.g. a head made for another CLIP model)."""

    def apply(self, db: DecideDB) -> None:
        """Reject rows through ``db.reject_where`` or ``db.reject_keys``."""
        raise NotImplementedError


def embedding_matrix(lists: pa.Array | pa.ChunkedArray, dim: int | None = None) -> np.ndarray:
    """Stored embeddings (a list column, float16 in RUN/embeddings) as an (n, d) numpy matrix of their dtype.

    ``dim`` is the width to use when there are no rows (default 0).
    """
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    width = len(lists[0]) if len(lists) else (dim or 0)
    return lists.flatten().to_numpy(zero_copy_only=False).reshape(len(lists), width)
