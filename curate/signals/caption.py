"""Caption signals computed from the text alone: raw counts, a normalised caption, boilerplate.

``caption_chars`` and ``caption_words`` are counted on the RAW caption exactly as DataComp does
(``len(text)`` and ``len(text.split())``), so recipes that reproduce published filters stay exact.
Everything else is computed on ``caption_norm``.
"""

from __future__ import annotations

import hashlib
import html
import re
import string

import ftfy
import pyarrow as pa
import pyarrow.compute as pc

from curate.stage import Stage, StageConfig, append_columns

# --- normalisation -------------------------------------------------------------------------

_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,  # done by _unescape, which only touches ';'-terminated entities
    uncurl_quotes=False,  # curly quotes are legitimate text
    fix_latin_ligatures=False,  # leave legitimate characters alone
    fix_character_width=False,  # would rewrite full-width CJK punctuation
    fix_line_breaks=False,  # all whitespace is collapsed afterwards anyway
    explain=False,
)
"""ftfy repairs mojibake, C1 controls and terminal escapes; it must not restyle real text."""

_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
"""An HTML entity WITH its semicolon: html.unescape alone would also turn 'Black&deg' into '°'."""

_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 "
    "h6 header hr img li nav ol p pre section table tbody td tfoot th thead title tr ul".split()
)
"""Tags that separate words: they become a space."""

_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo big cite code del dfn em font i ins kbd label mark q s samp small span "
    "strike strong sub sup time tt u var wbr".split()
)
"""Tags inside a word run ('H<sub>2</sub>O'): they are removed without a space."""

_CLEAR_MARKUP = re.compile(
    r"</[a-z][a-z0-9]*\s*>"  # a closing tag
    r"|<(?:br|hr|img|wbr)\b[^<>]*>"  # a void tag
    r"|<[a-z][a-z0-9]*\s[^<>=]*=[^<>]*>"  # a tag with an attribute value
    r"|<!--",  # a comment
    re.IGNORECASE,
)
"""Evidence that a caption really holds markup (``a <b and c> d`` or ``<Ctrl>`` does not)."""

_TAG = re.compile(r"</?([a-z][a-z0-9]*)(?:\s[^<>]*)?/?>", re.IGNORECASE)
"""Any tag; _tag_replacement keeps names that are not HTML."""

_BLOCK_START = re.compile(r"<!--|<(script|style)\b", re.IGNORECASE)
_BLOCK_END = {
    None: re.compile("-->"),
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
}
"""Comments and script/style elements, dropped with their content by _drop_blocks."""

_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ufeff]")
"""Control characters and BOM. The C0/C1 controls that str.split() treats as whitespace
(\\t \\n \\v \\f \\r \\x1c-\\x1f \\x85) are not here: they become single spaces instead."""

# --- boilerplate -----------------------------------------------------------------------------

_EDGE = string.punctuation + string.whitespace + "\u00a0“”‘’«»„‚‹›…–—·•|¡¿。、，！？：；「」『』【】"
"""Stripped from both ends before the whole-caption url/filename/stock checks."""

_TLDS = (
    "com|net|org|edu|gov|mil|int|info|biz|name|pro|io|co|ai|app|dev|me|tv|cc|ly|to|xyz|site|"
    "online|store|shop|blog|club|top|art|us|uk|ca|au|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|pl|"
    "cz|ru|ua|jp|cn|kr|in|br|mx|ar|tr|gr|pt|ie|nz|za|hk|tw|sg|vn|ir|id|eu"
)
_URL = re.compile(
    r"(?:https?|ftp)://\S+"  # with a scheme: anything
    r"|www\d?\.\S+"  # www.example.com/page
    rf"|(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:{_TLDS})(?::\d+)?(?:/\S*)?"  # example.com
)
"""A caption that is only a URL or a domain (matched on the lower-cased, edge-stripped text)."""

