"""Threshold policies: one SQL predicate per reason over the stored signals."""

from __future__ import annotations

from pydantic import Field

from curate.decide.base import DecideDB, Policy, PolicyConfig


class Availability(Policy):
    """Rows that never became an image: bad URL, failed download, undecodable bytes.

    Always applied first; not listed in recipes.
    """

    name = "availability"
    reads = ("status", "decode_error")
    reasons = ("bad_url", "download_error", "decode_error")

    def apply(self, db: DecideDB) -> None:
        db.reject_where("s.status = 'bad_url'", "bad_url", self.name)
        db.reject_where(
            "s.status IS NULL OR s.status NOT IN ('success', 'failed_to_resize')",
            "download_error",
            self.name,
        )
        db.reject_where(
            "s.status = 'failed_to_resize' OR s.decode_error IS NOT NULL OR s.width IS NULL",
            "decode_error",
            self.name,
        )


class ImageSizeConfig(PolicyConfig):
    min_side: int | None = Field(
        None, ge=1, description="Reject when min(width, height) is smaller."
    )
    max_pixels: int | None = Field(None, ge=1, description="Reject when width*height is larger.")
    max_aspect: float | None = Field(
        None, ge=1.0, description="Reject when max(w,h)/min(w,h) is larger (1.0 = square only)."
    )


class ImageSize(Policy):
    """Size and shape thresholds on the original image."""

    name = "image_size"
    Config = ImageSizeConfig
    reads = ("width", "height")
    reasons = ("too_small", "too_large", "bad_aspect")

    def apply(self, db: DecideDB) -> None:
        c = self.config
        if c.min_side is not None:
            db.reject_where(f"least(s.width, s.height) < {int(c.min_side)}", "too_small", self.name)
        if c.max_pixels is not None:
            db.reject_where(
                f"s.width::BIGINT * s.height > {int(c.max_pixels)}", "too_large", self.name
            )
        if c.max_aspect is not None:
            db.reject_where(
                f"greatest(s.width, s.height) > {float(c.max_aspect)} * least(s.width, s.height)",
                "bad_aspect",
                self.name,
            )


class CaptionLengthConfig(PolicyConfig):
    min_chars: int = Field(0, ge=0, description="Reject captions with fewer characters.")
    min_words: int = Field(0, ge=0, description="Reject captions with fewer words.")
    max_chars: int | None = Field(None, ge=1, description="Reject captions with more characters.")


class CaptionLength(Policy):
    """Caption length thresholds."""

    name = "caption_length"
    Config = CaptionLengthConfig
    reads = ("caption_chars", "caption_words")
    reasons = ("caption_short", "caption_long")

    def apply(self, db: DecideDB) -> None:
        c = self.config
        db.reject_where(
            f"s.caption_chars < {int(c.min_chars)} OR s.caption_words < {int(c.min_words)}",
            "caption_short",
            self.name,
        )
        if c.max_chars is not None:
            db.reject_where(f"s.caption_chars > {int(c.max_chars)}", "caption_long", self.name)
