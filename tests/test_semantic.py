"""Semantic dedup on planted near duplicates among random 512-d vectors (nearly orthogonal)."""

from __future__ import annotations

import numpy as np
import pytest

from curate.decide.semantic import kmeans_assign, semantic_groups

D = 512
EPS = 0.05
GROUP_SIZES = (2, 3, 4, 5, 2, 3, 5, 4, 2, 2)


def planted(n_random: int = 1500, sizes: tuple[int, ...] = GROUP_SIZES, seed: int = 0):
    """Shuffled random rows plus groups of near copies (base + tiny noise): (x, rank, groups)."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n_random, D))]
    for size in sizes:
        base = rng.standard_normal(D)
        parts.append(base + 1e-3 * np.linalg.norm(base) / np.sqrt(D) * rng.standard_normal((size, D)))
    x = np.concatenate(parts).astype(np.float32)
    perm = rng.permutation(len(x))  # row perm[i] of x moves to position i
    where = np.argsort(perm)
    starts = np.cumsum((n_random, *sizes))[:-1]
    groups = [where[s : s + size] for s, size in zip(starts, sizes, strict=True)]
    return x[perm], rng.permutation(len(x)), groups


def expected(n: int, rank: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    dup_of = np.arange(n)
    for group in groups:
        dup_of[group] = group[np.argmin(rank[group])]
    return dup_of


def split_by(groups: list[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    """The planted groups cut along k-means clusters: what SemDeDup can find."""
    return [group[labels[group] == c] for group in groups for c in np.unique(labels[group])]


def test_one_row_kept_per_group_the_lowest_rank_and_nothing_else_merged():
    x, rank, groups = planted()
    dup_of = semantic_groups(x, rank, n_clusters=1, eps=EPS)
    np.testing.assert_array_equal(dup_of, expected(len(x), rank, groups))
    assert (dup_of == np.arange(len(x))).sum() == len(x) - sum(GROUP_SIZES) + len(GROUP_SIZES)


def test_groups_are_found_within_kmeans_clusters():
    x, rank, groups = planted()
    labels = kmeans_assign(x, 8, seed=3)
    assert len(np.unique(labels)) == 8
    dup_of = semantic_groups(x, rank, n_clusters=8, eps=EPS, seed=3)
    np.testing.assert_array_equal(dup_of, expected(len(x), rank, split_by(groups, labels)))


def chain(rank_abc: tuple[int, int, int]):
    """a~b and b~c (cos 0.96 > 1 - EPS) but not a~c (cos 0.84), among random rows; returns (x, rank, a, b, c)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, D)).astype(np.float32)
    u, v = np.linalg.qr(rng.standard_normal((D, 2)))[0].T
    theta = np.arccos(0.96)
    a, b, c = 10, 50, 120
    for row, angle in ((a, 0.0), (b, theta), (c, 2 * theta)):
        x[row] = np.cos(angle) * u + np.sin(angle) * v
    rank = np.arange(1000, 1200)
    rank[[a, b, c]] = rank_abc
    return x, rank, a, b, c


@pytest.mark.parametrize(
    ("rank_abc", "want"),
    [((0, 2, 1), "aac"), ((2, 0, 1), "bbb"), ((1, 2, 0), "acc")],
)
def test_a_chain_is_not_followed_each_removed_row_is_near_its_own_kept_row(rank_abc, want):
    # a=0, c=1, b=2: a and c are kept (0.84 apart), b joins a (the better ranked of the two it is near);
    # b first: a and c are both near it; connected components would have merged a with c.
    x, rank, a, b, c = chain(rank_abc)
    dup_of = semantic_groups(x, rank, n_clusters=1, eps=EPS)
    name = {a: "a", b: "b", c: "c"}
    assert "".join(name[int(r)] for r in dup_of[[a, b, c]]) == want
    others = np.setdiff1d(np.arange(len(x)), [a, b, c])
    np.testing.assert_array_equal(dup_of[others], others)


def test_eps_zero_merges_nothing_not_even_identical_rows():
    x, rank, groups = planted(n_random=100)
    x[groups[0]] = x[groups[0][0]]  # exact copies
    np.testing.assert_array_equal(semantic_groups(x, rank, n_clusters=1, eps=0.0), np.arange(len(x)))
    tiny = semantic_groups(x, rank, n_clusters=1, eps=1e-5)
    np.testing.assert_array_equal(tiny, expected(len(x), rank, groups))  # near copies are within 1e-5 too


def test_blocks_and_a_dense_group_give_the_same_answer():
    # A 300-row group spans several 37-row blocks: later blocks join the leader found in an earlier one.
    x, rank, groups = planted(n_random=600, sizes=(*GROUP_SIZES, 300))
    want = expected(len(x), rank, groups)
    np.testing.assert_array_equal(semantic_groups(x, rank, n_clusters=1, eps=EPS), want)
    np.testing.assert_array_equal(semantic_groups(x, rank, n_clusters=1, eps=EPS, block_rows=37), want)


def test_same_seed_same_answer():
    x, rank, _ = planted()
    np.testing.assert_array_equal(kmeans_assign(x, 16, seed=7), kmeans_assign(x, 16, seed=7))
    first = semantic_groups(x, rank, n_clusters=16, eps=EPS, seed=7)
    np.testing.assert_array_equal(first, semantic_groups(x, rank, n_clusters=16, eps=EPS, seed=7))


def test_float16_input_as_stored():
    x, rank, groups = planted()
    dup_of = semantic_groups(x.astype(np.float16), rank, n_clusters=1, eps=EPS)
    np.testing.assert_array_equal(dup_of, expected(len(x), rank, groups))
    labels = kmeans_assign(x.astype(np.float16), 4, seed=0, sample=400)
    assert labels.dtype == np.int64 and labels.shape == (len(x),) and set(labels) <= set(range(4))


def test_n_clusters_is_clamped_to_the_rows():
    x, rank, _ = planted(n_random=3, sizes=(2,))
    np.testing.assert_array_equal(kmeans_assign(x, 50, seed=0), kmeans_assign(x, 5, seed=0))
    assert len(semantic_groups(x, rank, n_clusters=50, eps=EPS)) == 5
    assert len(semantic_groups(x[:0], rank[:0], n_clusters=4, eps=EPS)) == 0


@pytest.mark.parametrize("bad", [0.0, np.nan])
def test_a_missing_embedding_is_an_error(bad):
    x, rank, _ = planted(n_random=50)
    x[17] = bad
    with pytest.raises(ValueError, match="row 17 is zero or not finite"):
        semantic_groups(x, rank, n_clusters=4, eps=EPS)
    with pytest.raises(ValueError, match="row 17"):
        kmeans_assign(x, 4, seed=0)


def test_ranks_must_be_unique():
    x, rank, _ = planted(n_random=50)
    rank[3] = rank[4]
    with pytest.raises(ValueError, match="unique"):
        semantic_groups(x, rank, n_clusters=2, eps=EPS)
