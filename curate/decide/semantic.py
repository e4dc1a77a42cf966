"""Semantic deduplication (SemDeDup, Abbas et al. 2023) over stored CLIP image embeddings.

Two steps, both in memory over a numpy array of the valid rows' embeddings:

1. :func:`kmeans_assign` clusters the L2-normalised embeddings with spherical k-means (faiss), so
   that near duplicates, which are close on the sphere, nearly always share a cluster.
2. :func:`semantic_groups` takes each cluster's rows best rank first: a row within ``1 - eps`` cosine of
   a representative so far is its duplicate, else it is a representative (no transitive chains), and
   optionally a caption veto (:func:`captions_disagree`) keeps rows whose captions disagree apart.

Known limitation (as in SemDeDup): a duplicate pair whose rows fall in different k-means clusters is
never compared, so it is missed. Fewer, larger clusters miss fewer pairs and cost more compute.

No Ray and no DuckDB here: a decide policy gathers the embeddings and writes the reasons.
"""

from __future__ import annotations

import re

import faiss
import numpy as np

KMEANS_ITERATIONS = 20
CHUNK_ROWS = 65_536  # rows converted to float32 at a time when assigning clusters (128 MiB at d=512)
BLOCK_ROWS = 4_096  # similarity blocks are at most BLOCK_ROWS x BLOCK_ROWS float32 (64 MiB)


def unit_rows(embeddings: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """``embeddings[rows]`` as L2-normalised float32 (inputs may be float16, as stored).

    Raises ValueError on a zero or non-finite row: a missing embedding has no direction, and
    normalising it would silently produce NaN similarities that never match anything.
    """
    x = np.asarray(embeddings[rows], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0))
    if bad.any():
        first = np.arange(len(embeddings))[rows][np.flatnonzero(bad)[0]]
        raise ValueError(
            f"embedding row {first} is zero or not finite ({int(bad.sum())} such rows in this chunk); "
            "pass only rows that have a valid embedding"
        )
    x /= norms
    return np.ascontiguousarray(x)


