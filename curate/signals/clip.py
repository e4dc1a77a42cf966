"""CLIP image and text embeddings and their cosine (CLIPScore), with any open_clip model.

Two halves, so the accelerator only does model work: :meth:`ClipScorer.prepare` runs as CPU
tasks (decode, resize, crop to uint8 pixels: a quarter of float32's size in the object store)
and :meth:`ClipScorer.process` runs in an actor pool that loads the model once per actor
(normalise, encode, cosine), on a GPU when the actor has one.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.device import pick_device
from curate.images import decode
from curate.stage import ModelStageConfig, Stage, append_columns

EMBEDDING = pa.list_(pa.float16())


class ClipConfig(ModelStageConfig):
    model: str = Field(
        "ViT-B-32",
        description="open_clip architecture, a config in configs/models, a JSON config, or a model "
        "folder from `curate train clip` (e.g. lit-offline).",
    )
    pretrained: str | None = Field(
        None, description="open_clip tag (laion2b_s34b_b79k, openai: needs the hub) or a checkpoint file."
    )
    text_column: str = Field("caption", description="Text to score against the image.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype on GPU.")
    batch_size: int = Field(128, gt=0, description="Rows per model batch.")
    decode: Literal["cpu", "device"] = Field(
        "cpu",
        description="cpu: decode, resize and crop on CPU tasks before the model actors (any machine). "
        "device: send the encoded bytes to the actors and decode JPEGs there with nvJPEG on the actor's GPU "
        "(torchvision.io.decode_jpeg), resizing on the GPU too; other formats, and every image where no GPU "
        "decoder works, are decoded with Pillow in the actor.",
    )


class ClipScorer(Stage):
    """Writes ``clip_score`` (cosine of the normalised embeddings) and float16 embeddings."""

    name = "clip"
    Config = ClipConfig
    reads = ("image", "caption")
    writes = {"clip_score": pa.float32(), "clip_image_emb": EMBEDDING, "clip_text_emb": EMBEDDING}
    embedding_columns = ("clip_image_emb", "clip_text_emb")
    uses_actors = True
    has_prepare = True
    transient = ("_geometric", "_bundle", "_norm", "_jpeg_decoder")

    def __init__(self, config: ClipConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.reads = ("image", self.config.text_column)
        self._geometric = self._bundle = self._norm = self._device = self._hw = self._jpeg_decoder = None

    @property
    def model_id(self) -> str:
        return f"{self.config.model}/{self.config.pretrained}" if self.config.pretrained else self.config.model

    def check(self) -> None:
        """The model's config resolves and its weights are at hand (a tag is fetched once, here)."""
        from curate.models.clip import fetch_pretrained, preprocess_spec

        preprocess_spec(self.config.model, self.config.pretrained)
        fetch_pretrained(self.config.model, self.config.pretrained)

    def runs_prepare(self) -> bool:
        """With ``decode: device`` the actors decode, so no CPU tasks run before them."""
        return self.config.decode == "cpu"

    def prepare(self, batch: pa.Table) -> pa.Table:
        """CPU half: ``clip_pixels`` (H*W*3 uint8 bytes after resize + crop; null if undecodable)."""
        if self._geometric is None:
            from curate.models.clip import eval_transform, preprocess_spec

            self._geometric, _ = eval_transform(preprocess_spec(self.config.model, self.config.pretrained))
        pixels = [_pixels(data, self._geometric) for data in batch.column("image").to_pylist()]
        return append_columns(batch, {"clip_pixels": pixels}, {"clip_pixels": pa.binary()})

    def setup(self) -> None:
        import torch

        from curate.models.clip import eval_transform, load_clip, preprocess_spec

        self._device = pick_device()
        self._bundle = load_clip(self.config.model, self.config.pretrained, device=self._device)
        self._bundle.model.eval()
        spec = preprocess_spec(self.config.model, self.config.pretrained)
        _, (mean, std) = eval_transform(spec)
        self._hw = tuple(spec["size"]) if isinstance(spec["size"], (list, tuple)) else (spec["size"],) * 2
        self._norm = tuple(torch.tensor(v, device=self._device).view(1, 3, 1, 1) for v in (mean, std))
        if self.config.decode == "device":
            from curate.signals.device_decode import gpu_jpeg_decoder, tensor_geometric

            self._geometric, _ = eval_transform(spec)
            self._geometric = tensor_geometric(self._geometric)
            self._jpeg_decoder = gpu_jpeg_decoder(self._device)

    @property
    def decoder(self) -> str:
        """Which decoder the actor uses: nvjpeg (on the GPU) or pillow (set up first)."""
        return "nvjpeg" if self._jpeg_decoder is not None else "pillow"

    def process(self, batch: pa.Table) -> pa.Table:
        pixels = self._pixels(batch)
        texts = [t or "" for t in batch.column(self.config.text_column).to_pylist()]
        rows = [i for i, p in enumerate(pixels) if p is not None]
        scores, image_emb, text_emb = [None] * len(pixels), [None] * len(pixels), [None] * len(pixels)
        if rows:
            img, txt = self._embed([pixels[i] for i in rows], [texts[i] for i in rows])
            for j, i in enumerate(rows):
                scores[i] = float((img[j] * txt[j]).sum())
                image_emb[i], text_emb[i] = img[j].astype(np.float16), txt[j].astype(np.float16)
        out = batch.drop_columns([c for c in ("clip_pixels",) if c in batch.column_names])
        columns = {"clip_score": scores, "clip_image_emb": image_emb, "clip_text_emb": text_emb}
        return append_columns(out, columns, self.writes)

    def _pixels(self, batch: pa.Table) -> list:
        """Per row: resized, cropped pixels (H*W*3 bytes from ``prepare``, or a (3, H, W) uint8 tensor
        decoded in this actor with ``decode: device``), or None if undecodable."""
        if "clip_pixels" in batch.column_names:
            return batch.column("clip_pixels").to_pylist()
        if self.config.decode == "device":
            from curate.signals.device_decode import device_pixels

            return device_pixels(batch.column("image").to_pylist(), self._geometric, self._device, self._jpeg_decoder)
        return self.prepare(batch).column("clip_pixels").to_pylist()  # called without the runtime (tests)

    def _embed(self, pixels: list, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised image and text embeddings (float32 numpy) for one batch."""
        import torch

        if isinstance(pixels[0], bytes):
            h, w = self._hw
            x = torch.from_numpy(np.frombuffer(b"".join(pixels), np.uint8).reshape(len(pixels), h, w, 3).copy())
            x = x.permute(0, 3, 1, 2).to(self._device)
        else:
            x = torch.stack(pixels)
        x = (x.float() / 255 - self._norm[0]) / self._norm[1]
        tokens = self._bundle.tokenizer(texts)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        autocast = torch.autocast("cuda", dtype=dtype, enabled=self._device.type == "cuda" and dtype is not None)
        with torch.no_grad(), autocast:
            img = self._bundle.model.encode_image(x, normalize=True)
            txt = self._bundle.model.encode_text(tokens.to(self._device), normalize=True)
        return img.float().cpu().numpy(), txt.float().cpu().numpy()


def _pixels(data: bytes | None, geometric) -> bytes | None:
    if data is None:
        return None
    try:
        return np.asarray(geometric(decode(data)), dtype=np.uint8).tobytes()
    except Exception:  # undecodable or past the decode limit: no score (the image stage records decode_error)
        return None
