"""LiT on cached tower features: with both towers locked, only the projections and the temperature train.

Their inputs, the towers' pooled features, never change, so ``cache_features: true`` computes them
once per training pair (eval preprocessing, no augmentation: the features the clip stage scores
with) and every step after that is two small matrix products instead of two tower forward passes.
On the 2-core CPU of our CI, lit-offline goes from 5-9 s per step of 64 pairs to milliseconds.

Supported towers: open_clip's timm image towers (``visual.head``) and ViTs (``visual.proj``),
Hugging Face text towers (``text.proj``) and open_clip's text transformers (``text_projection``).
The features of every pair are held in memory (``(image_dim + text_dim) * 4`` bytes per pair: 6.7 kB
for lit-offline, 6.7 GB per million pairs) and saved to ``OUTPUT/features.pt`` (``features-rankN.pt`` for rank N > 0) for ``--resume``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import webdataset as wds
from torch import nn
from tqdm.auto import tqdm

from curate.train.data import dataset_size, decode_images, train_loader


class _MatMul(nn.Module):
    """A projection kept as a bare parameter (a ViT's ``proj``, CLIP's ``text_projection``)."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def _projection_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of the image projection, then the text projection; a clear error otherwise."""
    visual, text = model.visual, getattr(model, "text", model)
    image_slot = next((s for s in ("head", "proj") if _is_projection(visual, s)), None)
    text_slot = next((s for s in ("proj", "text_projection") if _is_projection(text, s)), None)
    if image_slot is None or text_slot is None:
        raise ValueError(
            f"cache_features: cannot find the projections of {type(visual).__name__} / {type(text).__name__}; "
            "supported are timm or ViT image towers and Hugging Face or open_clip text towers. "
            "Set cache_features: false."
        )
    return [(visual, image_slot), (text, text_slot)]


def _is_projection(owner: nn.Module, name: str) -> bool:
    value = getattr(owner, name, None)
    return isinstance(value, nn.Parameter | nn.Module) and not (name == "head" and not hasattr(owner, "trunk"))


class ProjectionHeads(nn.Module):
    """The trainable part of a locked model; ``forward(image_feats, text_feats)`` returns what CLIP's does.

    It shares its parameters with ``model``: training it trains the model that is saved.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        (visual, image_slot), (text, text_slot) = _projection_slots(model)
        self.image, self.text = _as_module(getattr(visual, image_slot)), _as_module(getattr(text, text_slot))
        self.logit_scale = model.logit_scale

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": F.normalize(self.image(image), dim=-1),
            "text_features": F.normalize(self.text(text), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


def _as_module(value: nn.Module | nn.Parameter) -> nn.Module:
    return _MatMul(value) if isinstance(value, nn.Parameter) else value


@contextlib.contextmanager
def pooled_features(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, ``encode_image``/``encode_text`` return the towers' features before the projections."""
    slots = _projection_slots(model)
    saved = [getattr(owner, name) for owner, name in slots]
    try:
        for (owner, name), value in zip(slots, saved, strict=True):
            setattr(owner, name, None if isinstance(value, nn.Parameter) else nn.Identity())
        yield model
    finally:
        for (owner, name), value in zip(slots, saved, strict=True):
            setattr(owner, name, value)


@torch.no_grad()
def tower_features(
    bundle, shards: list[str], batch_size: int, workers: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (image, text) tower features of every pair of ``shards``, row-aligned, float32 on CPU."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(shards),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.decode(decode_images, handler=wds.warn_and_continue),
        wds.to_tuple("jpg", "txt"),
        wds.map_tuple(bundle.preprocess_val, lambda text: bundle.tokenizer([text])[0]),
        wds.batched(batch_size, partial=True),
    )
    model, was_training = bundle.model, bundle.model.training
    size = dataset_size(shards)
    bar = tqdm(total=size, desc="tower features", unit="pair", mininterval=2.0)
    images, texts = [], []
    model.eval()
    with pooled_features(model):
        for pixels, tokens in train_loader(pipeline, min(workers, len(shards))):
            images.append(model.encode_image(pixels.to(device)).float().cpu())
            texts.append(model.encode_text(tokens.to(device)).float().cpu())
            bar.update(len(pixels))
    bar.close()
    model.train(was_training)
    if not images:
        raise ValueError(f"cache_features: no (jpg, txt) pairs in {shards[:3]}...")
    return torch.cat(images), torch.cat(texts)


def cached_tower_features(
    bundle, shards: list[str], key: dict, path: Path, batch_size: int, workers: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tower_features`, kept in ``path`` and reused while ``key`` (model, shards) is the same."""
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == repr(key):
            return saved["image"], saved["text"]
    image, text = tower_features(bundle, shards, batch_size, workers, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": repr(key), "image": image, "text": text}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return image, text


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One torch thread on CPU while inside: a step is a few small matrix products, and 2 threads on a
    loaded 2-core machine made it 27x slower (127 ms vs 4.7 ms per step of 32 pairs)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def feature_batches(
    image: torch.Tensor, text: torch.Tensor, batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled epochs of full batches of (image, text) features, on ``device``."""
    if len(image) < batch_size:
        raise ValueError(f"cache_features: {len(image)} pairs, fewer than one batch of {batch_size}")
    image, text = image.to(device), text.to(device)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = math.floor(len(image) / batch_size)
    while True:
        order = torch.randperm(len(image), generator=generator).to(device)
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield image[idx], text[idx]
