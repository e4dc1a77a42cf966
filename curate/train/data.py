"""WebDataset input for training and evaluation: shard lists, epoch size, streaming loaders."""

from __future__ import annotations

import glob
import importlib
import json
import os
import random
from collections.abc import Callable, Iterator
from functools import partial

import braceexpand
import fsspec
import webdataset as wds
from PIL import Image

from curate import storage
from curate.errors import NotFound
from curate.images import decode


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: object) -> object:
    """webdataset opener for object-storage URLs webdataset has no handler for (``s3://``, ``abfs://``, ...)."""
    return fsspec.open(url, mode).open()


for _scheme in ("s3", "s3a", "abfs", "az", "hf", "hdfs", "gcs"):
    importlib.import_module("webdataset.gopen").gopen_schemes.setdefault(_scheme, _gopen_fsspec)


def expand_shards(data: str | list[str]) -> list[str]:
    """Tar paths from a folder, a glob, a brace pattern (``{00000..00009}.tar``) or a list.

    A folder on object storage (``s3://bkt/run/shards``) lists the tars its ``_COMMITTED`` marker names.
    """
    if isinstance(data, list):
        return [s for item in data for s in expand_shards(item)]
    if not storage.is_local(data) and "{" not in data and "*" not in data and storage.isdir(data):
        shards = storage.files(data, ".tar")
    elif os.path.isdir(data):
        shards = sorted(glob.glob(os.path.join(data, "*.tar")))
    elif "{" in data:
        shards = list(braceexpand.braceexpand(data))
    else:
        shards = sorted(glob.glob(data)) or [data]
    missing = [s for s in shards if "://" not in s and not os.path.exists(s)]
    if not shards or missing:
        raise NotFound(f"no WebDataset shards at {data!r} (missing: {missing[:3]}); pass RUN/shards")
    return shards


def dataset_size(shards: list[str]) -> int | None:
    """Samples in ``shards`` from the ``sizes.json`` beside them (as open_clip reads it), else None."""
    total = 0
    for folder in sorted({os.path.dirname(s) for s in shards}):
        sizes_file = storage.join(folder, "sizes.json")
        if not storage.isfile(sizes_file):
            return None
        sizes = json.loads(storage.read_text(sizes_file))
        total += sum(int(sizes[os.path.basename(s)]) for s in shards if os.path.dirname(s) == folder)
    return total


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


def decode_images(key: str, data: bytes) -> Image.Image | None:
    """webdataset decoder: image entries as :func:`curate.images.decode` gives them (the displayed RGB
    image, EXIF orientation applied); other entries are left to webdataset's default decoders."""
    if key.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
        return decode(data)
    return None


def iter_pairs(shards: list[str]) -> Iterator[tuple[str, Image.Image, str]]:
    """Every (key, RGB image, caption) of ``shards`` in order, in this process."""
    dataset = wds.WebDataset(shards, shardshuffle=False).decode(decode_images)
    yield from dataset.to_tuple("__key__", "jpg", "txt")


def train_pipeline(
    shards: list[str],
    preprocess: Callable,
    tokenize: Callable,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
) -> wds.DataPipeline:
    """An endless, shuffled stream of (images, tokens) batches, split over nodes and workers."""
    return wds.DataPipeline(
        wds.ResampledShards(shards, worker_seed=partial(_worker_seed, seed), deterministic=True),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        partial(_seeded_shuffle, bufsize=shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed),
        wds.decode(decode_images, handler=wds.warn_and_continue),
        wds.to_tuple("jpg", "txt"),
        wds.map_tuple(preprocess, lambda text: tokenize([text])[0]),
        wds.batched(batch_size, partial=False),
    )


def _seeded_shuffle(data: Iterator, bufsize: int, initial: int, seed: int) -> Iterator:
    """webdataset's buffer shuffle, seeded per run, rank and worker: its default generator is seeded from the
    clock and the pid, so the same seed gave another sample order (and loss curve) on every run."""
    yield from wds.shuffle(bufsize, initial, rng=random.Random(_worker_seed(seed)))(data)


def _worker_seed(seed: int) -> int:
    """Distinct per run seed, rank and DataLoader worker (webdataset's rank * 1000 + worker)."""
    return seed * 100_003 + wds.utils.pytorch_worker_seed()


def train_loader(pipeline: wds.DataPipeline, workers: int) -> wds.WebLoader:
    """A DataLoader over an already batched pipeline."""
    return wds.WebLoader(
        pipeline,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
