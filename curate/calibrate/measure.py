"""What a dedup threshold would do, measured on trusted pairs: recall on known duplicates, false merges among
known-distinct images extrapolated to the pool's size, and the value to use.

False merges grow as n^2: among m distinct images, a threshold that links a share ``rate`` of the
m(m-1)/2 pairs links about ``rate * N(N-1)/2`` pairs in a pool of N images, and each linked pair
rejects one image, so it rejects ``rate * (N - 1) / 2`` of the pool (the false-merge share).
Precision at the pool's size is ``recall * d / (recall * d + false-merge share)`` for a pool whose
duplicate share is ``d``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from curate.calibrate.perturb import PERTURBATIONS, near_copy_bytes
from curate.images import decode
from curate.signals.image import perceptual_hashes

K_CANDIDATES = tuple(range(0, 17, 2))
"""near_dedup.k values tried (pHash distances are even: k and k + 1 select the same pairs)."""
EPS_CANDIDATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
"""semantic_dedup.eps values tried (cosine distance; the policy's default is 0.05)."""
BLOCK = 1024  # rows of the all-pairs passes done at once


@dataclass(frozen=True)
class Candidate:
    """One threshold's row of the table."""

    value: float
    recall: float  # share of the known duplicate pairs within the threshold
    false_pairs: int  # known-distinct pairs within the threshold
    false_merge_share: float  # of the pool, extrapolated to its size
    precision: float | None  # at the pool's size and duplicate share


def false_merge_share(false_pairs: int, m: int, pool: int) -> float:
    """The share of a pool of ``pool`` images that ``false_pairs`` among ``m`` distinct images would reject."""
    rate = false_pairs / (m * (m - 1) / 2) if m > 1 else 0.0
    return min(1.0, rate * (pool - 1) / 2)


def table(
    values: Sequence[float], recall: Callable[[float], float], false_pairs: Sequence[int], m: int, pool: int,
    dup_share: float,
) -> list[Candidate]:  # fmt: skip
    """One :class:`Candidate` per threshold value, given the recall function and false pairs per value."""
    rows = []
    for value, pairs in zip(values, false_pairs, strict=True):
        r, share = recall(value), false_merge_share(pairs, m, pool)
        true = r * dup_share
        rows.append(Candidate(value, r, int(pairs), share, true / (true + share) if true + share > 0 else None))
    return rows


def recommend(rows: Sequence[Candidate], max_false_merge: float) -> Candidate | None:
    """The smallest value reaching the best recall among those that falsely merge at most ``max_false_merge``
    of the pool (a larger one adds no recall and loses the margin to the distinct images); None when none does."""
    allowed = [r for r in rows if r.false_merge_share <= max_false_merge]
    if not allowed:
        return None
    best = max(r.recall for r in allowed)
    return min((r for r in allowed if r.recall == best), key=lambda r: r.value)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise bit distance of two uint64 arrays."""
    return np.bitwise_count(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64)).astype(np.int64)


def hamming_histogram(hashes: np.ndarray) -> np.ndarray:
    """How many of the m(m-1)/2 pairs of ``hashes`` are at each distance 0..64 (exact, in row blocks)."""
    h = np.asarray(hashes, np.uint64)
    counts = np.zeros(65, np.int64)
    for start in range(0, len(h), BLOCK):
        block = h[start : start + BLOCK]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        upper = np.arange(len(h))[None, :] > (start + np.arange(len(block)))[:, None]
        counts += np.bincount(dist[upper], minlength=65)
    return counts


def pairs_above(unit: np.ndarray, thresholds: Sequence[float]) -> list[int]:
    """For each threshold t, how many of the m(m-1)/2 pairs of unit rows have cosine > t."""
    counts = np.zeros(len(thresholds), np.int64)
    t = np.asarray(thresholds, np.float32)
    for start in range(0, len(unit), BLOCK):
        sims = unit[start : start + BLOCK] @ unit.T
        upper = np.arange(len(unit))[None, :] > (start + np.arange(len(sims)))[:, None]
        top = np.sort(sims[upper])
        counts += len(top) - np.searchsorted(top, t, side="right")
    return counts.tolist()


def k_table(copy_bits: np.ndarray, distinct: np.ndarray, pool: int, dup_share: float) -> list[Candidate]:
    """The near_dedup.k table: ``copy_bits`` are the known duplicate pairs' pHash distances, ``distinct``
    the known-distinct images' pHashes."""
    cumulative = np.cumsum(hamming_histogram(distinct))
    false = [int(cumulative[k]) for k in K_CANDIDATES]
    recall = _share_at_most(copy_bits)
    return table(K_CANDIDATES, recall, false, len(distinct), pool, dup_share)


def eps_table(copy_cos: np.ndarray, distinct: np.ndarray, pool: int, dup_share: float) -> list[Candidate]:
    """The semantic_dedup.eps table: ``copy_cos`` are the duplicate pairs' cosines, ``distinct`` the distinct
    images' unit embeddings (semantic_dedup links rows with cosine > 1 - eps)."""
    false = pairs_above(distinct, [1 - eps for eps in EPS_CANDIDATES])
    cos = np.asarray(copy_cos, np.float64)
    return table(EPS_CANDIDATES, lambda eps: _mean(cos > 1 - eps), false, len(distinct), pool, dup_share)


def _share_at_most(values: np.ndarray) -> Callable[[float], float]:
    v = np.asarray(values)
    return lambda limit: _mean(v <= limit)


def _mean(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def quantiles(values: Iterable[float]) -> dict[str, float]:
    """Median, p90, p99 and max (empty when there are no values)."""
    v = np.asarray(list(values), np.float64)
    if not v.size:
        return {}
    q = np.quantile(v, [0.5, 0.9, 0.99, 1.0])
    return {"median": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3])}


def phash(data: bytes) -> int:
    """The pHash the image stage records for these bytes (the same decode, the same hash)."""
    return perceptual_hashes(decode(data), with_dhash=False)["phash"]


def near_copies(images: Sequence[bytes], seed: int) -> Iterator[bytes]:
    """One near copy of each image (JPEG), cycling through :data:`PERTURBATIONS`, seeded."""
    rng = random.Random(seed)
    for i, data in enumerate(images):
        yield near_copy_bytes(decode(data), PERTURBATIONS[i % len(PERTURBATIONS)], rng)


def calibrate_k(images: Sequence[bytes], pool: int, max_false_merge: float, seed: int = 0) -> dict:
    """near_dedup.k from known-distinct ``images`` and a near copy of each (no run needed): the table and the
    recommended k for a pool of ``pool`` images (``benchmarks/filter_quality.py`` calls this)."""
    hashes = np.array([phash(data) for data in images], np.uint64)
    copies = np.array([phash(data) for data in near_copies(images, seed)], np.uint64)
    rows = k_table(hamming(hashes, copies), hashes, pool, dup_share=0.0)
    best = recommend(rows, max_false_merge)
    return {
        "k": int(best.value) if best else 0,
        "images": len(images),
        "pool_images": pool,
        "table": {int(r.value): {"copy_recall": r.recall, "false_merge_share": r.false_merge_share} for r in rows},
    }
