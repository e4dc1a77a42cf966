"""Global near-duplicate search over 64-bit perceptual hashes (pHash): exact Hamming-radius self-join.

``near_pairs`` finds every pair of rows whose hashes differ in at most ``k`` bits, without an
all-pairs pass; ``components`` and ``representatives`` turn those pairs into the row to keep in
each group. A decide policy calls the three in turn (with ``all_row_pairs`` between the first two
when it checks each pair further, e.g. by colour). Pure numpy/scipy: no Ray, no DuckDB.

Algorithm: multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012), with a radius per band as in Qin et al.'s GPH (ICDE 2018).

1. Identical hashes are collapsed to their first row: a group of g equal hashes costs g - 1
   "star" pairs, not g(g - 1) / 2.
2. The 64 bits are cut into m contiguous bands with radii t_1..t_m, sum(t_i + 1) = k + 1.
   Pigeonhole: if two hashes differ in at most k bits, some band i differs in at most t_i bits
   (otherwise the differences would add up to at least sum(t_i + 1) = k + 1). All t_i = 0 is
   Norouzi's "m > k substrings, one matches exactly"; equal t_i is their radius floor(k / m).
3. Per band, rows are sorted by band value (runs of equal values are buckets), and a dense
   occupancy/offset table over all 2^bits values is built. Candidates: pairs inside a bucket,
   and for every flip mask f of 1..t_i bits, pairs across buckets u and u ^ f — each unordered
   bucket pair probed once, from the side where f's top bit is clear. Probes are vectorised
   gathers; bucket pairs are grouped by their sizes (a, b) and verified as dense a x b blocks.
4. Every candidate is verified with ``np.bitwise_count(x ^ y) <= k``: no false pairs (the check),
   no missed pairs (the pigeonhole). Pairs found through several bands are deduplicated.

The layout is chosen from k and the number n of distinct hashes by a cost model for uniform
hashes (``band_layout``). For k = 8: four 16-bit bands with radii (2, 1, 1, 1) around 1e5 hashes;
from ~5e5 up, three bands of 22, 21, 21 bits with radius 2 each.

Cost and scaling: probes grow linearly in n, candidates as n^2 / 2 * |ball| / 2^bits (~1.4e-4 n^2
for k = 8: each hash is checked against ~2.8e-4 n others). That is the price of exactness at
this radius: no 64-bit band layout is both selective and cheap to enumerate for k = 8. Measured with
``benchmarks/dedup.py`` (2-core AMD EPYC, 2 threads; uniform hashes, 1 % planted pairs, recall
1.0 at every size; three runs on this shared VM varied by up to 25 %: 1e6 took 5.1-6.4 s, 1e7
57-66 s):

    hashes     seconds  s/million  peak RSS   naive pairwise pass (2 threads)
    1e5           0.37       3.7    173 MiB   9.6 s, extrapolated from 2,000 rows: 26x slower
    1e6           5.6        5.6    387 MiB
    1e7          66.4        6.6    1.4 GiB

Beyond ~1e7 the quadratic term takes over (1e8: ~1.4e12 candidates, hours): dedup within a
coarser key first, or lower k (k = 6 has ~3.5x fewer candidates: 1e6 in 1.9 s; k = 10: 9.9 s).
Real pHashes are less uniform than these, so buckets are fuller; the block verification absorbs
moderate skew, and buckets wider than _WIDE rows are verified row by row.

Memory: about 100 bytes per distinct hash (the collapse ~40, one band index ~40 at a time, the
2^bits offset table: 32 MiB at 22 bits) plus per-thread chunks of PROBE_CHUNK probes and
CANDIDATE_CHUNK candidates (~30 MiB each). 1e7 hashes add ~1.0 GiB; 1e8 would need ~10 GiB.

Choosing k (``benchmarks/dedup.py --calibrate``): 1,000 generated images (1/f colour noise, a
gradient and flat shapes; 256-640 px; JPEG q90), ``imagehash.phash``; the first 200 copied each way.

    pHash distance to the original       median  p90  p99  max   caught at k=6   k=8   k=10
    JPEG re-encode, quality 30                0    2    2    4           100 %  100 %  100 %
    resize to half                            0    0    2    2           100 %  100 %  100 %
    resize to double                          0    0    2    2           100 %  100 %  100 %
    crop 2 % per side                         4    6   10   10          90.5 %   97 %  100 %
    crop 5 % per side                        10   14   20   22            19 % 37.5 % 64.5 %
    small text overlay (corner, h/20 px)      2    4    8    8          98.5 %  100 %  100 %
    brightness +10 %                          2    4    8    8            99 %  100 %  100 %
    distinct images, 499,500 pairs: median 32, 1 % quantile 22, 0.1 % 18, 0.01 % 16, min 14;
    pairs within 12 bits: 0

k = 8 (DEFAULT_K) catches every re-encode, resize, overlay and brightness copy and 97 % of the 2 %
crops, 6 bits short of the closest distinct pair (no false merges in 499,500 pairs). NOT caught at
k = 8: most 5 % crops (62.5 % missed; catching them needs k ~ 16-22, inside the distinct-image tail)
and 3 % of 2 % crops. phash thresholds 64 DCT coefficients at their median, so (nearly) every hash
has exactly 32 set bits and every distance is even: k = 8 and k = 9 select the same pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations, pairwise
from math import comb

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_K = 8
MAX_K = 32  # beyond ~16 distinct pHashes merge (see the table above); beyond 32 no index helps
MAX_TABLE_BITS = 24  # widest band given a dense offset table (2^24 int64 = 128 MiB)
PROBE_CHUNK = 1 << 20  # (buckets x flip masks) probed at once
CANDIDATE_CHUNK = 1 << 17  # candidate pairs verified at once (cache-sized blocks)
_WIDE = 12  # buckets up to this many rows are verified as dense blocks; wider ones row by row

# Relative costs per element, measured on the reference machine (2-core AMD EPYC): sorting one
# row per band, building one offset-table entry, one probe into it, one occupied bucket pair
# found, one candidate pair verified.
_SORT_COST, _TABLE_COST, _PROBE_COST, _PAIR_COST, _CANDIDATE_COST = 20.0, 0.5, 1.0, 3.0, 0.7


@dataclass(frozen=True)
class Band:
    """Bits [shift, shift + bits) of the hash, searched within ``radius`` flipped bits."""

    shift: int
    bits: int
    radius: int


def band_layout(k: int, n: int) -> tuple[Band, ...]:
    """The cheapest exact band layout for radius ``k`` over ``n`` distinct uniform hashes.

    Tries m = 1..k+1 near-equal contiguous bands and every split of k + 1 into m radii + 1 (the
    pigeonhole condition sum(t_i + 1) = k + 1), wider bands taking larger radii; bands searched
    with a radius > 0 must fit a dense table (<= MAX_TABLE_BITS).
    """
    best: tuple[float, tuple[Band, ...]] | None = None
    for m in range(1, k + 2):
        widths = [64 // m + (i < 64 % m) for i in range(m)]  # widest first
        for parts in _partitions(k + 1, m):
            radii = [p - 1 for p in parts]  # non-increasing, like widths
            if any(t > 0 and b > MAX_TABLE_BITS for b, t in zip(widths, radii, strict=True)):
                continue
            cost = sum(_band_cost(b, t, n) for b, t in zip(widths, radii, strict=True))
            if best is None or cost < best[0]:
                shifts = np.cumsum([0, *widths[:-1]])
                best = (cost, tuple(Band(int(s), b, t) for s, b, t in zip(shifts, widths, radii, strict=True)))
    assert best is not None  # m = k + 1 bands with radius 0 always qualifies
    return best[1]


def _partitions(total: int, parts: int, largest: int | None = None) -> Iterator[list[int]]:
    """Non-increasing lists of ``parts`` positive integers summing to ``total``."""
    largest = total if largest is None else largest
    if parts == 1:
        if 1 <= total <= largest:
            yield [total]
        return
    for first in range(min(largest, total - parts + 1), 0, -1):
        for rest in _partitions(total - first, parts - 1, first):
            yield [first, *rest]


def _band_cost(bits: int, radius: int, n: int) -> float:
    """Estimated work for one band on ``n`` uniform hashes (relative units)."""
    ball = sum(comb(bits, i) for i in range(radius + 1))
    fill = n / 2.0**bits  # mean rows per bucket
    occupied = 1.0 - np.exp(-fill)  # fraction of buckets with a row (Poisson)
    probes = 2.0**bits * occupied * (ball - 1) / 2  # each unordered bucket pair probed once
    candidates = n * n / 2 * ball / 2.0**bits
    table = 2.0**bits if radius else 0.0
    return (
        _SORT_COST * n
        + _TABLE_COST * table
        + _PROBE_COST * probes
        + _PAIR_COST * probes * occupied
        + _CANDIDATE_COST * candidates
    )


def near_pairs(hashes: np.ndarray, k: int = DEFAULT_K, workers: int | None = None) -> np.ndarray:
    """Row pairs (i < j), shape (M, 2) int64, whose hashes differ in at most ``k`` bits.

    ``hashes``: uint64 (int64 is read as the same 64 bits), any length. Exact for pairs of *different* hash values: every such pair within ``k`` is returned once,
    between the first rows holding each value. Rows with an *identical* hash are returned as a
    star around the first row with that value (g equal hashes give g - 1 pairs, not g(g-1)/2).
    So every returned pair is a true near pair, and the graph has exactly the connected components
    of the all-pairs graph; rows are sorted by (i, j). ``workers`` threads share the candidate
    verification (default: the CPUs this process may use).
    """
    hashes = np.asarray(hashes)
    if hashes.ndim != 1 or hashes.dtype.kind not in "iu" or hashes.dtype.itemsize != 8:
        raise ValueError(f"hashes must be a 1-d array of 64-bit integers, got {hashes.dtype} {hashes.shape}")
    if not 0 <= k <= MAX_K:
        raise ValueError(f"k must be in [0, {MAX_K}], got {k}")
    values, first, inverse = np.unique(hashes.view(np.uint64), return_index=True, return_inverse=True)
    rows = np.arange(len(hashes), dtype=np.int64)
    star = np.stack([first[inverse], rows], axis=1)[first[inverse] != rows]
    codes = distinct_near_pairs(values, k, workers)  # a * n + b over distinct values, a < b
    a, b = first[codes // max(len(values), 1)], first[codes % max(len(values), 1)]
    near = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    pairs = np.concatenate([star, near]).astype(np.int64, copy=False)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def distinct_near_pairs(
    values: np.ndarray, k: int, workers: int | None = None, layout: Sequence[Band] | None = None
) -> np.ndarray:
    """Pairs a < b of *distinct* uint64 ``values`` within ``k`` bits, encoded as a * len(values) + b.

    The multi-index search itself; ``near_pairs`` adds the collapse of identical hashes.
    ``layout`` overrides ``band_layout(k, n)`` (tests use it to cover every code path on small n).
    """
    n = len(values)
    if k == 0 or n < 2:
        return np.empty(0, np.int64)
    layout = band_layout(k, n) if layout is None else tuple(layout)
    _check_layout(layout, k)
    workers = workers or _cpus()
    found = [np.empty(0, np.int64)]
    with ThreadPoolExecutor(workers) as pool:
        for band in layout:  # one band's index in memory at a time
            index = _BandIndex(values, band, k)
            found += pool.map(lambda task: task(), index.tasks())
    return np.unique(np.concatenate(found))


def _cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_layout(layout: Sequence[Band], k: int) -> None:
    """Bands must tile bits 0..63 and satisfy the pigeonhole condition, or pairs would be missed."""
    bits = sorted((b.shift, b.shift + b.bits) for b in layout)
    tiled = bits[0][0] == 0 and bits[-1][1] == 64 and all(x[1] == y[0] for x, y in pairwise(bits))
    if not tiled or sum(b.radius + 1 for b in layout) < k + 1:
        raise ValueError(f"band layout {layout} does not tile 64 bits with sum(radius + 1) >= {k + 1}")
    if any(b.radius and b.bits > MAX_TABLE_BITS for b in layout):
        raise ValueError(f"bands searched with flips must be <= {MAX_TABLE_BITS} bits: {layout}")


class _BandIndex:
    """Rows sorted by one band's value, run-length encoded into buckets, plus a dense occupancy and
    offset table over all 2^bits band values when the band is probed with flips."""

    def __init__(self, values: np.ndarray, band: Band, k: int) -> None:
        self.n, self.k, self.band = len(values), k, band
        band_values = ((values >> np.uint64(band.shift)) & np.uint64((1 << band.bits) - 1)).astype(np.int64)
        self.order = np.argsort(band_values, kind="stable")
        self.sorted_hash = values[self.order]
        sorted_band = band_values[self.order]
        self.start = np.flatnonzero(np.diff(sorted_band, prepend=-1))  # first sorted row of each bucket
        self.size = np.diff(np.append(self.start, self.n))
        self.value = sorted_band[self.start]
        if band.radius:
            counts = np.bincount(band_values, minlength=1 << band.bits)
            self.offsets = np.concatenate([[0], np.cumsum(counts)])
            self.occupied = counts > 0  # 1 byte per bucket: the hot gather stays in cache

    def tasks(self) -> list[Callable[[], np.ndarray]]:
        """Independent units of work, each returning verified pair codes."""
        shared = np.flatnonzero(self.size > 1)
        out = [lambda b=shared[s : s + PROBE_CHUNK]: self._same_bucket(b) for s in range(0, len(shared), PROBE_CHUNK)]
        for top in range(self.band.bits if self.band.radius else 0):
            # Bucket pair (u, u ^ f) is probed from u only, where f's top set bit is clear in u.
            masks = _flip_masks(top, self.band.radius)
            buckets = np.flatnonzero((self.value >> top) & 1 == 0)
            step = max(1, PROBE_CHUNK // len(masks))
            out += [lambda b=buckets[s : s + step], m=masks: self._flipped(b, m) for s in range(0, len(buckets), step)]
        return out

    def _same_bucket(self, buckets: np.ndarray) -> np.ndarray:
        """Pairs within each of ``buckets`` (indices into start/size)."""
        start, size = self.start[buckets], self.size[buckets]
        return self._verify(start, size, start, size, same=True)

    def _flipped(self, buckets: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Pairs between each of ``buckets`` (value u) and bucket u ^ f, for each flip mask f."""
        w = (masks[:, None] ^ self.value[buckets]).ravel()  # mask-major: w walks memory in runs
        hit = np.flatnonzero(np.take(self.occupied, w))
        u, w = buckets[hit % len(buckets)], w[hit]
        start = self.offsets[w]
        return self._verify(self.start[u], self.size[u], start, self.offsets[w + 1] - start, same=False)

    def _verify(self, su: np.ndarray, a: np.ndarray, sw: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
        """Codes of pairs within k bits among sorted rows [su, su + a) x [sw, sw + b), per bucket pair.

        Bucket pairs are grouped by their sizes (a, b) and verified as dense a x b blocks, so no
        candidate needs an index of its own; pairs with a bucket wider than _WIDE go row by row.
        ``same``: su == sw are the same bucket, and only its pairs p < q count.
        """
        kind = np.where((a > _WIDE) | (b > _WIDE), 0, a * (_WIDE + 1) + b).astype(np.uint16)
        by = np.argsort(kind, kind="stable")  # radix sort on 16-bit keys
        kind, su, a, sw, b = kind[by], su[by], a[by], sw[by], b[by]
        cuts = np.flatnonzero(np.diff(kind, prepend=-1, append=-1))
        out = [np.empty(0, np.int64)]
        for lo, hi in pairwise(cuts):
            ca, cb = divmod(int(kind[lo]), _WIDE + 1)
            if ca == 0:  # the wide ones
                out.append(self._verify_rows(su[lo:hi], a[lo:hi], sw[lo:hi], b[lo:hi], same))
                continue
            step = max(1, CANDIDATE_CHUNK // (ca * cb))
            for s in range(lo, hi, step):
                p = su[s : min(s + step, hi)] + np.arange(ca)[:, None]  # (ca, pairs): long inner loops
                q = sw[s : min(s + step, hi)] + np.arange(cb)[:, None]
                diff = self.sorted_hash[p][:, None, :] ^ self.sorted_hash[q][None, :, :]
                i, j, r = np.unravel_index(np.flatnonzero(np.bitwise_count(diff) <= self.k), diff.shape)
                p, q = p[i, r], q[j, r]
                out.append(self._codes(p[p < q], q[p < q]) if same else self._codes(p, q))
        return np.concatenate(out)

    def _verify_rows(self, su: np.ndarray, a: np.ndarray, sw: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
        """``_verify`` for wide buckets: each row p of [su, su + a) against its own run of rows."""
        p = np.repeat(su - np.cumsum(a) + a, a) + np.arange(a.sum())
        start = p + 1 if same else np.repeat(sw, a)
        count = np.repeat(su + a, a) - p - 1 if same else np.repeat(b, a)
        ends = np.cumsum(count)
        out = [np.empty(0, np.int64)]
        for lo, hi in _chunks(ends, CANDIDATE_CHUNK):
            c, base = count[lo:hi], ends[lo] - count[lo]
            # q runs over start[r] .. start[r] + count[r] - 1 for every r, concatenated
            q = np.arange(base, ends[hi - 1]) + np.repeat(start[lo:hi] - (ends[lo:hi] - c), c)
            diff = np.repeat(self.sorted_hash[p[lo:hi]], c) ^ self.sorted_hash[q]
            hit = np.flatnonzero(np.bitwise_count(diff) <= self.k)
            out.append(self._codes(p[lo:hi][np.searchsorted(ends[lo:hi] - base, hit, side="right")], q[hit]))
        return np.concatenate(out)

    def _codes(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Pair codes i * n + j (i < j, indices of the distinct values) for sorted rows p, q."""
        i, j = self.order[p], self.order[q]
        return np.minimum(i, j) * self.n + np.maximum(i, j)


def _flip_masks(top: int, radius: int) -> np.ndarray:
    """Every mask of 1..radius set bits whose highest set bit is ``top``."""
    low = [sum(1 << i for i in c) for r in range(radius) for c in combinations(range(top), r)]
    return np.array(low, dtype=np.int64) | (1 << top)


def _chunks(ends: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """Index ranges [a, b) of ``ends`` (a cumulative sum) holding about ``size`` items each."""
    a = 0
    while a < len(ends):
        base = ends[a - 1] if a else 0
        b = max(a + 1, int(np.searchsorted(ends, base + size, side="right")))
        yield a, b
        a = b


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (0..C-1) per row of an n-row graph given by ``pairs``.

    Singletons get their own label. Works on ``near_pairs`` output: its star/representative form
    has the components of the full near-pair graph.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    weight = np.ones(len(pairs), np.int32)  # repeated pairs add up: a narrow type could wrap to 0
    graph = coo_matrix((weight, (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def representatives(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row of its component with the smallest ``rank`` (the one to keep).

    ``labels``: non-negative component ids (from ``components``). ``rank`` orders rows by
    preference (lower is kept; no ties). Kept rows map to themselves, so
    ``representatives(...) != arange(n)`` marks the rows to reject as near duplicates.
    """
    labels, rank = np.asarray(labels), np.asarray(rank)
    order = np.lexsort((rank, labels))  # by label, best rank first
    first = order[np.flatnonzero(np.diff(labels[order], prepend=labels[order][:1] - 1))]
    best = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    best[labels[first]] = first
    return best[labels]


EXPAND_CAP = 256
"""``all_row_pairs`` lists every row pair of two equal-hash groups only while their sizes multiply to at most this."""


def all_row_pairs(hashes: np.ndarray, pairs: np.ndarray, cap: int = EXPAND_CAP) -> np.ndarray:
    """``near_pairs`` output over every row, for a check that is not transitive (colour, cosine).

    ``near_pairs`` joins rows of one hash value as a star around the first row and links two values
    through their first rows only: enough for components, not for verifying pairs (a red first row
    would cut its green copies apart). This lists, for each returned pair, every row pair of the two
    equal-hash groups (within a group: each unordered pair once) while the sizes multiply to at most
    ``cap``; larger products keep the pairs as given. Sorted by (i, j), no duplicates.
    """
    hashes = np.asarray(hashes).view(np.uint64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ga, gb = inverse[pairs[:, 0]], inverse[pairs[:, 1]]
    na, nb = counts[ga], counts[gb]
    big = na * nb > cap
    keep = [pairs[big]]
    for same in (True, False):
        pick = np.flatnonzero(~big & ((ga == gb) == same))
        if same:  # one pair per group, not one per star pair
            pick = pick[np.unique(ga[pick], return_index=True)[1]]
        size = na[pick] * nb[pick]
        t = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        a = order[np.repeat(start[ga[pick]], size) + t // np.repeat(nb[pick], size)]
        b = order[np.repeat(start[gb[pick]], size) + t % np.repeat(nb[pick], size)]
        keep.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[a != b])
    return np.unique(np.concatenate(keep), axis=0)
