"""LLaVA-format data for training: JSON records → (pixels, input ids, labels) with assistant-only loss.

A record is LLaVA's ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``,
the image path relative to the image folder. Each exchange is tokenized in two parts, the user
part (masked) and the reply plus eos (supervised), and the parts are concatenated, so the mask is
aligned by construction. :func:`check_labels` still verifies it on every record: LLaVA's
``preprocess`` masks by re-tokenizing turns, and when that disagrees with the full tokenization
(tokenizer versions, BOS handling) or truncation cuts the replies, every label becomes
``IGNORE_INDEX`` and the loss is silently 0. Here that is an error naming the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from curate.images import decode
from curate.models.llava import IGNORE_INDEX, encode_text, user_turn


class TokenizationMismatch(ValueError):
    """The supervised labels are not exactly the assistant replies (the loss would be wrong or 0)."""


def encode_conversation(tokenizer, conversations: list[dict], num_image_tokens: int) -> tuple[list[int], list[int]]:
    """Input ids and labels (``IGNORE_INDEX`` outside the assistant replies) of one conversation."""
    ids: list[int] = []
    labels: list[int] = []
    for turn in conversations:
        if turn["from"] == "human":
            part = encode_text(tokenizer, user_turn(turn["value"].strip()), num_image_tokens)
            ids += part
            labels += [IGNORE_INDEX] * len(part)
        else:
            part = reply_ids(tokenizer, turn["value"])
            ids += part
            labels += part
    return ids, labels


def reply_ids(tokenizer, text: str) -> list[int]:
    """The supervised tokens of one assistant reply: its text and the eos token."""
    return [*tokenizer.encode(" " + text.strip(), add_special_tokens=False), tokenizer.eos_token_id]


def check_labels(tokenizer, record: dict, ids: list[int], labels: list[int], max_length: int) -> None:
    """Raise :class:`TokenizationMismatch` unless the supervised tokens are exactly the replies."""
    rid = record.get("id", "?")
    if len(ids) > max_length:
        raise TokenizationMismatch(
            f"record {rid}: {len(ids)} tokens exceed max_length={max_length}; truncating would cut the "
            "assistant reply (loss on nothing). Raise max_length or shorten the conversation."
        )
    expected = [
        t for turn in record["conversations"] if turn["from"] == "gpt" for t in reply_ids(tokenizer, turn["value"])
    ]
    supervised = [label for label in labels if label != IGNORE_INDEX]
    aligned = all(label in (IGNORE_INDEX, tok) for tok, label in zip(ids, labels, strict=True))
    if not supervised or supervised != expected or not aligned:
        raise TokenizationMismatch(
            f"record {rid}: labels do not match the assistant replies ({len(supervised)} supervised tokens, "
            f"{len(expected)} expected). The loss would be wrong or 0; check the tokenizer and template."
        )


def validate_record(record: dict, image_folder: Path) -> None:
    """LLaVA's format: id, an existing image, alternating human/gpt turns, one ``<image>`` first."""
    rid = record.get("id", "?")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise ValueError(f"record {rid}: conversations must be a non-empty list of human/gpt pairs")
    for i, turn in enumerate(turns):
        if turn.get("from") != ("human" if i % 2 == 0 else "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"record {rid}: turn {i} must be from {'human' if i % 2 == 0 else 'gpt'} with a value")
    if sum(t["value"].count("<image>") for t in turns) != 1 or "<image>" not in turns[0]["value"]:
        raise ValueError(f"record {rid}: exactly one <image>, in the first human turn")
    if not (image_folder / record["image"]).is_file():
        raise FileNotFoundError(f"record {rid}: image {image_folder / record['image']} does not exist")


def read_records(path: str | Path) -> tuple[list[dict], Path]:
    """Records of a LLaVA JSON file and its image folder (the file's own folder)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: cannot read LLaVA JSON ({err}); give RUN/llava/pretrain.json or instruct.json"
        ) from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of LLaVA records")
    return records, path.parent


class LlavaDataset(torch.utils.data.Dataset):
    """Records of one LLaVA JSON file: each gives (pixels, input ids, labels), checked on read."""

    def __init__(self, path: str | Path, tokenizer, preprocess, num_image_tokens: int, max_length: int) -> None:
        self.records, self.folder = read_records(path)
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.num_image_tokens, self.max_length = num_image_tokens, max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[int], list[int]]:
        record = self.records[i]
        validate_record(record, self.folder)
        ids, labels = encode_conversation(self.tokenizer, record["conversations"], self.num_image_tokens)
        check_labels(self.tokenizer, record, ids, labels, self.max_length)
        pixels = self.preprocess(decode(self.folder / record["image"]))
        return pixels, ids, labels


def collate(batch: list[tuple[torch.Tensor, list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding is masked out of attention and loss."""
    width = max(len(ids) for _, ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (_, seq, lab) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    pixels = torch.stack([p for p, _, _ in batch])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixels": pixels}
