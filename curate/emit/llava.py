"""LLaVA instruction-tuning export: ``RUN/llava/{pretrain,instruct}.json`` and ``images/``.

Records follow LLaVA's format, ``{"id", "image", "conversations": [{"from", "value"}]}``, with
``image`` relative to ``RUN/llava`` (LLaVA's ``--image_folder``):

- ``pretrain.json`` (stage 1, feature alignment): ``<image>\\n`` + a describe-instruction drawn
  from :data:`BRIEF` → the final caption.
- ``instruct.json`` (stage 2): a conversation per image derived from its caption and metadata:
  a detailed description first, then two of: does a caption fit (yes/no, half of them with
  another image's caption), size in pixels, orientation, the original alt text (when the final
  caption differs from it). The yes/no turn quotes at most :data:`QUOTE_CHARS` of a caption, and
  follow-ups that would take a conversation past :data:`CONVERSATION_BYTES` are left out, so a long
  caption is said once, not again in a follow-up (the trainer's ``max_length`` must cover the rest).

Everything is drawn from a generator seeded by the sample key, so an export is reproducible.
Records are written per emitted shard (JSON lines in emit's scratch folder) and combined by
streaming into the two files, each one JSON array, whatever the number of shards.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import fsspec
import pyarrow as pa

from curate.emit.base import Sample, Writer
from curate.io import AtomicFile

BRIEF = (
    "Describe the image briefly.",
    "Write a short caption for this picture.",
    "What does this image show? Answer in one sentence.",
    "Give a concise description of the image.",
    "Summarize the content of this image.",
    "Caption this image.",
    "In a few words, what is in the picture?",
    "Provide a one-line description of this image.",
)
"""Stage-1 instructions (the answer is always the caption)."""

DETAILED = (
    "Describe this image.",
    "What can you see in this image?",
    "Tell me what is shown in the picture.",
    "Explain what this image depicts.",
)
"""First question of every stage-2 conversation."""

QUOTE_CHARS = 100
"""The yes/no turn quotes at most this many characters of a caption (cut at a word, ``...`` added)."""

CONVERSATION_BYTES = 640
"""Follow-ups are added to a stage-2 conversation only while its text (questions and answers, UTF-8)
stays within this many bytes: at most as many tokens for a byte-level tokenizer, fewer for BPE. The
first exchange (describe → caption) is always kept, however long the caption."""


def image_path(shard: str, key: str) -> str:
    """Where a sample's image lives, relative to ``RUN/llava``."""
    return f"images/{shard}/{key}.jpg"


def rng_for(key: str, salt: str) -> random.Random:
    """A generator seeded by the sample key (stable across runs and processes)."""
    return random.Random(int.from_bytes(hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()))


def pretrain_record(key: str, image: str, caption: str) -> dict:
    """One stage-1 pair: a brief describe-instruction → the caption."""
    instruction = rng_for(key, "brief").choice(BRIEF)
    return _record(key, image, [(f"<image>\n{instruction}", caption)])


def instruct_record(key: str, image: str, row: dict, other_caption: str | None) -> dict:
    """One stage-2 conversation about ``row`` (final caption, caption_alt, width, height)."""
    rng = rng_for(key, "instruct")
    turns = [(f"<image>\n{rng.choice(DETAILED)}", row["caption"])]
    makers = [m for m in QUESTIONS if _applicable(m, row)]
    for make in rng.sample(makers, k=min(2, len(makers))):
        turn = make(row, other_caption, rng)
        if text_bytes([*turns, turn]) <= CONVERSATION_BYTES:
            turns.append(turn)
    return _record(key, image, turns)


def text_bytes(turns: list[tuple[str, str]]) -> int:
    """UTF-8 bytes of a conversation's questions and answers."""
    return sum(len(q.encode()) + len(a.encode()) for q, a in turns)


def quote(caption: str, limit: int = QUOTE_CHARS) -> str:
    """``caption`` as the yes/no turn quotes it: at most ``limit`` characters, cut at a word."""
    if len(caption) <= limit:
        return caption
    head = caption[: limit - 3]
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip() + "..."


def _record(key: str, image: str, turns: list[tuple[str, str]]) -> dict:
    conversations = []
    for question, answer in turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": key, "image": image, "conversations": conversations}


