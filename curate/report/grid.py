"""Sample cards for the report: thumbnails read from ``raw/`` by offset, captions and URLs escaped."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from PIL import Image

from curate.acquire.raw import read_span
from curate.images import MAX_DECODE_PIXELS, decode, error_text

THUMB_SIDE = 160
CAPTION_CHARS = 160


def image_bytes(run_dir: str | Path, row: dict) -> bytes | None:
    """The row's image bytes from its raw shard (``raw_shard``, ``image_offset``, ``image_size``), or None."""
    shard, offset, size = row.get("raw_shard"), row.get("image_offset"), row.get("image_size")
    if shard is None or offset is None or not size:
        return None
    try:
        return read_span(run_dir, shard, offset, size)
    except FileNotFoundError:  # raw/ deleted after emit: the card says so
        return None


def decode_limit(manifest: dict) -> int:
    """The run's decode limit: the image stage's resolved ``max_decode_pixels`` when it ran, else the default."""
    for stage in manifest.get("recipe", {}).get("annotate", []):
        if isinstance(stage, dict) and stage.get("stage") == "image" and stage.get("max_decode_pixels"):
            return int(stage["max_decode_pixels"])
    return MAX_DECODE_PIXELS


def thumbnail(data: bytes, side: int = THUMB_SIDE, max_pixels: int = MAX_DECODE_PIXELS) -> bytes:
    """A JPEG thumbnail of at most ``side`` pixels, decoded by :func:`curate.images.decode` under its bomb
    guard (a JPEG decodes at reduced scale; a PNG past ``max_pixels`` is refused, never decoded).

    Raises :class:`curate.images.TooLarge` or Pillow's error when there is no thumbnail to make.
    """
    out = io.BytesIO()
    decode(data, max_pixels, fit=side).save(out, "JPEG", quality=80)
    return out.getvalue()


def cards(run_dir: str | Path, rows: list[dict], max_pixels: int = MAX_DECODE_PIXELS) -> str:
    """HTML grid of sample cards (see :func:`card`)."""
    return '<div class="grid">' + "".join(card(run_dir, row, max_pixels) for row in rows) + "</div>"


def card(run_dir: str | Path, row: dict, max_pixels: int = MAX_DECODE_PIXELS) -> str:
    """One sample: its thumbnail (or why there is none, and its URL), key, size, score and caption."""
    data = image_bytes(run_dir, row)
    why = row.get("decode_error") or row.get("error_message") or ("image not in raw/" if not data else None)
    thumb = None
    if data:
        try:
            thumb = thumbnail(data, max_pixels=max_pixels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            why = why or error_text(err)
    if thumb:
        src = "data:image/jpeg;base64," + base64.b64encode(thumb).decode()
        visual = f'<img src="{src}" alt="{escape(row["key"])}">'
    else:
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