_IMAGE_EXT = r"(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|heic|heif|svg|avif)"
_FILENAME = re.compile(
    rf"\S+\.{_IMAGE_EXT}"  # any single token with an image extension
    r"|(?:img|image|dsc[nf]?|pxl|gopr|gp|dji|mvimg|mg|sam|cimg|pict|pic|hpim|imag|wp|photo|"
    r"picture|screenshot|scan)[_-]?\d{3,}(?:[_-][a-z0-9]+)*"  # camera/app names: IMG_1234
    r"|p\d{7}"  # Panasonic/Olympus: P1010001
    r"|(?=[a-f]*\d)[0-9a-f]{16,}"  # a hex hash (with a digit: 'aaaa...' is repetitive)
    r"|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"  # a UUID
    r"|(?:screenshot|screen shot|whatsapp image|signal)[ _-]?\d{4}-?\d\d-?\d\d"  # app exports
    r"(?:(?: at |[ _-])[\d.:-]+(?: ?[ap]m)?)?(?: ?\(\d+\))?"  # ... at 10.00.00 PM (1)
    rf"(?:\.{_IMAGE_EXT})?"
)
"""A caption that is only a file or camera name (lower-cased, edge-stripped)."""

STOCK_ALT_TEXTS = frozenset(
    {
        # generic nouns a CMS or uploader fills in
        *"image images img photo photos picture pictures pic pics photograph thumbnail thumb".split(),
        *"logo banner icon avatar placeholder spacer loading untitled blank empty default".split(),
        *"figure fig slide gallery attachment screenshot header footer button arrow bullet".split(),
        *"jpg jpeg png gif null undefined none n/a na nan nil alt caption title description".split(),
        *"test advertisement ad sponsored pixel shim enlarge zoom download".split(),
        # phrases
        "untitled image",
        "stock photo",
        "stock photos",
        "stock image",
        "stock images",
        "stock photography",
        "stock picture",
        *(f"{free} {what}" for free in ("royalty free", "royalty-free") for what in ("image", "photo", "stock photo")),
        "click here",
        "click to enlarge",
        "click to zoom",
        "click for larger image",
        "click image to enlarge",
        "view larger",
        "view larger image",
        "see more",
        "read more",
        "more info",
        "no image",
        "no image available",
        "no photo",
        "no photo available",
        "image not found",
        "image not available",
        "image unavailable",
        "photo unavailable",
        "image coming soon",
        "coming soon",
        "default image",
        "featured image",
        "product image",
        "main image",
        "image description",
        "insert image description here",
        "alt text",
        "alt tag",
        "profile picture",
        "profile photo",
        "user avatar",
        "tracking pixel",
        "spacer gif",
        # common non-English equivalents of "image" / "photo" / "picture"
        "bild",
        "imagen",
        "foto",
        "fotos",
        "immagine",
        "imagem",
        "фото",
        "изображение",
        "картинка",
        "图片",
        "图像",
        "照片",
        "画像",
        "写真",
        "사진",
        "이미지",
        "صورة",
    }
)
"""Whole-caption alt texts that describe nothing, compared lower-cased with punctuation and
whitespace stripped from both ends. A caption merely containing one of them is real text."""

_STOCK_NUMBERED = re.compile(
    r"(?:image|img|photo|picture|pic|foto|bild|untitled|thumbnail|slide|figure|fig|screenshot)"
    r"[\s_#.-]*(?:no\.?\s*)?\d+(?:\s*(?:of|/)\s*\d+)?"
)
"""A stock word and a number: 'photo 1', 'Image #2', 'slide 3 of 10', 'fig. 4'."""

_CHAR_RUN = re.compile(r"(\S)\1{9,}")
"""One character repeated 10 or more times in a row ('aaaaaaaaaa', '!!!!!!!!!!')."""

MIN_WORDS_FOR_RATIO = 4
MAX_UNIQUE_RATIO = 0.3
MAX_TOKEN_RUN = 5

# --- raw counts ------------------------------------------------------------------------------

_PY_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_WORD = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]+"
"""RE2 pattern for one str.split() word: a run of characters Python does not call whitespace
(all of them lie below U+3001). pc.utf8_split_whitespace is not used: it splits '' into [''] and
'  ' into three empty strings."""


def normalize_caption(text: str | None) -> str:
    """Unescape entities, repair mojibake, strip clear markup and controls, collapse whitespace."""
    if not text:
        return ""
    if "&" in text:
        text = _unescape(text)
    if not text.isascii() or "\x1b" in text:  # ASCII without escapes cannot be mojibake
        text = ftfy.fix_text(text, _FTFY)
    if "<" in text and _CLEAR_MARKUP.search(text):
        text = _TAG.sub(_tag_replacement, _drop_blocks(text))
    text = _CONTROL.sub("", text)
    return " ".join(text.split())


def _unescape(text: str, rounds: int = 3) -> str:
    """Unescape ';'-terminated entities, repeatedly for double escapes ('&amp;amp;' -> '&')."""
    for _ in range(rounds):
        unescaped = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
        if unescaped == text:
            break
        text = unescaped
    return text


