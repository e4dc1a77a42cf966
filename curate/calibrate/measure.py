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
from dataclasses import asdict, dataclass

import numpy as np

from curate.calibrate.perturb import PERTURBATIONS, near_copy_bytes
from curate.images import decode
from curate.signals.image import perceptual_hashes

K_CANDIDATES = tuple(range(0, 17, 2))
"""near_dedup.k values tried (pHash distances are even: k and k + 1 select the same pairs)."""
EPS_CANDIDATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
"""semantic_dedup.eps values tried (cosine distance; the policy's default is 0.05)."""
VERIFY_CANDIDATES = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 30.0)
"""near_dedup.verify_colour values tried (CIELAB ΔE units of curate.images.colour_distance; a pHash pair counts
only within it; the policy's default is 8)."""
RECALL_TOLERANCE = 0.01
"""A recommendation takes the smallest value whose recall is within this of the best allowed one."""
BLOCK = 1024  # rows of the all-pairs passes done at once


@dataclass(frozen=True)
class Candidate:
    """One threshold's row of the table."""

    value: float
    recall: float  # share of the known duplicate pairs within the threshold
    false_pairs: int  # known-distinct pairs within the threshold (the run's own duplicates taken out, see table)
    observed_pairs: int  # all pairs of the negatives within the threshold
    false_merge_share: float  # of the pool, extrapolated to its size
    precision: float | None  # at the pool's size and duplicate share


def false_merge_share(false_pairs: int, m: int, pool: int) -> float:
    """The share of a pool of ``pool`` images that ``false_pairs`` among ``m`` distinct images would reject."""
    rate = false_pairs / (m * (m - 1) / 2) if m > 1 else 0.0
    return min(1.0, rate * (pool - 1) / 2)


def own_pairs(observed: int, recall: float) -> float:
    """Pairs of duplicates among negatives taken from the run itself, from the ``observed`` pairs at the strictest
    value: those are taken to be duplicates (distinct images almost never share a pHash, or a CLIP cosine of
    0.995), and the strictest value catches a ``recall`` share of duplicates (as of the known ones)."""
    return observed / recall if recall > 0 else 0.0


def table(
    values: Sequence[float], recall: Callable[[float], float], observed: Sequence[int], m: int, pool: int,
    dup_share: float, own: float = 0.0,
) -> list[Candidate]:  # fmt: skip
    """One :class:`Candidate` per threshold value (strictest first), given the recall function and the pairs of
    negatives within each value. ``own``: duplicate pairs among the negatives (:func:`own_pairs`, when they are
    the run's own images); ``own * recall`` of the pairs at each value are theirs, not false."""
    rows, floor = [], 0
    for value, seen in zip(values, observed, strict=True):
        r = recall(value)
        pairs = floor = max(floor, round(seen - own * r))  # never fewer than at a stricter value
        share = false_merge_share(pairs, m, pool)
        true = r * dup_share
        rows.append(Candidate(value, r, pairs, int(seen), share, true / (true + share) if true + share > 0 else None))
    return rows


def recommend(rows: Sequence[Candidate], max_false_merge: float) -> Candidate | None:
    """The smallest value within :data:`RECALL_TOLERANCE` of the best recall among those that falsely merge at most
    ``max_false_merge`` of the pool (a larger one adds next to no recall and loses the margin to the distinct
    images); None when none does."""
    allowed = [r for r in rows if r.false_merge_share <= max_false_merge]
    if not allowed:
        return None
    best = max(r.recall for r in allowed)
    return min((r for r in allowed if r.recall >= best - RECALL_TOLERANCE), key=lambda r: r.value)


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


