"""Near-duplicate search over 64-bit hashes: exact against brute force; components; representatives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.decide.neardup import (
    MAX_K,
    Band,
    band_layout,
    components,
    distinct_near_pairs,
    near_pairs,
    representatives,
)


def brute_pairs(hashes: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Every pair i < j within k bits, by comparing all pairs."""
    i, j = np.triu_indices(len(hashes), 1)
    close = np.bitwise_count(hashes[i] ^ hashes[j]) <= k
    return set(zip(i[close].tolist(), j[close].tolist(), strict=True))


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def flip(value: np.uint64, bits: int, rng: np.random.Generator) -> np.uint64:
    """``value`` with ``bits`` distinct random bits flipped."""
    mask = sum(1 << int(b) for b in rng.choice(64, bits, replace=False))
    return value ^ np.uint64(mask)


def planted(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n hashes: random ones, near copies at every distance 0..k+2, chains, and a low-entropy block
    (40 hashes equal on their top 48 bits, so some bands put them all in one wide bucket)."""
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    for dst in range(0, n // 3):
        src = int(rng.integers(0, n))
        h[dst] = flip(h[src], int(rng.integers(0, k + 3)), rng)
    h[-40:] = (h[-40] & np.uint64(0xFFFF_FFFF_FFFF_0000)) | rng.integers(0, 1 << 16, 40, dtype=np.uint64)
    return h


def brute_labels(n: int, pairs: set[tuple[int, int]]) -> np.ndarray:
    """Component labels of the full pair graph, renumbered by first appearance."""
    ij = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(n, n))
    return canonical(connected_components(graph, directed=False)[1])


def canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered in order of first appearance, so two labellings compare with ==."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


@pytest.mark.parametrize("k", [0, 2, 4, 6, 8, 10])
def test_exact_on_distinct_hashes(k):
    rng = np.random.default_rng(k)
    h = np.unique(planted(1500, k, rng))
    h = h[rng.permutation(len(h))]
    pairs = near_pairs(h, k)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert as_set(pairs) == brute_pairs(h, k)
    assert len(as_set(pairs)) == len(pairs)  # no pair twice


@pytest.mark.parametrize(
    ("k", "layout"),
    [
        (8, [(22, 2), (21, 2), (21, 2)]),  # the layout k = 8 uses from ~1e6 hashes up
        (8, [(16, 2), (16, 1), (16, 1), (16, 1)]),  # ... and around 1e5
        (10, [(22, 3), (21, 3), (21, 2)]),
        (4, [(32, 0), (11, 1), (11, 1), (10, 0)]),  # unequal widths, a wide exact band
        (3, [(8, 0)] * 8),  # more exact bands than needed
    ],
)
def test_exact_for_layouts_used_at_scale(k, layout):
    bands, shift = [], 0
    for bits, radius in layout:
        bands.append(Band(shift, bits, radius))
        shift += bits
    rng = np.random.default_rng(len(layout))
    h = np.unique(planted(1200, k, rng))
    codes = distinct_near_pairs(h, k, workers=2, layout=bands)
    got = set(zip((codes // len(h)).tolist(), (codes % len(h)).tolist(), strict=True))
    assert got == brute_pairs(h, k)


def test_layouts_satisfy_the_pigeonhole_condition():
    for k in range(17):
        for n in (10, 10**4, 10**6, 10**7):
            layout = band_layout(k, n)
            assert sum(b.radius + 1 for b in layout) == k + 1
            assert sorted(b.shift for b in layout) == list(np.cumsum([0] + [b.bits for b in layout])[:-1])
            assert sum(b.bits for b in layout) == 64
    assert band_layout(8, 10**6) == (Band(0, 22, 2), Band(22, 21, 2), Band(43, 21, 2))


@pytest.mark.parametrize("k", [0, 3, 8])
def test_identical_hashes_become_a_star_with_the_same_components(k):
    rng = np.random.default_rng(7)
    h = planted(900, k, rng)
    h[100:107] = h[50]  # a group of 8 identical hashes (rows 50, 100..106)
    h[200:203] = h[201]  # and one of 3 whose first row is 200
    pairs = near_pairs(h, k)
    truth = brute_pairs(h, k)
    got = as_set(pairs)
    assert got <= truth  # every pair returned is a true near pair
    assert all(i < j for i, j in got)
    assert {(50, j) for j in range(100, 107)} <= got
    copies = range(100, 107)
    assert not any(i in copies and j in copies for i, j in got)  # a star, not a clique
    assert {(200, 201), (200, 202)} <= got and (201, 202) not in got
    assert (canonical(components(len(h), pairs)) == brute_labels(len(h), truth)).all()
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert (np.lexsort((pairs[:, 1], pairs[:, 0])) == np.arange(len(pairs))).all()  # sorted


def test_chain_is_one_component():
    a = np.uint64(0x0123_4567_89AB_CDEF)
    b = a ^ np.uint64(0b111)  # 3 bits from a
    c = b ^ np.uint64(0b111 << 60)  # 3 more: 6 from a
    far = ~a
    h = np.array([a, far, b, c], dtype=np.uint64)
    pairs = near_pairs(h, 4)
    assert as_set(pairs) == {(0, 2), (2, 3)}
    labels = components(4, pairs)
    assert labels[0] == labels[2] == labels[3] != labels[1]
    assert representatives(labels, np.array([3, 0, 1, 2])).tolist() == [2, 1, 2, 2]


def test_tiny_inputs():
    empty = near_pairs(np.array([], dtype=np.uint64), 8)
    assert empty.shape == (0, 2) and empty.dtype == np.int64
    assert near_pairs(np.array([5], dtype=np.uint64), 8).shape == (0, 2)
    assert as_set(near_pairs(np.array([5, 5], dtype=np.uint64), 0)) == {(0, 1)}
    assert as_set(near_pairs(np.array([5, 4], dtype=np.uint64), 1)) == {(0, 1)}
    assert as_set(near_pairs(np.array([5, 4], dtype=np.uint64), 0)) == set()
    assert components(0, np.empty((0, 2), np.int64)).shape == (0,)
    assert representatives(np.array([], np.int64), np.array([], np.int64)).shape == (0,)


def test_signed_hashes_are_read_as_64_bits():
    rng = np.random.default_rng(3)
    h = planted(500, 6, rng)
    assert as_set(near_pairs(h.view(np.int64), 6)) == as_set(near_pairs(h, 6))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="64-bit"):
        near_pairs(np.array([1.0, 2.0]), 4)
    with pytest.raises(ValueError, match="64-bit"):
        near_pairs(np.array([1, 2], dtype=np.uint32), 4)
    with pytest.raises(ValueError, match="k must be"):
        near_pairs(np.array([1, 2], dtype=np.uint64), MAX_K + 1)
    with pytest.raises(ValueError, match="k must be"):
        near_pairs(np.array([1, 2], dtype=np.uint64), -1)
    h = np.arange(10, dtype=np.uint64)
    with pytest.raises(ValueError, match="tile"):  # 2 bands with radius 0 cannot guarantee k = 2
        distinct_near_pairs(h, 2, layout=[Band(0, 32, 0), Band(32, 32, 0)])
    with pytest.raises(ValueError, match="tile"):  # a gap
        distinct_near_pairs(h, 1, layout=[Band(0, 30, 0), Band(32, 32, 0)])
    with pytest.raises(ValueError, match="flips"):
        distinct_near_pairs(h, 2, layout=[Band(0, 32, 1), Band(32, 32, 0)])


def test_components_of_a_hand_made_graph():
    pairs = np.array([[0, 1], [1, 2], [4, 5], [5, 4], [6, 6]])
    labels = components(8, pairs)
    assert labels.dtype == np.int64
    assert canonical(labels).tolist() == [0, 0, 0, 1, 2, 2, 3, 4]
    assert canonical(components(3, np.empty((0, 2), np.int64))).tolist() == [0, 1, 2]


def test_representatives_keep_the_best_ranked_row():
    labels = np.array([0, 0, 0, 1, 2, 2, 0])
    rank = np.array([5, 3, 4, 0, 2, 1, 6])
    assert representatives(labels, rank).tolist() == [1, 1, 1, 3, 5, 5, 1]
    # labels need not be 0..C-1 in order
    assert representatives(np.array([7, 2, 7, 2]), np.array([1, 0, 2, 3])).tolist() == [0, 1, 0, 1]


def test_end_to_end_keeps_one_row_per_group():
    rng = np.random.default_rng(11)
    h = planted(1000, 8, rng)
    rank = rng.permutation(len(h))
    keep = representatives(components(len(h), near_pairs(h, 8)), rank)
    truth = brute_labels(len(h), brute_pairs(h, 8))
    for label in np.unique(truth):
        members = np.flatnonzero(truth == label)
        best = members[np.argmin(rank[members])]
        assert (keep[members] == best).all()
