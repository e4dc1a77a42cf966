"""LiT on cached tower features (``cache_features: true``): the cache holds the towers' features, and
training the projections on it trains the model that is saved."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from curate.models.clip import load_clip
from curate.train.cached import ProjectionHeads, pooled_features
from curate.train.clip import ClipTrainConfig
from curate.train.data import dataset_size, expand_shards, iter_pairs

pytestmark = pytest.mark.slow


def test_cache_needs_both_towers_locked():
    with pytest.raises(ValidationError, match="cache_features needs lock_image"):
        ClipTrainConfig(model="lit-offline", lock_image=True, cache_features=True)


@pytest.mark.parametrize("arch", ["clip-tiny", "lit-offline"])
def test_projection_heads_reproduce_the_model(arch):
    """Pooled features through ProjectionHeads = the model's own normalized embeddings (ViT + text
    transformer parameters; timm head + Hugging Face proj modules); the projections come back after."""
    bundle = load_clip(arch)
    model = bundle.model.eval()
    size = {"clip-tiny": 64, "lit-offline": 224}[arch]
    pixels, tokens = torch.rand(3, 3, size, size), bundle.tokenizer(["a cat", "a red apple", "two dogs"])
    with torch.no_grad():
        want_image, want_text = model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)
        with pooled_features(model):
            image, text = model.encode_image(pixels), model.encode_text(tokens)
        got = ProjectionHeads(model)(image, text)
        again = model.encode_image(pixels, normalize=True)
    assert image.shape[-1] != want_image.shape[-1] or arch == "clip-tiny"  # lit: 1280-d features, 384-d embedding
    torch.testing.assert_close(got["image_features"], want_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["text_features"], want_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, want_image)
    assert got["logit_scale"] == model.logit_scale.exp()


def test_cached_training_trains_the_saved_model(lit_model, curated_shards):
    """The lit_model fixture trains with cache_features: its cache holds one row per training pair,
    and the saved folder embeds a training image exactly as the cached features through its heads do."""
    shards = expand_shards(f"{curated_shards}/{{00000..00001}}.tar")
    cache = torch.load(lit_model / "features.pt", weights_only=True)
    assert cache["image"].shape == (dataset_size(shards), 1280) and cache["text"].shape == (dataset_size(shards), 384)
    bundle = load_clip(str(lit_model))
    model = bundle.model.eval()
    pairs = [pair for pair, _ in zip(iter_pairs(shards), range(4), strict=False)]
    with torch.no_grad():
        pixels = torch.stack([bundle.preprocess_val(image) for _, image, _ in pairs])
        want = model.encode_image(pixels, normalize=True)
        got = ProjectionHeads(model)(cache["image"], cache["text"])["image_features"]
    best = (want @ got.T).max(dim=1).values  # each pair's embedding is one of the cached rows through the heads
    assert best.min() > 0.9999, [(key, caption, float(b)) for (key, _, caption), b in zip(pairs, best, strict=True)]
    fresh = load_clip("lit-offline").model.state_dict()
    trained = model.state_dict()
    assert torch.equal(fresh["visual.trunk.conv_stem.weight"], trained["visual.trunk.conv_stem.weight"])
    assert not torch.equal(fresh["visual.head.proj.weight"], trained["visual.head.proj.weight"])
