"""Learned heads on stored CLIP embeddings: aesthetic, NSFW, watermark or your own, applied at decide time.

A head is a small torch module over one embedding column of ``RUN/embeddings`` (by default
``clip_image_emb``): logistic regression or a one- or two-layer MLP. It scores a finished run without
touching an image again, so a head can be trained, swapped and tuned with ``curate decide`` in seconds.

Formats :func:`load_head` reads:

- **curate's head folder** (``curate train head``): ``head.json`` (:class:`HeadSpec`: the embedding column,
  the CLIP model the embeddings must come from, the normalisation, the layer sizes, the output) and
  ``head.pt`` (a ``state_dict``, loaded with ``weights_only=True``);
- **LAION's published heads**, a ``.pth`` ``state_dict`` of an ``nn.Sequential`` named ``layers``: the
  improved aesthetic predictor (``sac+logos+ava1-l14-linearMSE.pth``: Linear 768-1024-128-64-16-1 with
  dropout and no activation, on L2-normalised ViT-L/14 image embeddings) and the H/14 NSFW detector
  (``h14_nsfw.pth``: ReLU + dropout between its Linears, on ViT-H/14). Between two Linears at indices
  i < j, ``j - i == 3`` means ReLU + Dropout, ``2`` Dropout only, ``1`` nothing (as the layer indices of
  both files give). LAION's older Keras NSFW detectors (autokeras, ViT-L/14 and B/32) need TensorFlow
  and are not read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curate.errors import UserError

HEAD_FILE = "head.json"
WEIGHTS_FILE = "head.pt"
SCORE_BATCH = 65_536


class HeadError(UserError):
    """A head that cannot be loaded, or that does not fit the run's embeddings."""


class HeadSpec(BaseModel):
    """What a head expects and how it is built (``head.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["curate", "laion"] = Field("curate", description="Who wrote the weights.")
    embedding: str = Field("clip_image_emb", description="The RUN/embeddings column the head reads.")
    clip_model: str | None = Field(None, description="The CLIP model the embeddings must come from (null: any).")
    clip_pretrained: str | None = Field(None, description="Its pretrained tag, when it has one.")
    normalize: bool = Field(True, description="L2-normalise each embedding before the head (LAION's heads do).")
    sizes: list[int] = Field(..., min_length=2, description="Linear layer sizes, input first: [512, 1], [512, 64, 1].")
    activations: list[Literal["relu", "none"]] = Field(
        default_factory=list, description="Between consecutive Linears (len(sizes) - 2 entries); default relu."
    )
    output: Literal["sigmoid", "identity"] = Field(
        "sigmoid", description="sigmoid: a probability (binary labels); identity: the raw value (numeric labels)."
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Held-out quality measured when trained.")


@dataclass
class Head:
    """A loaded head: its spec and torch module (eval mode, CPU)."""

    spec: HeadSpec
    module: Any  # torch.nn.Sequential; torch is imported lazily

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 scores of ``embeddings`` (n x d, float16 or float32), ``SCORE_BATCH`` rows at a time."""
        import torch

        if embeddings.ndim != 2 or embeddings.shape[1] != self.spec.sizes[0]:
            raise HeadError(
                f"the head reads {self.spec.sizes[0]}-d embeddings, the run stores {embeddings.shape[1:]} "
                f"in {self.spec.embedding}: use a head trained on this run's CLIP model"
            )
        out = np.empty(len(embeddings), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(embeddings), SCORE_BATCH):
                x = torch.from_numpy(np.asarray(embeddings[start : start + SCORE_BATCH], dtype=np.float32))
                if self.spec.normalize:
                    x = torch.nn.functional.normalize(x, dim=1)
                y = self.module(x)[:, 0]
                out[start : start + len(y)] = (torch.sigmoid(y) if self.spec.output == "sigmoid" else y).numpy()
        return out


def build_module(spec: HeadSpec) -> Any:
    """The ``nn.Sequential`` a spec describes (Linear, then per gap ReLU or nothing, ..., Linear)."""
    from torch import nn

    acts = spec.activations or ["relu"] * (len(spec.sizes) - 2)
    layers: list = []
    for i, (a, b) in enumerate(pairwise(spec.sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(acts) and acts[i] == "relu":
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def save_head(folder: str | Path, head: Head) -> Path:
    """Write ``head.json`` and ``head.pt`` into ``folder``."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HEAD_FILE).write_text(json.dumps(head.spec.model_dump(), indent=2) + "\n")
    torch.save(head.module.state_dict(), folder / WEIGHTS_FILE)
    return folder


def load_head(path: str | Path) -> Head:
    """A curate head folder, or a LAION ``layers.N`` state-dict file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        if not (path / HEAD_FILE).exists():
            raise HeadError(
                f"{path}: no {HEAD_FILE}. Give a folder written by 'curate train head' or a LAION .pth file."
            )
        spec = HeadSpec(**json.loads((path / HEAD_FILE).read_text()))
        return _with_weights(spec, _state(path / WEIGHTS_FILE))
    if not path.is_file():
        raise HeadError(f"{path}: no such head folder or file")
    return laion_head(_state(path))


def laion_head(state: dict) -> Head:
    """A LAION ``nn.Sequential`` head (``layers.N.weight``/``bias``) from its state dict."""
    indices = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k)))
    if not indices:
        raise HeadError("not a LAION head: no 'layers.N.weight' entries in the state dict")
    sizes = [int(state[f"layers.{indices[0]}.weight"].shape[1])]
    sizes += [int(state[f"layers.{i}.weight"].shape[0]) for i in indices]
    acts = ["relu" if b - a == 3 else "none" for a, b in pairwise(indices)]
    clip_model = {768: "ViT-L-14", 1024: "ViT-H-14"}.get(sizes[0])
    spec = HeadSpec(format="laion", sizes=sizes, activations=acts, output="identity", clip_model=clip_model)
    module = build_module(spec)
    linear_at = [i for i, layer in enumerate(module) if hasattr(layer, "weight")]
    ours = {
        f"{at}.{part}": state[f"layers.{i}.{part}"]
        for at, i in zip(linear_at, indices, strict=True)
        for part in ("weight", "bias")
    }
    return _with_weights(spec, ours, module)


def _with_weights(spec: HeadSpec, state: dict, module: Any = None) -> Head:
    module = build_module(spec) if module is None else module
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise HeadError(f"head weights do not match the sizes {spec.sizes}: {err}") from None
    return Head(spec, module.eval())


def _state(path: Path) -> dict:
    import torch

    if not path.exists():
        raise HeadError(f"{path}: missing head weights")
    return torch.load(path, map_location="cpu", weights_only=True)


def same_model(a: str | None, b: str | None) -> bool:
    """True when two CLIP model names denote the same architecture ('ViT-L/14' == 'vit-l-14')."""
    norm = lambda s: re.sub(r"[^a-z0-9]", "", (s or "").lower())  # noqa: E731
    return a is None or b is None or norm(a) == norm(b)
