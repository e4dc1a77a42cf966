"""Rejection reason codes: the one place they are defined and documented.

Codes are short, stable strings; users' SQL depends on them. Add new codes here, never
rename one. ``curate reasons`` prints this table.
"""

from __future__ import annotations

REASONS: dict[str, str] = {
    "bad_url": "The URL is empty or not http(s); it was never requested.",
    "download_error": "The download failed (HTTP error, timeout, refused connection) "
    "or img2dataset wrote no record for the row.",
    "decode_error": "The bytes are not a readable image (corrupt, truncated, HTML, too large "
    "to decode safely).",
    "too_small": "The image's smaller side is below the recipe's min_side.",
    "too_large": "The image has more pixels than the recipe's max_pixels.",
    "bad_aspect": "The image's aspect ratio (long side / short side) exceeds max_aspect.",
    "caption_short": "The caption has fewer characters or words than the recipe asks.",
    "caption_long": "The caption has more characters than the recipe allows.",
    "dup_exact": "Byte-identical to a kept image (same sha256); dup_of names the kept key.",
}


def check(reason: str) -> str:
    """Return ``reason`` if it is a documented code, else raise ``KeyError``."""
    if reason not in REASONS:
        raise KeyError(f"undocumented reason code {reason!r}: add it to curate/reasons.py")
    return reason
