"""Enrich stage ``recaption``: synthetic captions for the kept samples, and which caption to train on.

Runs after decide on kept rows only (:func:`curate.run.enrich`), in an actor pool that loads
the captioner once per actor (a GPU per actor when the cluster has GPUs). It writes
``caption_synthetic``; with a CLIP model to select with (``select_model``, by default the
annotate ``clip`` stage's model) it also writes the CLIP score of the alt caption and of the
synthetic one, so the ``both`` policy can pick per sample. The policy itself is applied at emit
(:func:`curate.emit.shards.final_caption`), so changing it needs no captioning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pyarrow as pa
from PIL import Image
from pydantic import Field

from curate.device import pick_device
from curate.images import decode
from curate.stage import ModelStageConfig, Stage, append_columns


class RecaptionConfig(ModelStageConfig):
    model: str = Field(
        description="Captioner: a `curate train llava` output or model folder, or a Hugging Face "
        "image-to-text / vision-language model (id or folder)."
    )
    backend: Literal["auto", "curate", "hf"] = Field("auto", description="auto: curate for llava folders, else hf.")
    prompt: str = Field("Describe the image briefly.", description="Instruction given with each image.")
    max_new_tokens: int = Field(128, gt=0, description="Longest caption, in tokens (bytes for byte-level models).")
    num_beams: int = Field(1, gt=0, description="Beam search width (1: greedy).")
    caption: Literal["alt", "synthetic", "both"] = Field(
        "synthetic",
        description="Caption to train on: the alt text, the synthetic one, or both stored and the one with the "
        "higher CLIP score picked per sample (synthetic when no CLIP model is configured).",
    )
    select_model: str | None = Field(None, description="CLIP for `both` (default: the annotate clip stage's).")
    select_pretrained: str | None = Field(None, description="open_clip tag or checkpoint of select_model.")
    batch_size: int = Field(32, gt=0, description="Images per generate call.")

    CACHE_EXEMPT: ClassVar[tuple[str, ...]] = ("caption",)  # which caption emit trains on, not what is stored


class Recaption(Stage):
    """Writes ``caption_synthetic`` and, with a selection CLIP, ``clip_score_alt``/``clip_score_synthetic``."""

    name = "recaption"
    Config = RecaptionConfig
    reads = ("image", "caption")
    writes = {"caption_synthetic": pa.string(), "clip_score_alt": pa.float32(), "clip_score_synthetic": pa.float32()}
    uses_actors = True
    transient = ("_captioner", "_clip")

    def __init__(self, config: RecaptionConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._captioner = self._clip = None

    @property
    def model_id(self) -> str:
        return self.config.model

    def check(self) -> None:
        """The captioner (and the selection CLIP) resolve before any work starts."""
        from curate.models.captioner import check_captioner

        check_captioner(self.config.model, self.config.backend)
        if self.config.select_model:
            from curate.models.clip import fetch_pretrained, preprocess_spec

            preprocess_spec(self.config.select_model, self.config.select_pretrained)
            fetch_pretrained(self.config.select_model, self.config.select_pretrained)

    def setup(self) -> None:
        from curate.models.captioner import load_captioner

        device = pick_device()
        cfg = self.config
        self._captioner = load_captioner(cfg.model, cfg.backend, device, cfg.max_new_tokens, cfg.num_beams)
        if cfg.select_model:
            from curate.models.clip import load_clip

            self._clip = load_clip(cfg.select_model, cfg.select_pretrained, device=device)
            self._clip.model.eval()

    def process(self, batch: pa.Table) -> pa.Table:
        images = [decode_image(b) for b in batch.column("image").to_pylist()]
        rows = [i for i, im in enumerate(images) if im is not None]
        synthetic: list[str | None] = [None] * len(images)
        for i, text in zip(rows, self._captioner.caption([images[i] for i in rows], self.config.prompt), strict=True):
            synthetic[i] = text
        alt = _alt_text(batch)
        score_alt: list[float | None] = [None] * len(images)
        score_syn: list[float | None] = [None] * len(images)
        if self._clip is not None and rows:
            picked = [images[i] for i in rows]
            a, s = self._scores(picked, [alt[i] for i in rows], [synthetic[i] or "" for i in rows])
            for j, i in enumerate(rows):
                score_alt[i], score_syn[i] = a[j], s[j]
        columns = {"caption_synthetic": synthetic, "clip_score_alt": score_alt, "clip_score_synthetic": score_syn}
        return append_columns(batch, columns, self.writes)

    def _scores(self, images: list[Image.Image], alt: list[str], synthetic: list[str]) -> tuple[list, list]:
        """CLIP cosine of each image with its alt caption and with its synthetic caption."""
        import torch

        model, device = self._clip.model, next(self._clip.model.parameters()).device
        pixels = torch.stack([self._clip.preprocess_val(im) for im in images]).to(device)
        with torch.no_grad():
            img = model.encode_image(pixels, normalize=True)
            txt_a = model.encode_text(self._clip.tokenizer(alt).to(device), normalize=True)
            txt_s = model.encode_text(self._clip.tokenizer(synthetic).to(device), normalize=True)
        return (img * txt_a).sum(-1).tolist(), (img * txt_s).sum(-1).tolist()


def _alt_text(batch: pa.Table) -> list[str]:
    """The alt caption as emit would use it: the caption stage's cleaned text when present."""
    raw = batch.column("caption").to_pylist()
    norm = batch.column("caption_norm").to_pylist() if "caption_norm" in batch.column_names else [None] * len(raw)
    return [n or r or "" for n, r in zip(norm, raw, strict=True)]


def decode_image(data: bytes | None) -> Image.Image | None:
    """The image as :func:`curate.images.decode` gives it; None when absent, undecodable or too large."""
    if data is None:
        return None
    try:
        return decode(data)
    except Exception:  # undecodable bytes cannot have been kept; stay null rather than fail the batch
        return None


def cache_key(stage: Recaption) -> dict:
    """The config fields whose change invalidates stored captions (model, prompt, selection CLIP...)."""
    return stage.config.cache_key()
