"""Semantic deduplication (SemDeDup, Abbas et al. 2023) over stored CLIP image embeddings.

Two steps, both in memory over a numpy array of the valid rows' embeddings:

1. :func:`kmeans_assign` clusters the L2-normalised embeddings with spherical k-means (faiss), so
   that near duplicates, which are close on the sphere, nearly always share a cluster.
2. :func:`semantic_groups` links, inside each cluster, the rows whose cosine similarity is above
   ``1 - eps`` and keeps the lowest-rank row of each connected group.

Known limitation (as in SemDeDup): a duplicate pair whose rows fall in different k-means clusters is
never compared, so it is missed. Fewer, larger clusters miss fewer pairs and cost more compute.

No Ray and no DuckDB here: a decide policy gathers the embeddings and writes the reasons.
"""

from __future__ import annotations

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
) -> np.ndarray:
    """For each row, the index of the row it duplicates (the lowest-``rank`` row of its group), or itself.

    Rows of one k-means cluster whose cosine similarity is > ``1 - eps`` are linked; a group is a
    connected component of these links, so exactly one row per group (the one with the smallest
    ``rank``; ranks must be unique) is kept and the others point to it. Links are transitive: in a
    chain a~b~c all three form one group even if a and c are not within ``eps``. ``eps = 0`` asks for
    cos > 1, so nothing merges, not even identical vectors (exact copies are the sha256 policy's job).

    Why groups: the public SemDeDup code does not build groups. It removes row j when its largest
    similarity to any earlier row of the sorted cluster is > 1 - eps (``M > 1 - eps``), which GitHub
    issue #8 notes is not the paper's "keep one per group, remove the rest"; the outcome depends on the
    row order (chain a~b~c ordered a, c, b keeps both a and c), and thresholding a row's largest
    similarity to *any* other member instead drops both rows of every pair, keeping none. Connected
    components keep exactly one row per group whatever the order.

    Memory: each cluster is compared block by block (``block_rows`` x ``block_rows`` float32
    similarities) and only the pairs above the threshold are kept, reduced to a spanning forest
    whenever they exceed a few per row, so a huge cluster never builds its s x s matrix. Peak is about
    the largest cluster as float32 (s x d x 4 bytes) plus one block. Callers pass only rows with an
    embedding; a zero or non-finite row raises ValueError. ``sample`` goes to :func:`kmeans_assign`.
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
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            dup_of[members] = members[_cluster_keep(unit_rows(embeddings, members), rank[members], 1 - eps, block_rows)]
    return dup_of


def _cluster_keep(x: np.ndarray, rank: np.ndarray, threshold: float, block_rows: int) -> np.ndarray:
    """For each row of one cluster (unit rows ``x``), the local index of its group's lowest-rank row."""
    s = len(x)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    edges = 0
    for i in range(0, s, block_rows):
        for j in range(i, s, block_rows):
            a, b = _pairs_above(x[i : i + block_rows], x[j : j + block_rows], threshold)
            keep = b + j > a + i  # each unordered pair once, no self links (only matters when i == j)
            src.append(a[keep] + i)
            dst.append(b[keep] + j)
            edges += int(keep.sum())
            if edges > 4 * s:  # dense cluster: keep only a spanning forest so edges stay O(s)
                forest = _forest(s, np.concatenate(src), np.concatenate(dst))
                src, dst, edges = [forest[0]], [forest[1]], len(forest[0])
    graph = _graph(s, np.concatenate(src), np.concatenate(dst))
    _, component = connected_components(graph, directed=False)
    by_group_then_rank = np.lexsort((rank, component))
    first = np.r_[True, np.diff(component[by_group_then_rank]) != 0]
    best = np.empty(component.max() + 1, dtype=np.int64)
    best[component[by_group_then_rank[first]]] = by_group_then_rank[first]
    return best[component]


def _pairs_above(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Local (row of a, row of b) index pairs whose cosine similarity is > ``threshold``."""
    rows, cols = np.nonzero(a @ b.T > threshold)
    return rows.astype(np.int64), cols.astype(np.int64)


def _graph(s: int, src: np.ndarray, dst: np.ndarray) -> coo_matrix:
    return coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(s, s))


def _forest(s: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges linking every row to the first row of its component: same components, at most s edges."""
    _, component = connected_components(_graph(s, src, dst), directed=False)
    _, first = np.unique(component, return_index=True)
    root = first[component]
    linked = np.flatnonzero(root != np.arange(s))
    return linked, root[linked]
