"""A LLaVA-style vision-language model: CLIP image tower → 2-layer MLP projector → causal LM.

The image tower is any CLIP :func:`curate.models.clip.load_clip` loads (ours, or an open_clip
model); its patch tokens (ViT) or spatial features (timm trunks) become ``num_image_tokens``
LM embeddings. The LM is a transformers causal LM by hub id or local path, or built from a config
(random weights: the tiny CPU preset). The image tower stays frozen, as in LLaVA.

Prompts use one plain template, the same in training and generation::

    USER: <image>\\n{instruction} ASSISTANT: {answer}</s>

A saved model is a folder (``save_llava``/``load_llava``)::

    DIR/llava.json              what to rebuild: image token, number of image tokens, template
    DIR/vision/                 the CLIP, open_clip ``local-dir`` layout
    DIR/projector.safetensors   the projector
    DIR/lm/                     the LM and its tokenizer (save_pretrained; LoRA merged in)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from curate.models.compat import ensure_torchvision

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
USER, ASSISTANT = "USER:", "ASSISTANT:"


class LMSpec(BaseModel):
    """The language model: a hub id / local path, or a transformers config built from scratch."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Hugging Face id or local folder of a causal LM.")
    config: dict[str, Any] | None = Field(None, description="transformers config (model_type, sizes): random init.")
    tokenizer: str | None = Field(
        None, description="Tokenizer id or folder (default: the LM's own); `bytes`: byte-level (ByT5's, no files)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> LMSpec:
        if (self.name is None) == (self.config is None):
            raise ValueError("give the LM as `name` (hub id or folder) or as `config` (built from scratch), not both")
        if self.config is not None and self.tokenizer is None:
            raise ValueError("an LM built from `config` needs `tokenizer` (an id or a tokenizer folder)")
        return self


class Llava(nn.Module):
    """Image tower (frozen) + projector + causal LM; image placeholder tokens take the image features."""

    def __init__(self, clip, lm, tokenizer, preprocess, vision_source: str) -> None:
        super().__init__()
        self.clip, self.lm, self.tokenizer, self.preprocess = clip, lm, tokenizer, preprocess
        self.vision_source = vision_source
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.clip.requires_grad_(False)
        self.clip.eval()
        _, self.num_image_tokens, width = vision_tokens(clip.visual, _probe(preprocess)).shape
        hidden = lm.get_input_embeddings().embedding_dim
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def train(self, mode: bool = True) -> Llava:
        super().train(mode)
        self.clip.eval()  # frozen tower: BatchNorm statistics and dropout stay in eval mode
        return self

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, num_image_tokens, hidden) projected features of preprocessed images."""
        with torch.no_grad():
            feats = vision_tokens(self.clip.visual, pixels)
        return self.projector(feats.to(self.projector[0].weight.dtype))

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's image placeholders replaced by its image features."""
        emb = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        if int(slots.sum()) != pixels.shape[0] * self.num_image_tokens:
            raise ValueError(f"each sequence needs exactly {self.num_image_tokens} image tokens (one {IMAGE_TOKEN})")
        img = self.image_embeddings(pixels).to(emb.dtype)
        return emb.masked_scatter(slots.unsqueeze(-1), img.reshape(-1, img.shape[-1]))

    def forward(self, input_ids, attention_mask, labels, pixels) -> torch.Tensor:
        """Mean next-token loss over the supervised (assistant) tokens.

        Logits are computed only where a label is supervised: with a 30k+ vocabulary the output
        layer over every position (image tokens, prompts, padding) dominates the step otherwise.
        """
        decoder = self.lm.get_decoder()
        hidden = decoder(inputs_embeds=self.embed(input_ids, pixels), attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])
        return nn.functional.cross_entropy(logits.float(), targets[keep])

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 48, **kwargs) -> list[str]:
        """Decode a reply per (image, prompt ids); greedy unless ``kwargs`` say otherwise."""
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=pixels.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=pixels.device)
        kwargs.setdefault("do_sample", False)
        out = self.lm.generate(
            inputs_embeds=self.embed(ids, pixels),
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            **kwargs,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the generation prompt for ``instruction`` (image placeholders expanded)."""
        return encode_text(self.tokenizer, user_turn(f"{IMAGE_TOKEN}\n{instruction}"), self.num_image_tokens)


def user_turn(text: str) -> str:
    """The masked part of one exchange: the user's message and the assistant cue."""
    return f"{USER} {text} {ASSISTANT}"


def encode_text(tokenizer, text: str, num_image_tokens: int) -> list[int]:
    """Tokenize ``text`` without special tokens, expanding each ``<image>`` to the image slots."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids += [image_id] * num_image_tokens
        if piece.strip():
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids


def vision_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features of an open_clip image tower: ViT patch tokens, timm spatial features,
    or (other towers) the pooled embedding as a single token."""
    if hasattr(visual, "output_tokens") and hasattr(visual, "transformer"):
        visual.output_tokens = True
        try:
            return visual(pixels)[1]
        finally:
            visual.output_tokens = False
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "forward_features"):
        feats = trunk.forward_features(pixels)
        return feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats
    return visual(pixels).unsqueeze(1)


