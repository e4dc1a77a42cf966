"""LLaVA-format data for training: JSON records → (pixels, input ids, labels) with assistant-only loss.

A record is LLaVA's ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``,
the image path relative to the image folder. Each exchange is tokenized in two parts, the user
part (masked) and the reply plus eos (supervised), and the parts are concatenated, so the mask is
aligned by construction. :func:`check_labels` still verifies it on every record: LLaVA's
``preprocess`` masks by re-tokenizing turns, and when that disagrees with the full tokenization
(tokenizer versions, BOS handling) or truncation cuts the replies, every label becomes
``IGNORE_INDEX`` and the loss is silently 0. Here that is an error naming the record.

:func:`check_files` reads and measures every record of the files a run trains on before its first
step: records longer than ``max_length`` are one :class:`RecordsTooLong` listing them all (or, when
the preset says ``too_long: drop``, dropped and counted), not an error when their batch comes up.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from curate.acquire.inputs import InputError
from curate.errors import NotFound
from curate.images import decode
from curate.models.llava import IGNORE_INDEX, encode_text, user_turn

log = logging.getLogger(__name__)

SHOWN = 5
"""How many of the longest records a too-long summary names."""


class LlavaDataError(InputError):
    """A LLaVA JSON file cannot be trained on as it is; the message says why and what to do."""


class RecordsTooLong(LlavaDataError):
    """Records are longer than the preset's ``max_length`` (a summary of all of them)."""


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
        raise NotFound(f"record {rid}: image {image_folder / record['image']} does not exist")


def read_records(path: str | Path) -> tuple[list[dict], Path]:
    """Records of a LLaVA JSON file and its image folder (the file's own folder)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LlavaDataError(
            f"{path}: cannot read LLaVA JSON ({err}); give RUN/llava/pretrain.json or instruct.json"
        ) from None
    if not isinstance(records, list) or not records:
        raise LlavaDataError(f"{path}: expected a non-empty JSON list of LLaVA records")
    return records, path.parent


@dataclass
class RecordSet:
    """The records of one LLaVA JSON file that fit ``max_length``, and how many did not."""

    path: Path
    records: list[dict]
    dropped: int

    @property
    def folder(self) -> Path:
        """The image folder: the file's own folder."""
        return self.path.parent


def record_lengths(records: list[dict], folder: Path, tokenizer, num_image_tokens: int) -> list[int]:
    """Tokens of every record (image slots included), checking each one's format on the way."""
    lengths = []
    for record in tqdm(records, desc="check records", mininterval=2.0, leave=False):
        validate_record(record, folder)
        lengths.append(len(encode_conversation(tokenizer, record["conversations"], num_image_tokens)[0]))
    return lengths


def too_long_summary(path: Path, records: list[dict], lengths: list[int], max_length: int) -> str | None:
    """``None`` when every record fits, else how many do not, the longest, and the ids of the longest few."""
    over = sorted(((n, i) for i, n in enumerate(lengths) if n > max_length), reverse=True)
    if not over:
        return None
    named = ", ".join(f"{records[i].get('id', '?')} ({n})" for n, i in over[:SHOWN])
    more = f" and {len(over) - SHOWN} more" if len(over) > SHOWN else ""
    return (
        f"{path}: {len(over)} of {len(records)} records exceed max_length={max_length} "
        f"(longest {over[0][0]} tokens): {named}{more}"
    )


def check_files(paths: list[Path], tokenizer, num_image_tokens: int, max_length: int, drop: bool) -> list[RecordSet]:
    """Read and measure every record of ``paths`` before any training. Records over ``max_length`` are one
    :class:`RecordsTooLong` summarising every file, or with ``drop`` left out, counted and logged."""
    sets, problems = [], []
    for path in paths:
        records, folder = read_records(path)
        try:
            lengths = record_lengths(records, folder, tokenizer, num_image_tokens)
        except (ValueError, FileNotFoundError) as err:  # the record's format: its message names it
            raise LlavaDataError(f"{path}: {err}") from None
        if problem := too_long_summary(path, records, lengths, max_length):
            problems.append(problem)
        fits = [r for r, n in zip(records, lengths, strict=True) if n <= max_length]
        sets.append(RecordSet(Path(path), fits, len(records) - len(fits)))
    if problems and (not drop or any(not s.records for s in sets)):
        left = "; no record left to train on" if drop else ""
        raise RecordsTooLong(
            "; ".join(problems)
            + left
            + ". Raise max_length (and the LM's max_position_embeddings), set too_long: drop "
            "in the preset, or reject long captions in the recipe (max_chars)."
        )
    for problem in problems:
        log.warning("dropped: %s", problem)
    return sets


class LlavaDataset(torch.utils.data.Dataset):
    """Records of one LLaVA JSON file (a :class:`RecordSet`): each gives (pixels, input ids, labels), checked on read."""

    def __init__(self, data: RecordSet, tokenizer, preprocess, num_image_tokens: int, max_length: int) -> None:
        self.records, self.folder = data.records, data.folder
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
