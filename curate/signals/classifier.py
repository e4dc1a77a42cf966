"""An image-classification model as an annotate stage: ``{name}_score`` = the probability of one class.

For heads that need pixels, not CLIP embeddings (LAION's watermark detector is a timm EfficientNet; NSFW
and aesthetic classifiers on the Hugging Face hub): any timm or transformers image-classification model,
from a local folder (offline) or a hub id (online). Like the ``clip`` stage it has two halves: ``prepare``
(CPU tasks: decode, resize the shorter side to the model's input size, centre-crop, uint8 pixels) and
``process`` (an actor pool: normalise, forward, softmax; a GPU when the actor has one).

Folders it reads:

- **timm** (what ``timm``'s ``push_to_hf_hub`` writes): ``config.json`` with ``architecture``,
  ``num_classes``, optional ``label_names`` and ``pretrained_cfg`` (``input_size``, ``mean``, ``std``),
  and ``model.safetensors`` or ``pytorch_model.bin``;
- **transformers**: a ``save_pretrained`` folder of an ``AutoModelForImageClassification`` model with its
  image processor (``preprocessor_config.json``).

Hub ids (``timm/NAME`` or a transformers id) use the libraries' own download code, which needs the
internet; offline, give a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.device import pick_device
from curate.images import decode
from curate.stage import ModelStageConfig, Stage, append_columns

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ClassifierConfig(ModelStageConfig):
    model: str = Field(..., description="A timm or transformers image-classification folder, or a hub id (online).")
    name: str = Field(
        "classifier", pattern=r"^[a-z][a-z0-9_]*$", description="Column prefix: the stage writes {name}_score."
    )
    label: int | str = Field(1, description="The class whose probability is the score: an index or a label name.")
    batch_size: int = Field(64, gt=0, description="Rows per model batch.")


def model_kind(model: str) -> str:
    """``timm`` or ``transformers``: a folder by its config.json, a hub id by its ``timm/`` prefix."""
    config = Path(model) / "config.json"
    if config.is_file():
        return "timm" if "architecture" in json.loads(config.read_text()) else "transformers"
    return "timm" if model.startswith(("timm/", "hf-hub:timm/")) else "transformers"


def preprocess_spec(model: str) -> dict[str, Any]:
    """Input height/width, mean and std, from the folder's configs (no weights are loaded)."""
    folder = Path(model)
    if model_kind(model) == "timm":
        cfg = json.loads((folder / "config.json").read_text()).get("pretrained_cfg", {}) if folder.is_dir() else {}
        _, h, w = cfg.get("input_size", (3, 224, 224))
        return {"size": (h, w), "mean": tuple(cfg.get("mean", IMAGENET[0])), "std": tuple(cfg.get("std", IMAGENET[1]))}
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()  # transformers' image processors import torchvision
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(model)
    size = getattr(proc, "crop_size", None) or proc.size
    h, w = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    return {"size": (h, w), "mean": tuple(proc.image_mean), "std": tuple(proc.image_std)}


class ImageClassifier(Stage):
    """Writes ``{name}_score``: the model's probability of ``label`` for each decodable image."""

    name = "classifier"
    Config = ClassifierConfig
    reads = ("image",)
    uses_actors = True
    has_prepare = True
    transient = ("_model", "_norm")

    def __init__(self, config: ClassifierConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.writes = {f"{self.config.name}_score": pa.float32()}
        self._model = self._norm = self._spec = self._index = self._device = None

    @property
    def model_id(self) -> str:
        return self.config.model

    def check(self) -> None:
        """The model's preprocessing config resolves (a folder is read, a hub id fetched once)."""
        preprocess_spec(self.config.model)

    def prepare(self, batch: pa.Table) -> pa.Table:
        """CPU half: ``classifier_pixels`` (H*W*3 uint8 after resize + centre crop; null if undecodable)."""
        if self._spec is None:
            self._spec = preprocess_spec(self.config.model)
        pixels = [_pixels(data, self._spec["size"]) for data in batch.column("image").to_pylist()]
        return append_columns(batch, {"classifier_pixels": pixels}, {"classifier_pixels": pa.binary()})

    def setup(self) -> None:
        import torch

        self._device = pick_device()
        self._model, labels = load_classifier(self.config.model)
        self._model.to(self._device).eval()
        self._index = _class_index(self.config.label, labels, self.config.model)
        self._spec = preprocess_spec(self.config.model)
        self._norm = tuple(torch.tensor(v).view(1, 3, 1, 1) for v in (self._spec["mean"], self._spec["std"]))

    def process(self, batch: pa.Table) -> pa.Table:
        if "classifier_pixels" not in batch.column_names:
            batch = self.prepare(batch)  # called without the runtime (tests, notebooks)
        pixels = batch.column("classifier_pixels").to_pylist()
        rows = [i for i, p in enumerate(pixels) if p is not None]
        scores: list[float | None] = [None] * len(pixels)
        if rows:
            for j, s in zip(rows, self._probabilities([pixels[i] for i in rows]), strict=True):
                scores[j] = float(s)
        column = f"{self.config.name}_score"
        return append_columns(batch.drop_columns(["classifier_pixels"]), {column: scores}, self.writes)

    def _probabilities(self, pixels: list[bytes]) -> np.ndarray:
        import torch

        h, w = self._spec["size"]
        x = torch.from_numpy(np.frombuffer(b"".join(pixels), np.uint8).reshape(len(pixels), h, w, 3).copy())
        x = (x.permute(0, 3, 1, 2).float() / 255 - self._norm[0]) / self._norm[1]
        with torch.no_grad():
            out = self._model(x.to(self._device))
            logits = getattr(out, "logits", out)
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, self._index]
        return probs.float().cpu().numpy()


def load_classifier(model: str) -> tuple[Any, list[str]]:
    """(torch module returning logits, class names) of a timm or transformers folder or hub id."""
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()  # timm and transformers' vision models import torchvision
    if model_kind(model) == "transformers":
        from transformers import AutoModelForImageClassification

        net = AutoModelForImageClassification.from_pretrained(model)
        return net, [net.config.id2label[i] for i in range(net.config.num_labels)]
    import timm

    folder = Path(model)
    if not folder.is_dir():
        net = timm.create_model(model if model.startswith("hf-hub:") else f"hf-hub:{model}", pretrained=True)
        return net, list(getattr(net, "pretrained_cfg", {}).get("label_names") or [])
    cfg = json.loads((folder / "config.json").read_text())
    net = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"])
    net.load_state_dict(_weights(folder))
    return net, list(cfg.get("label_names") or [str(i) for i in range(cfg["num_classes"])])


def _weights(folder: Path) -> dict:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    import torch

    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def _class_index(label: int | str, labels: list[str], model: str) -> int:
    if isinstance(label, int):
        return label
    if label not in labels:
        raise ValueError(f"classifier {model}: no class {label!r}; its classes are {labels}")
    return labels.index(label)


def _pixels(data: bytes | None, size: tuple[int, int]) -> bytes | None:
    """Resize the shorter side to fit ``size`` (bicubic), centre-crop to it, RGB uint8 bytes."""
    if data is None:
        return None
    try:
        img = decode(data)
    except Exception:  # undecodable: no score (the image stage records decode_error)
        return None
    h, w = size
    scale = max(h / img.height, w / img.width)
    if (img.width, img.height) != (w, h):
        from PIL import Image

        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return np.asarray(img, dtype=np.uint8).tobytes()