def _probe(preprocess) -> torch.Tensor:
    from PIL import Image

    return preprocess(Image.new("RGB", (64, 64))).unsqueeze(0)


def load_tokenizer(lm: LMSpec):
    """The LM's tokenizer with ``<image>`` added, and eos/pad defined (BERT-style ones lack eos)."""
    ensure_torchvision()  # transformers imports torchvision
    from transformers import AutoTokenizer, ByT5Tokenizer

    tok = ByT5Tokenizer() if lm.tokenizer == "bytes" else AutoTokenizer.from_pretrained(lm.tokenizer or lm.name)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.eos_token is None:
        tok.eos_token = tok.sep_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_llava(vision: str, vision_pretrained: str | None, lm: LMSpec | dict, device: str = "cpu") -> Llava:
    """A new model: the given CLIP's image tower, a fresh projector, the LM (pretrained or random)."""
    ensure_torchvision()  # transformers imports torchvision
    from transformers import AutoConfig, AutoModelForCausalLM

    from curate.models.clip import load_clip, resolve_placeholders

    lm = LMSpec(**resolve_placeholders(lm.model_dump() if isinstance(lm, LMSpec) else lm))
    tokenizer = load_tokenizer(lm)
    if lm.config is not None:
        cfg = dict(lm.config)
        vocab = max(cfg.pop("vocab_size", 0), len(tokenizer))  # a larger vocab_size pads the embedding
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, vocab_size=vocab)
        language = AutoModelForCausalLM.from_config(config)
    else:
        language = AutoModelForCausalLM.from_pretrained(lm.name)
        if language.get_input_embeddings().num_embeddings < len(tokenizer):
            language.resize_token_embeddings(len(tokenizer))
    language.config.pad_token_id = tokenizer.pad_token_id
    language.config.eos_token_id = tokenizer.eos_token_id
    bundle = load_clip(vision, vision_pretrained)
    return Llava(bundle.model, language, tokenizer, bundle.preprocess_val, vision).to(device)


def save_llava(model: Llava, folder: str | Path) -> Path:
    """Write ``model`` as a self-contained folder (see the module docstring); LoRA is merged in."""
    from safetensors.torch import save_file

    from curate.models.clip import model_folder, open_clip_module, registered_name, save_model_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = model_folder(model.vision_source)
    if source is not None and source.resolve() != (folder / "vision").resolve():
        shutil.copytree(source, folder / "vision", dirs_exist_ok=True)
    elif source is None:
        save_model_folder(model.clip, registered_name(model.vision_source, open_clip_module()), folder / "vision")
    lm = model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
    lm.save_pretrained(folder / "lm")
    model.tokenizer.save_pretrained(folder / "lm")
    state = {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()}
    save_file(state, str(folder / "projector.safetensors"))
    meta = {"format": "curate-llava/1", "num_image_tokens": model.num_image_tokens, "image_token": IMAGE_TOKEN}
    (folder / "llava.json").write_text(json.dumps({**meta, "template": user_turn("{instruction}")}, indent=2))
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder, or a ``curate train llava`` output (its last stage)."""
    path = Path(path)
    for candidate in (path, path / "stage2", path / "stage1"):
        if (candidate / "llava.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: not a LLaVA model folder (no llava.json, nor in stage2/ or stage1/). "
        "Give a folder written by `curate train llava`."
    )


def load_llava(path: str | Path, device: str = "cpu") -> Llava:
    """Load a folder written by :func:`save_llava` (or a training output: its last stage)."""
    ensure_torchvision()  # transformers imports torchvision
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models.clip import load_clip

    folder = resolve_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(folder / "lm")
    tokenizer.padding_side = "left"
    language = AutoModelForCausalLM.from_pretrained(folder / "lm")
    bundle = load_clip(str(folder / "vision"))
    model = Llava(bundle.model, language, tokenizer, bundle.preprocess_val, str(folder / "vision"))
    model.projector.load_state_dict(load_file(str(folder / "projector.safetensors")))
    return model.to(device).eval()
