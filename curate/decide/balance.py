"""Concept balancing: MetaCLIP's metadata curation (Xu et al. 2023, "Demystifying CLIP Data").

Counts are taken over the rows still kept when the policy runs (after filters and dedup, as
MetaCLIP recommends). With a per-concept cap ``t``, a concept matched by ``c`` rows gets the
probability ``min(1, t / c)``, and, as in MetaCLIP's reference balancing loop, a row is kept if
ANY of its matched concepts selects it in an independent draw with that probability:
``P(keep) = 1 - prod_e (1 - min(1, t / c_e))``. So a row with one head concept survives with
probability ``t / c``, each concept ends near ``min(c, t)`` rows, and a row matching any tail
concept (``c <= t``) is always kept. Rows matching no concept are dropped (MetaCLIP) or kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.decide.base import DecideDB, Policy, PolicyConfig


class BalanceConfig(PolicyConfig):
    t: int | None = Field(None, gt=0, description="Per-concept cap (MetaCLIP: 20,000 at 400M scale).")
    target_size: int | None = Field(
        None, gt=0, description="Instead of t: the cap whose expected kept count is closest to this many rows."
    )
    no_match: Literal["drop", "keep"] = Field("drop", description="Rows matching no concept (MetaCLIP drops them).")
    seed: int = Field(0, description="Seed of the sampling draws; the same seed gives the same result.")

    @model_validator(mode="after")
    def _one_cap(self) -> BalanceConfig:
        if (self.t is None) == (self.target_size is None):
            raise ValueError("give exactly one of t (a per-concept cap) or target_size (rows to keep)")
        return self


class Balance(Policy):
    """Flatten the concept distribution of the rows still kept (see the module docstring)."""

    name = "balance"
    Config = BalanceConfig
    reads = ("concept_ids",)
    reasons = ("no_concept", "balanced_out")

    def apply(self, db: DecideDB) -> None:
        rows = db.con.sql("SELECT key, concept_ids FROM kept ORDER BY key").to_arrow_table()
        ids = pc.fill_null(rows.column("concept_ids"), pa.scalar([], pa.list_(pa.int32()))).combine_chunks()
        matched = pc.greater(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
        if self.config.no_match == "drop":
            db.reject_keys(rows.select(["key"]).filter(pa.array(~matched)), "no_concept", self.name)
        flat, parent = concept_pairs(ids)
        t = self.config.t or solve_cap(flat, parent, len(rows), self.config.target_size)
        keep = balanced_keep(flat, parent, len(rows), t, self.config.seed)
        out = pa.array(matched & ~keep)
        db.reject_keys(rows.select(["key"]).filter(out), "balanced_out", self.name)
        db.info[self.name] = {"t": int(t), "rows": len(rows), "matched": int(matched.sum()), "kept": int(keep.sum())}


def concept_pairs(ids: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened concept ids and, for each, the index of its row."""
    flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = pc.list_parent_indices(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    return flat, parent


def selection_probability(flat: np.ndarray, t: float) -> np.ndarray:
    """``min(1, t / count)`` of each (row, concept) pair's concept."""
    counts = np.bincount(flat) if len(flat) else np.zeros(0, np.int64)
    return np.minimum(1.0, t / np.maximum(counts, 1))[flat]


def balanced_keep(flat: np.ndarray, parent: np.ndarray, n_rows: int, t: float, seed: int) -> np.ndarray:
    """MetaCLIP's draw: row kept if any of its concepts selects it; deterministic for a seed."""
    draws = np.random.default_rng(seed).random(len(flat))
    keep = np.zeros(n_rows, dtype=bool)
    keep[parent[draws < selection_probability(flat, t)]] = True
    return keep


def expected_kept(flat: np.ndarray, parent: np.ndarray, n_rows: int, t: float) -> float:
    """Expected number of matched rows kept at cap ``t``: sum of 1 - prod(1 - p)."""
    miss = np.log1p(-np.minimum(selection_probability(flat, t), 1 - 1e-12))
    return float(np.sum(1.0 - np.exp(np.bincount(parent, weights=miss, minlength=n_rows)))) if len(flat) else 0.0


def solve_cap(flat: np.ndarray, parent: np.ndarray, n_rows: int, target: int) -> int:
    """The smallest integer cap whose expected kept count reaches ``target`` (bisection)."""
    low, high = 1, max(1, int(np.bincount(flat).max()) if len(flat) else 1)
    while low < high:
        mid = (low + high) // 2
        if expected_kept(flat, parent, n_rows, mid) >= target:
            high = mid
        else:
            low = mid + 1
    return low