def close_pairs(hashes: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs i < j of ``hashes`` within ``limit`` bits: (i, j, distance) arrays (exact, in row blocks)."""
    h = np.asarray(hashes, np.uint64)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(h), BLOCK):
        dist = np.bitwise_count(h[start : start + BLOCK, None] ^ h[None, :])
        upper = np.arange(len(h))[None, :] > (start + np.arange(len(dist)))[:, None]
        i, j = np.nonzero(upper & (dist <= limit))
        found.append((i + start, j, dist[i, j].astype(np.int64)))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.concatenate([f[0] for f in found]),
        np.concatenate([f[1] for f in found]),
        np.concatenate([f[2] for f in found]),
    )


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


def k_table(
    copy_bits: np.ndarray, distinct: np.ndarray, pool: int, dup_share: float, own: bool = False
) -> list[Candidate]:
    """The near_dedup.k table: ``copy_bits`` are the known duplicate pairs' pHash distances, ``distinct``
    the negatives' pHashes; ``own``: the negatives are the run's own images (its duplicates are taken out)."""
    cumulative = np.cumsum(hamming_histogram(distinct))
    observed = [int(cumulative[k]) for k in K_CANDIDATES]
    recall = _share_at_most(copy_bits)
    dups = own_pairs(observed[0], recall(K_CANDIDATES[0])) if own else 0.0
    return table(K_CANDIDATES, recall, observed, len(distinct), pool, dup_share, dups)


def eps_table(
    copy_cos: np.ndarray, distinct: np.ndarray, pool: int, dup_share: float, own: bool = False
) -> list[Candidate]:
    """The semantic_dedup.eps table: ``copy_cos`` are the duplicate pairs' cosines, ``distinct`` the negatives'
    unit embeddings (semantic_dedup links rows with cosine > 1 - eps); ``own`` as for :func:`k_table`."""
    observed = pairs_above(distinct, [1 - eps for eps in EPS_CANDIDATES])
    recall = _share_above_one_minus(np.asarray(copy_cos, np.float64))
    dups = own_pairs(observed[0], recall(EPS_CANDIDATES[0])) if own else 0.0
    return table(EPS_CANDIDATES, recall, observed, len(distinct), pool, dup_share, dups)


def verify_table(
    copy_bits: np.ndarray, copy_colour: np.ndarray, pair_bits: np.ndarray, pair_colour: np.ndarray, m: int,
    pool: int, dup_share: float, max_false_merge: float, own: float = 0.0,
) -> list[dict]:  # fmt: skip
    """Per near_dedup.verify_colour value: the k :func:`recommend` picks when pHash pairs must also be within it in
    colour, and that k's row. ``copy_*``: the known duplicate pairs' pHash bits and colour distances;
    ``pair_*``: those of the negatives' pairs within the largest k tried (:func:`close_pairs`) among ``m``
    images; ``own``: duplicate pairs among them (:func:`own_pairs`)."""
    rows = []
    for limit in VERIFY_CANDIDATES:
        confirmed, same = copy_colour <= limit, pair_colour <= limit
        observed = [int(((pair_bits <= k) & same).sum()) for k in K_CANDIDATES]
        recall = _share_at_most(np.where(confirmed, copy_bits, 65))
        best = recommend(table(K_CANDIDATES, recall, observed, m, pool, dup_share, own), max_false_merge)
        rows.append({"verify_colour": limit, **(asdict(best) if best else {"value": None})})
    return rows


def recommend_verified(rows: Sequence[dict], plain: Candidate | None) -> dict | None:
    """Among the verify_colour rows within :data:`RECALL_TOLERANCE` of the best recall, the strictest limit, then
    the smallest k (colour variants, which the check is for, are rarely among the known-distinct images, so the
    colour margin counts first); None when no row has a k or the unverified ``plain`` recommendation recalls more."""
    usable = [r for r in rows if r["value"] is not None]
    if not usable:
        return None
    top = max(r["recall"] for r in usable)
    near_top = [r for r in usable if r["recall"] >= top - RECALL_TOLERANCE]
    best = min(near_top, key=lambda r: (r["verify_colour"], r["value"]))
    return None if plain is not None and plain.recall > top else best


def _share_at_most(values: np.ndarray) -> Callable[[float], float]:
    v = np.asarray(values)
    return lambda limit: _mean(v <= limit)


def _share_above_one_minus(cos: np.ndarray) -> Callable[[float], float]:
    return lambda eps: _mean(cos > 1 - eps)


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
