"""Sample cards for the report: thumbnails read from ``raw/`` by offset, captions and URLs escaped."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import fsspec
from PIL import Image

THUMB_SIDE = 160
CAPTION_CHARS = 160


def image_bytes(run_dir: str | Path, row: dict) -> bytes | None:
    """The row's image bytes from its raw tar (``raw_shard``, ``image_offset``, ``image_size``), or None."""
    shard, offset, size = row.get("raw_shard"), row.get("image_offset"), row.get("image_size")
    if shard is None or offset is None or not size:
        return None
    try:
        with fsspec.open(f"{run_dir}/raw/{shard}.tar", "rb") as f:
            f.seek(offset)
            return f.read(size)
    except FileNotFoundError:  # raw/ deleted after emit: the card says so
        return None


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> bytes | None:
    """A JPEG thumbnail of at most ``side`` pixels, or None when ``data`` is not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            small = img.convert("RGB")
        small.thumbnail((side, side))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
        return out.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def cards(run_dir: str | Path, rows: list[dict]) -> str:
    """HTML grid of sample cards (see :func:`card`)."""
    return '<div class="grid">' + "".join(card(run_dir, row) for row in rows) + "</div>"


def card(run_dir: str | Path, row: dict) -> str:
    """One sample: its thumbnail (or why there is none, and its URL), key, size, score and caption."""
    data = image_bytes(run_dir, row)
    thumb = thumbnail(data) if data else None
    if thumb:
        src = "data:image/jpeg;base64," + base64.b64encode(thumb).decode()
        visual = f'<img src="{src}" alt="{escape(row["key"])}">'
    else:
        why = row.get("decode_error") or row.get("error_message") or "image not in raw/"
        visual = f'<div class="noimg">{escape(str(why))}<span class="url">{escape(row.get("url") or "")}</span></div>'
    caption = row.get("caption") or ""
    if len(caption) > CAPTION_CHARS:
        caption = caption[: CAPTION_CHARS - 1] + "…"
    return (
        f'<figure class="card">{visual}<figcaption><span class="meta">{escape(" · ".join(_facts(row)))}</span>'
        f"{escape(caption)}</figcaption></figure>"
    )


def _facts(row: dict) -> list[str]:
    facts = [str(row["key"])]
    if row.get("width") is not None and row.get("height") is not None:
        facts.append(f"{row['width']}×{row['height']}")
    if row.get("clip_score") is not None:
        facts.append(f"CLIP {row['clip_score']:.3f}")
    if row.get("dup_of"):
        facts.append(f"dup of {row['dup_of']}")
    return facts
