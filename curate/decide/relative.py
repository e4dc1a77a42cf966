"""Relative CLIP score (CSLS, Lample et al. 2018, "Word translation without parallel data") on stored embeddings.

A plain CLIPScore favours "hub" images and captions that are close to everything (generic pictures, stock
alt text). CSLS subtracts each side's mean similarity to its ``k`` nearest neighbours on the other side:

    csls(i) = 2 cos(x_i, y_i) - r_T(x_i) - r_I(y_i)
    r_T(x) = mean of the k largest cos(x, y_j) over reference captions y_j
    r_I(y) = mean of the k largest cos(y, x_j) over reference images x_j

The reference is a seeded random sample of ``reference`` rows of the run (both embeddings), searched
exactly with faiss (inner product on L2-normalised float32). Everything streams one embeddings file at a
time; the cost is 2 x reference x d multiply-adds per row per side (d = 512, reference = 4,096: ~4 MFLOP a
row, so ~1e15 FLOP for 1e8 rows: a GPU-sized job at that scale; lower ``reference`` to trade precision).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import storage
from curate.decide.base import embedding_matrix

IMAGE, TEXT = "clip_image_emb", "clip_text_emb"


def unit(lists: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float16 list rows as an L2-normalised float32 matrix."""
    x = embedding_matrix(lists).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x)


def _files(folder: str) -> list[str]:
    found = storage.files(folder)
    if not found:
        raise ValueError(f"{folder}: no embeddings; the relative CLIP score needs the clip stage's embeddings")
    return found


def _read(path: str, rows: np.ndarray | None = None) -> pa.Table:
    fsys, local = storage.arrow_fs(path)
    table = pq.read_table(local, filesystem=fsys, columns=["key", IMAGE, TEXT])
    if rows is not None:
        table = table.take(pa.array(rows))
    return table.filter(pc.and_(pc.is_valid(table.column(IMAGE)), pc.is_valid(table.column(TEXT))))


def _num_rows(path: str) -> int:
    fsys, local = storage.arrow_fs(path)
    return pq.read_metadata(local, filesystem=fsys).num_rows


def reference_sample(folder: str, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, captions): a seeded sample of about ``size`` rows, spread over the files by their row counts."""
    files = _files(folder)
    counts = [
        pq.ParquetFile(storage.arrow_fs(p)[0].open_input_file(storage.arrow_fs(p)[1])).metadata.num_rows for p in files
    ]
    total = max(sum(counts), 1)
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for path, n in zip(files, counts, strict=True):
        take = min(n, math.ceil(size * n / total))
        if take:
            table = _read(path, np.sort(rng.choice(n, take, replace=False)))
            images.append(unit(table.column(IMAGE)))
            texts.append(unit(table.column(TEXT)))
    return np.concatenate(images), np.concatenate(texts)


def csls_scores(folder: str, k: int, reference: int, seed: int) -> Iterator[pa.Table]:
    """Tables of (key, clip_score, csls) for every row with both embeddings, one embeddings file at a time."""
    import faiss

    ref_images, ref_texts = reference_sample(folder, reference, seed)
    k = max(1, min(k, len(ref_texts)))
    by_text, by_image = faiss.IndexFlatIP(ref_texts.shape[1]), faiss.IndexFlatIP(ref_images.shape[1])
    by_text.add(ref_texts)
    by_image.add(ref_images)
    for path in _files(folder):
        table = _read(path)
        if not len(table):
            continue
        x, y = unit(table.column(IMAGE)), unit(table.column(TEXT))
        cos = np.einsum("ij,ij->i", x, y)
        r_text = by_text.search(x, k)[0].mean(axis=1)  # how close each image is to captions in general
        r_image = by_image.search(y, k)[0].mean(axis=1)  # how close each caption is to images in general
        yield pa.table({"key": table.column("key"), "clip_score": cos, "csls": 2 * cos - r_text - r_image})