def _drop_blocks(text: str) -> str:
    """Replace closed comments and script/style elements by a space (linear: no regex retries)."""
    parts, pos = [], 0
    while (start := _BLOCK_START.search(text, pos)) is not None:
        end = _BLOCK_END[start.group(1) and start.group(1).lower()].search(text, start.end())
        if end is None:
            break
        parts += [text[pos : start.start()], " "]
        pos = end.end()
    return "".join(parts) + text[pos:] if parts else text


def _tag_replacement(match: re.Match) -> str:
    name = match.group(1).lower()
    if name in _BLOCK_TAGS:
        return " "
    return "" if name in _INLINE_TAGS else match.group()


def unique_ratio(words: list[str]) -> float:
    """Unique lower-cased words / words; 0.0 without words."""
    return len({w.lower() for w in words}) / len(words) if words else 0.0


def boilerplate_kind(raw: str | None, norm: str, words: list[str]) -> str | None:
    """The first boilerplate kind of a caption, or None when it looks like real text.

    ``words`` is ``norm.split()``. A null or empty raw caption is None (length thresholds
    reject it); any other caption without a letter, whitespace-only ones included, is
    ``no_letters``.
    """
    if not raw:
        return None
    if not any(map(str.isalpha, norm)):
        return "no_letters"
    core = norm.strip(_EDGE).lower()
    if _URL.fullmatch(core):
        return "url"
    if _FILENAME.fullmatch(core):
        return "filename"
    if core in STOCK_ALT_TEXTS or _STOCK_NUMBERED.fullmatch(core):
        return "stock"
    if _is_repetitive(norm, words):
        return "repetitive"
    return None


def _is_repetitive(norm: str, words: list[str]) -> bool:
    """Low unique-word ratio, one token >= MAX_TOKEN_RUN times in a row, or a long char run."""
    if len(words) >= MIN_WORDS_FOR_RATIO and unique_ratio(words) < MAX_UNIQUE_RATIO:
        return True
    run, previous = 0, None
    for word in words:
        word = word.lower()
        run = run + 1 if word == previous else 1
        if run >= MAX_TOKEN_RUN:
            return True
        previous = word
    return _CHAR_RUN.search(norm) is not None


def caption_signals(raw: str | None) -> tuple[str, float, str | None]:
    """``(caption_norm, caption_unique_ratio, caption_boilerplate)`` of one raw caption."""
    norm = normalize_caption(raw)
    words = norm.split()
    return norm, unique_ratio(words), boilerplate_kind(raw, norm, words)


def raw_counts(captions: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """``len(text)`` and ``len(text.split())`` of each caption as int32, null counted as ''."""
    text = pc.fill_null(captions, "")
    chars = pc.cast(pc.utf8_length(text), pa.int32())
    words = pc.cast(pc.count_substring_regex(text, _WORD), pa.int32())
    return chars, words


class CaptionConfig(StageConfig):
    """The caption stage has no options beyond the common stage fields."""


class CaptionSignals(Stage):
    """Raw caption counts (DataComp's), a normalised caption, its word diversity and boilerplate."""

    name = "caption"
    Config = CaptionConfig
    reads = ("caption",)
    writes = {
        "caption_norm": pa.string(),
        "caption_chars": pa.int32(),
        "caption_words": pa.int32(),
        "caption_unique_ratio": pa.float32(),
        "caption_boilerplate": pa.string(),
        "caption_hash": pa.uint64(),
    }

    def process(self, batch: pa.Table) -> pa.Table:
        captions = batch.column("caption")
        chars, words = raw_counts(captions)
        rows = [caption_signals(text) for text in captions.to_pylist()]
        norm, ratio, kind = zip(*rows, strict=True) if rows else ((), (), ())
        columns = {
            "caption_norm": norm,
            "caption_chars": chars,
            "caption_words": words,
            "caption_unique_ratio": ratio,
            "caption_boilerplate": kind,
            "caption_hash": [caption_hash(text) for text in norm],
        }
        return append_columns(batch, columns, self.writes)


def caption_hash(norm: str) -> int:
    """64-bit hash of the normalised caption, case-folded: equal texts up to case and spacing collide
    (e.g. ``exact_dedup`` with ``by: [caption_hash]`` finds repeated alt texts)."""
    return int.from_bytes(hashlib.blake2b(norm.casefold().encode(), digest_size=8).digest(), "big")