def _caption_fits(row: dict, other: str | None, rng: random.Random) -> tuple[str, str]:
    if other and quote(other) != quote(row["caption"]) and rng.random() < 0.5:
        return f'Does this caption fit the image: "{quote(other)}"? Answer yes or no.', "No."
    return f'Does this caption fit the image: "{quote(row["caption"])}"? Answer yes or no.', "Yes."


def _size(row: dict, other: str | None, rng: random.Random) -> tuple[str, str]:
    return "How large is this image in pixels?", f"It is {row['width']} pixels wide and {row['height']} pixels tall."


def _orientation(row: dict, other: str | None, rng: random.Random) -> tuple[str, str]:
    w, h = row["width"], row["height"]
    shape = "square" if w == h else ("landscape: wider than tall" if w > h else "portrait: taller than wide")
    return "Is this image landscape, portrait or square?", f"It is {shape}."


def _alt_text(row: dict, other: str | None, rng: random.Random) -> tuple[str, str]:
    return "What alt text did the web page give this image?", row["caption_alt"]


def _applicable(make: Callable, row: dict) -> bool:
    """Size questions need the image stage's width/height; the alt-text one a caption that changed."""
    if make in (_size, _orientation):
        return row.get("width") is not None and row.get("height") is not None
    if make is _alt_text:
        alt = row.get("caption_alt")
        return bool(alt) and alt.strip() != (row.get("caption") or "").strip()
    return True


QUESTIONS: tuple[Callable[[dict, str | None, random.Random], tuple[str, str]], ...] = (
    _caption_fits,
    _size,
    _orientation,
    _alt_text,
)
"""Stage-2 follow-up question types: each returns (question, answer)."""


def llava_records(rows: list[dict], shard: str) -> tuple[list[dict], list[dict]]:
    """Stage-1 and stage-2 records for the kept rows of one emitted shard."""
    captions = [r["caption"] for r in rows]
    pretrain, instruct = [], []
    for i, row in enumerate(rows):
        key, image = row["key"], image_path(shard, row["key"])
        other = (
            captions[(i + 1 + rng_for(row["key"], "other").randrange(len(rows) - 1)) % len(rows)]
            if len(rows) > 1
            else None
        )
        pretrain.append(pretrain_record(key, image, row["caption"]))
        instruct.append(instruct_record(key, image, row, other))
    return pretrain, instruct


KINDS = ("pretrain", "instruct")
"""The two exports: ``RUN/llava/{kind}.json``."""

ROW_FIELDS = ("key", "caption", "caption_alt", "width", "height")
"""What :func:`llava_records` reads of a metadata row."""


class LlavaFormat(Writer):
    """``llava/images/{shard}/{key}.jpg`` per sample and ``llava/{pretrain,instruct}.json`` for the run."""

    name = "llava"
    folder = "llava"

    def open(self, shard: str, schema: pa.Schema) -> None:
        super().open(shard, schema)
        self._rows: list[dict] = []

    def write(self, sample: Sample) -> None:
        with fsspec.open(f"{self.root(self.out_dir)}/{image_path(self.shard, sample.key)}", "wb", auto_mkdir=True) as f:
            f.write(sample.jpeg)
        self._rows.append({k: sample.meta.get(k) for k in ROW_FIELDS})

    def close(self) -> dict:
        for kind, records in zip(KINDS, llava_records(self._rows, self.shard), strict=True):
            with AtomicFile(f"{self.scratch(self.out_dir)}/{self.shard}.{kind}.jsonl") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records).encode())
        return {"shard": self.shard, "records": len(self._rows)}

    @classmethod
    def finish(cls, out_dir: str, cfg, summaries: list[dict]) -> dict:
        for kind in KINDS:
            parts = [f"{cls.scratch(out_dir)}/{s['shard']}.{kind}.jsonl" for s in summaries]
            with AtomicFile(f"{cls.root(out_dir)}/{kind}.json") as out:
                combine_json_lines(parts, out)
        return {"llava_records": sum(s["records"] for s in summaries)}

    @classmethod
    def wrote(cls, record: dict) -> bool:
        return "llava_records" in record  # also in manifests from before emit recorded its formats


def combine_json_lines(parts: list[str], out) -> None:
    """Stream the JSON-lines files ``parts`` into ``out`` as one JSON array (``[]`` when there is nothing)."""
    out.write(b"[")
    sep = b"\n"
    for part in parts:
        with fsspec.open(part, "rb") as f:
            for line in f:
                if line.strip():
                    out.write(sep + line.rstrip(b"\n"))
                    sep = b",\n"
    out.write(b"\n]\n")