def kmeans_assign(embeddings: np.ndarray, n_clusters: int, seed: int, sample: int | None = None) -> np.ndarray:
    """Spherical k-means cluster id (int64) of every row of ``embeddings`` (n x d, float16 or float32).

    Trains ``faiss.Kmeans(spherical=True)`` with a fixed ``seed`` on a random sample of at most
    ``sample`` rows (default ``max(256 * n_clusters, 100_000)``, faiss's own 256 points per centroid),
    then assigns all rows to the nearest centroid ``CHUNK_ROWS`` at a time, so only the sample and one
    chunk exist as float32 copies. ``n_clusters`` is clamped to the number of rows (k-means cannot
    have more centroids than points); with one cluster nothing is trained.
    """
    n, d = embeddings.shape
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    k = min(n_clusters, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    sample = max(256 * k, 100_000) if sample is None else sample
    size = min(max(sample, k), n)
    train_rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    kmeans = faiss.Kmeans(
        d,
        k,
        niter=KMEANS_ITERATIONS,
        seed=seed,
        spherical=True,
        verbose=False,
        max_points_per_centroid=-(-size // k),  # use the whole sample: we already subsampled
        min_points_per_centroid=1,  # a small input is fine; do not warn
    )
    kmeans.train(unit_rows(embeddings, train_rows))
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        _, nearest = kmeans.index.search(unit_rows(embeddings, slice(start, stop)), 1)
        labels[start:stop] = nearest[:, 0]
    return labels


def semantic_groups(
    embeddings: np.ndarray,
    rank: np.ndarray,
    n_clusters: int,
    eps: float,
    seed: int = 0,
    *,
    sample: int | None = None,
    block_rows: int = BLOCK_ROWS,
    caption_keys: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """For each row, the index of the row it duplicates (its representative), or itself.

    Inside each k-means cluster, rows are taken in ``rank`` order (ranks must be unique; lower is
    preferred): a row joins the best-ranked representative whose cosine similarity to it is > ``1 - eps``,
    else it becomes a representative itself. So every removed row is within ``eps`` of the very row
    kept for it, and no chain links a red traffic light to a green one through a yellow one (connected
    components would); representatives are pairwise not within ``eps``. ``eps = 0`` asks for cos > 1,
    so nothing merges, not even identical vectors (exact copies are the sha256 policy's job).

    ``caption_keys`` (from :func:`caption_keys`, one entry per row) vetoes a link whose captions name
    disjoint colours or numbers (:func:`captions_disagree`): the row looks for a later representative.

    Why not SemDeDup's public code: it removes row j when its largest similarity to *any* earlier row
    of the sorted cluster is > 1 - eps, removed rows included (GitHub issue #8 notes this is not the
    paper's "keep one per group"), so a chain a~b~c loses c to b although b is gone and c is far from a.

    Memory and work: each cluster is compared in blocks of ``block_rows`` rows against its
    representatives so far (at most ``block_rows`` x s float32 similarities, s the cluster size) and
    within the block; peak is about the largest cluster as float32 (s x d x 4 bytes) plus one block.
    Callers pass only rows with an embedding; a zero or non-finite row raises ValueError.
    ``sample`` goes to :func:`kmeans_assign`.
    """
    n = len(embeddings)
    rank = np.asarray(rank)
    if rank.shape != (n,):
        raise ValueError(f"rank must have shape ({n},), got {rank.shape}")
    if len(np.unique(rank)) != n:
        raise ValueError("rank values must be unique: they decide which row of a group is kept")
    if not 0 <= eps <= 2:
        raise ValueError(f"eps must be in [0, 2] (cosine distance), got {eps}")
    for start in range(0, n, CHUNK_ROWS):
        unit_rows(embeddings, slice(start, start + CHUNK_ROWS))  # fail on a missing row before any work
    dup_of = np.arange(n, dtype=np.int64)
    if eps == 0:
        return dup_of
    labels = kmeans_assign(embeddings, n_clusters, seed, sample)
    order = np.lexsort((rank, labels))  # by cluster, best rank first
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            keys = None if caption_keys is None else (caption_keys[0][members], caption_keys[1][members])
            dup_of[members] = members[_cluster_leaders(unit_rows(embeddings, members), 1 - eps, block_rows, keys)]
    return dup_of


def _cluster_leaders(
    x: np.ndarray, threshold: float, block_rows: int, keys: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """For unit rows ``x`` sorted best rank first: each row's local representative (greedy leaders)."""
    s = len(x)
    rep = np.arange(s, dtype=np.int64)
    leaders = np.empty(0, np.int64)
    for lo in range(0, s, block_rows):
        hi = min(lo + block_rows, s)
        near = x[lo:hi] @ x[leaders].T > threshold  # (block, leaders so far)
        if keys is not None:
            rows, cols = np.nonzero(near)
            near[rows, cols] = ~_disagree(keys, rows + lo, leaders[cols])
        hit = near.any(axis=1)
        if hit.any():
            rep[lo:hi][hit] = leaders[near[hit].argmax(axis=1)]  # the first leader is the best ranked
        fresh = lo + np.flatnonzero(~hit)
        inner = x[fresh] @ x[fresh].T > threshold
        free = np.ones(len(fresh), bool)
        for i in range(len(fresh)):  # greedy inside the block: a free row leads, claims the free rows after it
            if free[i]:
                claim = np.flatnonzero(inner[i, i + 1 :] & free[i + 1 :]) + i + 1
                if keys is not None and len(claim):
                    claim = claim[~_disagree(keys, fresh[claim], np.full(len(claim), fresh[i]))]
                rep[fresh[claim]] = fresh[i]
                free[claim] = False
        leaders = np.concatenate([leaders, fresh[free]])
    return rep


CAPTION_COLOURS = {
    **{c: c for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")},
    **{c: c for c in ("grey", "gold", "silver", "beige", "cyan", "magenta", "turquoise", "teal", "navy", "maroon")},
    "gray": "grey",
    "golden": "gold",
    "violet": "purple",
}
"""English colour words (and spelling variants) that :func:`captions_disagree` compares."""
CAPTION_NUMBERS = {
    **{w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())},
    **{w: i + 13 for i, w in enumerate("thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())},
    **{w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())},
    **{w: i + 1 for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth".split())},
    "hundred": 100,
    "thousand": 1000,
}
"""English number words (cardinals and the first ordinals) and their values; digits are read as numbers."""
_TOKENS = re.compile(r"\d+(?:[.,]\d+)?|[^\W\d_]+")
_COLOUR_BIT = {c: 1 << i for i, c in enumerate(dict.fromkeys(CAPTION_COLOURS.values()))}


def caption_facts(caption: str | None) -> tuple[frozenset[str], frozenset[float]]:
    """The colours and numbers an English caption names: ``"Two red flags, 3rd row"`` → ({red}, {2, 3})."""
    colours, numbers = set(), set()
    for token in _TOKENS.findall((caption or "").lower()):
        if token[0].isdigit():
            numbers.add(float(token.replace(",", ".")))
        elif token in CAPTION_COLOURS:
            colours.add(CAPTION_COLOURS[token])
        elif token in CAPTION_NUMBERS:
            numbers.add(float(CAPTION_NUMBERS[token]))
    return frozenset(colours), frozenset(numbers)


def captions_disagree(a: str | None, b: str | None) -> bool:
    """Whether two captions disagree strongly: both name colours and share none, or both name numbers and
    share none (``"A red flag."`` vs ``"A green flag."``; ``"2 cats"`` vs ``"three cats"``)."""
    (ca, na), (cb, nb) = caption_facts(a), caption_facts(b)
    return bool(ca and cb and not ca & cb) or bool(na and nb and not na & nb)


def caption_keys(captions: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per caption, a bit mask of its colours and one of its numbers (each number sets bit hash % 63), for
    the vectorised form of :func:`captions_disagree` (two numbers sharing a bit never veto: a rare miss)."""
    colours = np.zeros(len(captions), np.int64)
    numbers = np.zeros(len(captions), np.int64)
    for i, caption in enumerate(captions):
        cs, ns = caption_facts(caption)
        colours[i] = sum(_COLOUR_BIT[c] for c in cs)
        numbers[i] = sum({1 << (hash(v) % 63) for v in ns})  # hash of a float is fixed across runs
    return colours, numbers


def _disagree(keys: tuple[np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`captions_disagree` of rows ``a`` and ``b`` (index arrays), from :func:`caption_keys`."""
    return np.logical_or.reduce([(m[a] != 0) & (m[b] != 0) & (m[a] & m[b] == 0) for m in keys])
