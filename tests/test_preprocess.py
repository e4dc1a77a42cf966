"""The CLIP stage's split preprocessing (CPU: resize + crop to uint8; actor: normalise) is exactly
open_clip's own eval transform, for architectures, our configs and trained model folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from curate.models.clip import eval_transform, load_clip, preprocess_spec, save_model_folder


def split_preprocess(model: str, image: Image.Image) -> torch.Tensor:
    geometric, (mean, std) = eval_transform(preprocess_spec(model))
    pixels = torch.from_numpy(np.array(geometric(image.convert("RGB")), dtype=np.uint8)).permute(2, 0, 1)
    return (pixels.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8))


@pytest.mark.parametrize("model", ["clip-tiny", "lit-offline", "ViT-B-32"])
def test_split_preprocessing_equals_open_clips_transform(model, image):
    reference = load_clip(model).preprocess_val(image)
    assert torch.equal(split_preprocess(model, image), reference)


def test_a_saved_model_folder_keeps_its_preprocessing(image, tmp_path):
    bundle = load_clip("lit-offline")
    folder = save_model_folder(bundle.model, "lit-offline", tmp_path / "lit", bundle.tokenizer)
    spec = preprocess_spec(str(folder))
    assert (list(np.broadcast_to(spec["size"], 2)), tuple(spec["mean"])) == ([224, 224], (0.5, 0.5, 0.5))
    assert torch.equal(split_preprocess(str(folder), image), bundle.preprocess_val(image))
