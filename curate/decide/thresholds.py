"""Threshold policies: one SQL predicate per reason over the stored signals."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from curate.decide.base import DecideDB, Policy, PolicyConfig
from curate.models.lid import LANGUAGE_SCRIPTS

ACQUIRE_REASONS = ("download_timeout", "too_large_download", "blocked_address", "blocked_redirect", "robots_disallowed")
"""Download refusals acquire records in ``status`` (see ``curate.acquire.fetch``), rejected before ``download_error``."""


class Availability(Policy):
    """Rows that never became an image: bad URL, refused or failed download, undecodable bytes.

    Always applied first; not listed in recipes. A download acquire refused or cut off keeps its
    specific reason (``status`` holds the code); URLs the url_filter blocked before acquire are
    rejected here under the stage name ``url_filter``.
    """

    name = "availability"
    reads = ("status", "decode_error")
    reasons = ("bad_url", "blocked_url", *ACQUIRE_REASONS, "no_image", "download_error", "decode_error")

    def apply(self, db: DecideDB) -> None:
        db.reject_where("s.status = 'bad_url'", "bad_url", self.name)
        db.reject_where("s.status = 'blocked_url'", "blocked_url", "url_filter")
        for code in ACQUIRE_REASONS:
            db.reject_where(f"s.status = '{code}'", code, self.name)
        db.reject_where(
            "s.status = 'no_image'", "no_image", self.name
        )  # curate.acquire.existing: a tar's key with no image
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
    min_side: int | None = Field(None, ge=1, description="Reject when min(width, height) is smaller.")
    max_pixels: int | None = Field(None, ge=1, description="Reject when width*height is larger.")
    min_bytes: int | None = Field(None, ge=1, description="Reject image files with fewer bytes.")
    max_aspect: float | None = Field(
        None, ge=1.0, description="Reject when max(w,h)/min(w,h) is larger (1.0 = square only)."
    )


class ImageSize(Policy):
    """Size and shape thresholds on the original image."""

    name = "image_size"
    Config = ImageSizeConfig
    reads = ("width", "height", "bytes")
    reasons = ("too_small", "file_too_small", "too_large", "bad_aspect")

    def apply(self, db: DecideDB) -> None:
        c = self.config
        if c.min_side is not None:
            db.reject_where(f"least(s.width, s.height) < {int(c.min_side)}", "too_small", self.name)
        if c.min_bytes is not None:
            db.reject_where(f"s.bytes < {int(c.min_bytes)}", "file_too_small", self.name)
        if c.max_pixels is not None:
            db.reject_where(f"s.width::BIGINT * s.height > {int(c.max_pixels)}", "too_large", self.name)
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


CALIBRATED_MIN_OTHER, CALIBRATED_MIN_OTHER_SHORT, CALIBRATED_SHORT_CHARS = 0.3, 0.6, 12
"""The language policy's ``rule: calibrated`` defaults, fitted by benchmarks/fit_language_rule.py on 3,000
English and 1,500 translated captions of the seed artists' emoji names (never the quality pool's):
non-English recall 0.847 with 3.0 % of the English captions rejected (lid.176.ftz)."""

VOCAB_KEEP, VOCAB_REJECT = 1.0, 0.1
"""The language policy's ``rule: vocab`` defaults (vocab_keep, vocab_reject), fitted by
``benchmarks/fit_language_rule.py --rule vocab`` on the same seed-name captions as CALIBRATED_*
(calibrated's fastText thresholds fixed): non-English recall 0.952 with 1.5 % of the English captions
rejected (calibrated: 0.847 at 3.0 %). vocab_reject 0.1: one word another language uses at least
Zipf 3.1 that English does not list is enough (no English word counts against English)."""


class LanguageFilterConfig(PolicyConfig):
    languages: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]] = Field(
        default_factory=lambda: ["en"], min_length=1, description="fastText language codes to keep."
    )
    rule: Literal["top1", "calibrated", "vocab"] = Field(
        "top1",
        description="top1: DataComp's rule, fastText's top-1 language must be a listed one (reads lang, "
        "lang_score). calibrated: also rejects captions whose letters are mostly in a script no listed language "
        "is written in, and asks an unlisted top-1 for min_other_score_short on captions shorter than "
        "short_chars (fastText misreads short English alt text); reads script and lang_chars, which the language "
        "stage writes since issue 20 (re-annotate older runs). Measured (benchmarks/filter_quality.py --only "
        "language, emoji pool, seeds 0 and 1): English wrongly rejected 2.7-3.2 %, non-English recall 0.85-0.86; "
        "top1 7.7-8.5 % / 0.92-0.94, top1 with min_other_score 0.5 0.9-1.0 % / 0.73-0.78. vocab (languages [en] "
        "only): calibrated, but an unlisted top-1 is overruled when the caption's words are English "
        "(vocab_en >= vocab_keep) and a caption whose words are another language's (vocab_en <= -vocab_reject) "
        "is rejected whatever fastText says; reads vocab_en, which the language stage writes with vocab: true "
        "(wordfreq). Measured (same benchmark): emoji seeds 0, 1 1.5 % / 0.996, 2.1 % / 0.963 (calibrated "
        "2.7 % / 0.86, 3.2 % / 0.85); icons 4.3 % / 0.975, 5.1 % / 0.988 (calibrated 3.7 % / 0.83, 4.9 % / 0.88).",
    )
    min_lang_score: float = Field(0.0, ge=0.0, le=1.0, description="Reject when fastText is less sure.")
    min_other_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Reject an unlisted language only when fastText gives it at least this score; below, keep "
        "the row (fastText misreads short captions). Unset: 0 with rule top1 (reject all, as DataComp), "
        f"{CALIBRATED_MIN_OTHER} with rule calibrated (fitted on the seed names: English wrongly rejected <= 3 %).",
    )
    min_other_score_short: float = Field(
        CALIBRATED_MIN_OTHER_SHORT,
        ge=0.0,
        le=1.0,
        description="rule calibrated: the score an unlisted top-1 needs on captions shorter than short_chars "
        f"(default {CALIBRATED_MIN_OTHER_SHORT}: keeps 'Pizza.' (it 0.49) and 'Letter I.' (de 0.53)).",
    )
    short_chars: int = Field(
        CALIBRATED_SHORT_CHARS,
        ge=0,
        description=f"rule calibrated: captions of fewer characters are short (default {CALIBRATED_SHORT_CHARS}, "
        "fitted with min_other_score on the seed names).",
    )
    vocab_keep: float = Field(
        VOCAB_KEEP,
        description="rule vocab: keep a caption fastText gives an unlisted top-1 when its words are at least "
        f"this English (vocab_en, capped Zipf points; default {VOCAB_KEEP}, fitted on the seed names).",
    )
    vocab_reject: float = Field(
        VOCAB_REJECT,
        gt=0.0,
        description="rule vocab: reject a caption whose words are at least this much another language's "
        f"(vocab_en <= -vocab_reject) whatever fastText says (default {VOCAB_REJECT}, fitted on the seed names).",
    )

    @model_validator(mode="after")
    def _vocab_is_english(self) -> LanguageFilterConfig:
        if self.rule == "vocab" and self.languages != ["en"]:
            raise ValueError(
                f"rule vocab weighs English words against other languages' (vocab_en), so it keeps languages "
                f"[en] only, not {self.languages}; use rule calibrated for other languages."
            )
        return self


class Language(Policy):
    """Keep captions in the listed languages (fastText top-1), optionally above a score.

    ``min_lang_score`` is how sure fastText must be of a listed language; ``min_other_score`` how sure
    of an unlisted one before the row is rejected (a guess below it is given the benefit of the doubt).
    ``rule: calibrated`` adds the script of the letters and a higher bar for short captions; ``rule: vocab``
    adds word frequencies (``vocab_en``): English words overrule fastText, another language's words reject.
    """

    name = "language"
    Config = LanguageFilterConfig
    reasons = ("wrong_language",)

    @property
    def reads(self) -> tuple[str, ...]:  # type: ignore[override]
        extra = {"top1": (), "calibrated": ("script", "lang_chars"), "vocab": ("script", "lang_chars", "vocab_en")}
        return ("lang", "lang_score", *extra[self.config.rule])

    def apply(self, db: DecideDB) -> None:
        c = self.config
        codes = ", ".join(f"'{code}'" for code in c.languages)  # validated: [a-z]{2,3}
        listed = f"s.lang IN ({codes})"
        calibrated = c.rule in ("calibrated", "vocab")
        min_other = c.min_other_score if c.min_other_score is not None else CALIBRATED_MIN_OTHER * calibrated
        other = f"s.lang_score >= {float(min_other)}"
        if calibrated:
            short = f"s.lang_chars < {int(c.short_chars)}"
            other = f"(({short} AND s.lang_score >= {float(c.min_other_score_short)}) OR (NOT {short} AND {other}))"
        if c.rule == "vocab":
            other = f"({other} AND s.vocab_en < {float(c.vocab_keep)})"
        predicate = (
            f"s.lang IS NULL OR ({listed} AND s.lang_score < {float(c.min_lang_score)}) OR (NOT {listed} AND {other})"
        )
        scripts = kept_scripts(c.languages)
        if calibrated and scripts:
            names = ", ".join(f"'{name}'" for name in scripts)  # from LANGUAGE_SCRIPTS: upper-case words
            predicate += f" OR (s.script IS NOT NULL AND s.script NOT IN ({names}))"
        if c.rule == "vocab":
            predicate += f" OR s.vocab_en <= {-float(c.vocab_reject)}"
        db.reject_where(predicate, "wrong_language", self.name)


def kept_scripts(languages: list[str]) -> tuple[str, ...]:
    """The scripts the listed languages are written in; () when one of them is not in LANGUAGE_SCRIPTS."""
    if any(lang not in LANGUAGE_SCRIPTS for lang in languages):
        return ()
    return tuple(sorted({script for lang in languages for script in LANGUAGE_SCRIPTS[lang]}))


BOILERPLATE_KINDS = ("no_letters", "url", "filename", "stock", "repetitive")
BoilerplateKind = Literal["no_letters", "url", "filename", "stock", "repetitive"]


class CaptionBoilerplateConfig(PolicyConfig):
    kinds: list[BoilerplateKind] = Field(
        default_factory=lambda: list(BOILERPLATE_KINDS),
        description="Which caption_boilerplate kinds to reject (all by default; [] turns it off).",
    )


class CaptionBoilerplate(Policy):
    """Reject captions the caption stage flagged as boilerplate (file names, URLs, stock text...)."""

    name = "caption_boilerplate"
    Config = CaptionBoilerplateConfig
    reads = ("caption_boilerplate",)
    reasons = ("caption_boilerplate",)

    def apply(self, db: DecideDB) -> None:
        if self.config.kinds:
            kinds = ", ".join(f"'{kind}'" for kind in self.config.kinds)  # validated literals
            db.reject_where(f"s.caption_boilerplate IN ({kinds})", "caption_boilerplate", self.name)


class ClipScoreConfig(PolicyConfig):
    min_score: float | None = Field(
        None,
        ge=-3.0,
        le=2.0,
        description="Reject below this cosine (LAION: 0.28 with OpenAI ViT-B/32); with relative: true, below "
        "this relative score (CSLS, around 0).",
    )
    keep_top: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Keep this fraction of the rows that reach this policy, by score over the whole "
        "pool, not per shard (DataComp's percentile method: 0.3 keeps the top 30 %).",
    )
    relative: bool = Field(
        False,
        description="Rank by the relative score (CSLS) computed at decide time from RUN/embeddings: the cosine "
        "minus how close the image is to captions in general and the caption to images in general.",
    )
    neighbours: int = Field(10, ge=1, le=1000, description="With relative: the k nearest neighbours averaged.")
    reference: int = Field(
        4096, ge=16, description="With relative: rows sampled (seeded) from the run as the neighbour pool."
    )
    seed: int = Field(0, description="With relative: the reference sample's seed.")

    @model_validator(mode="after")
    def _cosine_range(self) -> ClipScoreConfig:
        if not self.relative and self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ValueError(
                f"min_score {self.min_score} is not a cosine (-1 to 1); relative scores need relative: true"
            )
        return self


class ClipScoreFilter(Policy):
    """CLIPScore filtering on the stored ``clip_score``: an absolute floor and/or a global top fraction.

    ``keep_top`` keeps exactly ``round(fraction * n)`` of the ``n`` rows still kept when it
    runs, ordered by score (ties broken by key), so the fraction is exact and deterministic. With
    ``relative: true`` both apply to the CSLS score (:mod:`curate.decide.relative`), which decisions keep as
    ``score_clip_relative``.
    """

    name = "clip_score"
    Config = ClipScoreConfig
    reasons = ("low_clip_score",)

    @property
    def reads(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("clip_score", "clip_image_emb") if self.config.relative else ("clip_score",)

    def apply(self, db: DecideDB) -> None:
        c = self.config
        db.reject_where("s.clip_score IS NULL", "low_clip_score", self.name)
        source, score = ("kept", "clip_score")
        if c.relative:
            _relative_scores(db, c)
            source, score = ("kept_scores", "score_clip_relative")
        if c.min_score is not None:
            below = f"SELECT key, NULL::VARCHAR AS dup_of FROM {source} WHERE {score} < $min"
            db.reject_query(below, "low_clip_score", self.name, {"min": float(c.min_score)})
        if c.keep_top is not None:  # ranked by DuckDB (an out-of-core sort): no key list in memory
            (n,) = db.con.execute("SELECT count(*) FROM kept").fetchone()
            below = f"""SELECT key, NULL::VARCHAR AS dup_of FROM (
                           SELECT key, row_number() OVER (ORDER BY {score} DESC NULLS LAST, key) AS place
                           FROM {source})
                       WHERE place > $keep"""
            db.reject_query(below, "low_clip_score", self.name, {"keep": round(c.keep_top * n)})


def _relative_scores(db: DecideDB, c: ClipScoreConfig) -> None:
    """``verdict.score_clip_relative`` from the stored embeddings, and view ``kept_scores`` (kept rows + it)."""
    from curate.decide.relative import csls_scores

    if db.embeddings_dir is None:
        raise ValueError("clip_score relative: true needs RUN/embeddings (the clip stage's embeddings)")
    db.con.execute("CREATE OR REPLACE TABLE _clip_relative (key VARCHAR, score FLOAT)")
    for part in csls_scores(str(db.embeddings_dir), c.neighbours, c.reference, c.seed):
        db.con.register("_part", part)
        db.con.execute("INSERT INTO _clip_relative SELECT key, csls FROM _part")
        db.con.unregister("_part")
    db.con.execute("ALTER TABLE verdict ADD COLUMN IF NOT EXISTS score_clip_relative FLOAT")
    db.con.execute("UPDATE verdict SET score_clip_relative = r.score FROM _clip_relative r WHERE verdict.key = r.key")
    db.con.execute(
        """CREATE OR REPLACE TEMP VIEW kept_scores AS SELECT k.key, v.score_clip_relative
           FROM kept k JOIN verdict v USING (key)"""
    )
