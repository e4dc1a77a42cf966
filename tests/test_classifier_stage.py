"""The ``classifier`` stage: timm and transformers image classifiers from local folders give {name}_score."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curate.recipe import build_recipe
from curate.signals.classifier import ImageClassifier

SIZE = 32


def images(n: int, size: tuple[int, int] = (SIZE, SIZE)) -> list[bytes]:
    out = []
    for i in range(n):
        array = np.random.default_rng(i).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "PNG")  # lossless: the model sees exactly these pixels
        out.append(buf.getvalue())
    return out


def table(data: list[bytes | None]) -> pa.Table:
    return pa.table({"key": [f"{i:03d}" for i in range(len(data))], "image": pa.array(data, pa.binary())})


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A tiny transformers ViT classifier (random weights) saved with its image processor."""
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=SIZE,
        patch_size=8,
        num_labels=2,
        id2label={0: "clean", 1: "watermark"},
        label2id={"clean": 0, "watermark": 1},
    )
    folder = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def test_transformers_folder_scores_equal_the_model_run_by_hand(vit_folder):
    from transformers import ViTForImageClassification, ViTImageProcessor

    data = images(6)
    recipe = {"annotate": ["image", {"stage": "classifier", "model": str(vit_folder), "name": "watermark"}]}
    recipe["annotate"][1]["label"] = "watermark"
    stage = build_recipe(recipe).annotate[1]  # as a recipe builds it
    out = stage(table([*data, None, b"not an image"]))
    got = out.column("watermark_score").to_pylist()
    assert got[6:] == [None, None]  # no image, undecodable: no score, no crash
    model = ViTForImageClassification.from_pretrained(vit_folder).eval()
    inputs = ViTImageProcessor.from_pretrained(vit_folder)(
        [Image.open(io.BytesIO(b)) for b in data], return_tensors="pt"
    )
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).logits, 1)[:, 1].numpy()
    np.testing.assert_allclose(got[:6], expected, atol=2e-3)


def test_timm_folder_in_the_hub_layout_and_a_resize(tmp_path):
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    save_file(net.state_dict(), tmp_path / "model.safetensors")
    pretrained_cfg = {"input_size": [3, SIZE, SIZE], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    config = {
        "architecture": "test_efficientnet",
        "num_classes": 3,
        "label_names": ["a", "b", "c"],
        "pretrained_cfg": pretrained_cfg,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    stage = ImageClassifier(ImageClassifier.Config(model=str(tmp_path), name="odd", label="c"))
    scores = stage(table(images(4, (48, 40)))).column("odd_score").to_numpy()
    assert scores.shape == (4,) and np.all((scores > 0) & (scores < 1)) and len(set(scores.round(6))) == 4
    with pytest.raises(ValueError, match=r"no class 'z'; its classes are \['a', 'b', 'c'\]"):
        ImageClassifier(ImageClassifier.Config(model=str(tmp_path), label="z")).setup()
