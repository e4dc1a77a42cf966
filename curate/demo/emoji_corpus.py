"""A noisy web pool of real image-text pairs with planted noise of known kinds, and a disjoint seed set.

The pairs are real (:mod:`curate.demo.emoji_sources`: Noto Color Emoji and OpenMoji glyphs with their CLDR
names and OpenMoji tags). Each image is a glyph composed onto a background (solid, gradient or
noisy; one of 15 named colours), at a random scale, place and slight rotation, on a canvas whose
smaller side is 256-560 px, saved as JPEG (q70-95) or PNG; each caption is alt text built from the
names and tags ("a red apple", "Red apple clipart", "cartoon red apple on a beige background",
"red apple icon, fruit", "a red apple emoji"; the template is the clean row's ``detail``).

Planted noise (fractions of the rows; the rest is clean) and the reason curate should give:

    mismatched      10 %  low_clip_score       the caption of another image (another emoji)
    boilerplate      5 %  caption_boilerplate  "IMG_4821.jpg", "click here", "stock photo", ...
    non_english      8 %  wrong_language       CLDR translations (12 languages) in local templates
    dup_exact        4 %  dup_exact            the same bytes as a clean row, at another URL
    dup_near         8 %  dup_near             a clean row's image re-encoded (JPEG q25-50),
                                               downscaled, cropped <= 2 % a side, watermarked or
                                               brightened, then JPEG-encoded
    tiny             3 %  too_small            smaller side 16-120 px
    extreme_aspect   3 %  bad_aspect           banners, aspect 3.6-8
    missing          3 %  download_error       404s
    corrupt          2 %  decode_error         truncated JPEG/PNG, random bytes
    html             2 %  decode_error         an HTML page served as image/jpeg

Every row keeps its truth: kind, expected reason, the original's path for duplicates, the source,
the concept and a detail (perturbation, language, boilerplate template...). Copies come after
their original in row order. The seed set (:func:`build_seed_set`), on which the CLIP filter is
trained, shares no glyph with the pool: it holds other artists' glyphs (Twemoji, Fluent Emoji,
EmojiOne) and the ``HOLDOUT`` share of the Noto and OpenMoji glyphs. Most of the pool's emoji are
in it drawn by someone else (as a real filter has seen most concepts); OpenMoji's own extra icons
and emoji newer than those sets mostly are not.

Served on loopback by :class:`curate.demo.server.LoopbackServer`; :func:`write_truth` writes the
URL list with the truth columns::

    from curate.demo.emoji_corpus import build_quality_corpus
    objects, rows = build_quality_corpus(n=3000, seed=0)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate.calibrate.perturb import PERTURBATIONS, near_copy_bytes
from curate.demo.corpus import WebObject
from curate.demo.emoji_sources import (
    CORPORA,
    ICON_SETS,
    SEED_SOURCES,
    Pair,
    default_cache,
    glyph,
    load_catalogue,
)

CORPUS_VERSION = 1
HOLDOUT = 0.25  # share of the Noto and OpenMoji glyphs kept out of the pool for the seed set
VAL_FRACTION = {"artists": 0.15, "holdout": 0.3}  # share of each seed part's glyphs kept for validation
ARTISTS_REVISION = 2  # in the artists seed part's folder name: r1 was captioned with older templates than the pool's
MIN_SIDE, MAX_ASPECT = 200, 3.0  # the recipe's image_size policy (DataComp's basic filter)

NOISE: dict[str, tuple[float, str]] = {
    "mismatched": (0.10, "low_clip_score"),
    "boilerplate": (0.05, "caption_boilerplate"),
    "non_english": (0.08, "wrong_language"),
    "dup_exact": (0.04, "dup_exact"),
    "dup_near": (0.08, "dup_near"),
    "tiny": (0.03, "too_small"),
    "extreme_aspect": (0.03, "bad_aspect"),
    "missing": (0.03, "download_error"),
    "corrupt": (0.02, "decode_error"),
    "html": (0.02, "decode_error"),
}
"""Noise kind -> (fraction of the rows, the curate reason code it should get)."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light grey": (214, 214, 214),
    "black": (22, 22, 22),
    "navy blue": (28, 38, 92),
    "sky blue": (150, 200, 240),
    "pink": (245, 196, 214),
    "beige": (234, 220, 188),
    "mint green": (188, 234, 208),
    "yellow": (248, 222, 92),
    "orange": (244, 150, 60),
    "purple": (120, 70, 160),
    "dark green": (32, 92, 52),
    "red": (198, 40, 40),
    "teal": (30, 138, 140),
    "brown": (110, 74, 44),
}

ENGLISH_TEMPLATES = (
    "{a_name}",
    "{name} icon",
    "{Name} clipart",
    "illustration of {a_name}",
    "picture of {a_name} on {bg}",
    "cartoon {name} on a {bg} background",
    "{Name} vector illustration on a {bg} background",
    "flat design {name} graphic",
    "a cute cartoon {name} drawn in a simple flat style",
    "{Name} icon for apps and websites",
    "{Name}, free clip art for presentations and school projects",
    "{name} icon, {tags}",
    "simple {name} symbol: {tags}",
    "{a_name} emoji",
    "the {name} emoji from a phone keyboard",
)
"""Alt-text templates. Two of 15 say "emoji": fastText's lid.176 calls most short captions ending in
"emoji" Russian (61 % of "{a_name} emoji", measured), so more would make the language result a
measurement of that one word; filter_quality.py reports the false rejections by template."""

ICON_TEMPLATES = (
    "{Name}",
    "{name} icon",
    "{Name} logo",
    "{Name} clipart",
    "illustration of {a_name}",
    "picture of {a_name} on {bg}",
    "{Name} vector illustration on a {bg} background",
    "flat design {name} graphic",
    "{Name} icon for apps and websites",
    "{Name}, free clip art for presentations and school projects",
    "{a_name} symbol",
    "the {name} image from an icon set",
)
"""Alt-text templates of the ``icons`` corpus (no "emoji", no tags: its sets have none)."""

ICON_LOCAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "de": ("{Name}", "Flagge von {name}", "Flagge: {name}", "Nationalflagge {name}"),
    "fr": ("{Name}", "drapeau de {name}", "drapeau : {name}", "icône drapeau {name}"),
    "es": ("{Name}", "bandera de {name}", "bandera: {name}", "icono de la bandera de {name}"),
    "it": ("{Name}", "bandiera {name}", "bandiera: {name}", "icona bandiera {name}"),
    "pt": ("{Name}", "bandeira de {name}", "bandeira: {name}", "ícone da bandeira de {name}"),
    "ru": ("{Name}", "флаг: {name}", "флаг страны {name}", "значок флага {name}"),
    "ja": ("{name}", "{name}の国旗", "{name}の旗", "国旗: {name}"),
    "zh": ("{name}", "{name}国旗", "{name}的旗帜", "国旗：{name}"),
    "ko": ("{name}", "{name} 국기", "{name}의 깃발", "국기: {name}"),
    "tr": ("{Name}", "{name} bayrağı", "bayrak: {name}", "{name} bayrak simgesi"),
    "id": ("{Name}", "bendera {name}", "bendera: {name}", "ikon bendera {name}"),
    "ar": ("{name}", "علم {name}", "علم: {name}", "أيقونة علم {name}"),
}
"""Flag alt text per language for the ``icons`` corpus, filled with the iso-codes translation of the country."""

LOCAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "de": ("{Name}", "{Name} – Emoji", "Symbol: {name}, farbiger Hintergrund", "Illustration: {name}"),
    "fr": ("{Name}", "émoji {name}", "icône {name} sur fond coloré", "illustration : {name}"),
    "es": ("{Name}", "emoji de {name}", "icono de {name} sobre fondo de color", "ilustración: {name}"),
    "it": ("{Name}", "emoji {name}", "icona {name} su sfondo colorato", "illustrazione: {name}"),
    "pt": ("{Name}", "emoji de {name}", "ícone de {name} em fundo colorido", "ilustração: {name}"),
    "ru": ("{Name}", "эмодзи «{name}»", "значок {name} на цветном фоне", "иллюстрация: {name}"),
    "ja": ("{name}", "{name}の絵文字", "{name}のアイコン", "{name}のイラスト"),
    "zh": ("{name}", "{name}表情符号", "{name}图标", "{name}的插图"),
    "ko": ("{name}", "{name} 이모지", "{name} 아이콘", "{name} 일러스트"),
    "tr": ("{Name}", "{name} emojisi", "{name} simgesi, renkli arka plan", "illüstrasyon: {name}"),
    "id": ("{Name}", "emoji {name}", "ikon {name} dengan latar berwarna", "ilustrasi {name}"),
    "ar": ("{name}", "رمز تعبيري: {name}", "أيقونة {name}", "رسم توضيحي: {name}"),
}
"""Alt-text templates per language, filled with the CLDR translation of the emoji's name."""

BOILERPLATE = (
    "image",
    "Image",
    "photo",
    "picture",
    "icon",
    "logo",
    "thumbnail",
    "banner",
    "untitled",
    "placeholder",
    "default",
    "click here",
    "Click to enlarge",
    "view larger image",
    "featured image",
    "product image",
    "no image available",
    "alt text",
    "stock photo",
    "Untitled-{d}",
    "image {d}",
    "Image {d} of {d2}",
    "photo {d}",
    "IMG_{n4}.jpg",
    "IMG_{n4}",
    "DSC{n5}.JPG",
    "DSC_{n4}",
    "image00{d}.png",
    "Screenshot {date} at {time}",
    "WhatsApp Image {date} at {time}",
    "photo_{date}_{time2}.jpg",
    "{hex}.png",
    "{uuid}",
    "https://cdn.example.com/images/{n6}.jpg",
    "www.example.com",
)
"""Stock alt texts seen on the web (some of which curate's detector does not know: measured)."""


@dataclass(frozen=True)
class QualityRow:
    """One row of the URL list and its truth (``path``, ``caption``, ``defect``, ``expected_reason``
    as :class:`curate.demo.corpus.DemoRow`, so :func:`curate.demo.server.write_url_list` takes it)."""

    path: str  # URL path, e.g. "/img/000123.jpg"
    caption: str  # alt text
    defect: str | None  # noise kind (a key of NOISE), None for a clean row
    expected_reason: str | None  # curate reason code the row should get; None: kept
    dup_of: str | None = None  # duplicates: the path of the clean row they copy
    source: str | None = None  # "noto" / "openmoji"
    concept: str | None = None  # emoji concept of the image (for mismatched: of the image, not the caption)
    detail: str | None = None  # perturbation, language, boilerplate template, broken-download kind...


@dataclass(frozen=True)
class _Image:
    """A composed image: pixels, encoded bytes and the background colour name."""

    pixels: Image.Image
    body: bytes
    fmt: str  # "JPEG" or "PNG"
    background: str


# --- splitting the catalogue ----------------------------------------------------------------------


def coin(key: str, seed: int, fraction: float) -> bool:
    """A stable coin that comes up True for ``fraction`` of the keys."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_glyphs(pairs: list[Pair], seed: int, fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(pairs left, pairs drawn with probability ``fraction``), by a stable coin per glyph."""
    drawn = [coin(f"{p.source}:{p.ident}", seed, fraction) for p in pairs]
    return [p for p, d in zip(pairs, drawn, strict=True) if not d], [p for p, d in zip(pairs, drawn, strict=True) if d]


# --- images ---------------------------------------------------------------------------------------


def _canvas_size(rng: random.Random, lo: int, hi: int, aspect: tuple[float, float]) -> tuple[int, int]:
    short = rng.randint(lo, hi)
    long_ = max(short, round(short * rng.uniform(*aspect)))
    return (long_, short) if rng.random() < 0.7 else (short, long_)


def _background(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A solid, gradient or noisy background of a named colour."""
    name = rng.choice(list(BACKGROUNDS))
    base = np.array(BACKGROUNDS[name], np.float32)
    w, h = size
    style = rng.choice(("solid", "gradient", "gradient", "noise"))
    arr = np.broadcast_to(base, (h, w, 3)).copy()
    if style == "gradient":
        angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(20, 60)
        t = (np.arange(h)[:, None] / h - 0.5) * math.sin(angle) + (np.arange(w)[None, :] / w - 0.5) * math.cos(angle)
        arr += (t * strength)[:, :, None]
    elif style == "noise":
        arr += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(5, 14), (h, w, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), name


def _paste_glyph(canvas: Image.Image, pair: Pair, rng: random.Random, frac: tuple[float, float], cache: Path) -> None:
    """Paste the glyph, scaled to ``frac`` of the canvas's smaller side, at a random place near the middle."""
    size = max(8, round(min(canvas.size) * rng.uniform(*frac)))
    g = glyph(pair, size, cache)
    if rng.random() < 0.25:
        g = g.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, expand=True)
    x = round(max(0, canvas.width - g.width) * _centred(rng))
    y = round(max(0, canvas.height - g.height) * _centred(rng))
    canvas.paste(g, (x, y), g)


def _centred(rng: random.Random) -> float:
    """A position in [0, 1] around the middle (subjects of photos tend to be near the centre)."""
    return min(1.0, max(0.0, rng.gauss(0.5, 0.2)))


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """JPEG or PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


def compose(
    pair: Pair,
    rng: random.Random,
    cache: Path,
    sides: tuple[int, int] = (256, 560),
    aspect: tuple[float, float] = (1.0, 1.8),
    copies: int = 1,
) -> _Image:
    """The glyph of ``pair`` (``copies`` times) on a background; JPEG (75 %) or PNG."""
    canvas, bg = _background(rng, _canvas_size(rng, *sides, aspect))
    for _ in range(copies):
        _paste_glyph(canvas, pair, rng, (0.45, 0.9) if copies == 1 else (0.6, 0.9), cache)
    fmt = "PNG" if rng.random() < 0.25 else "JPEG"
    return _Image(canvas, encode(canvas, fmt, rng.randint(70, 95)), fmt, bg)


# --- captions -------------------------------------------------------------------------------------


def _article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def english_caption(pair: Pair, rng: random.Random, background: str) -> str:
    """Alt text built from the pair's name and tags, in one of ENGLISH_TEMPLATES."""
    return english_caption_and_template(pair, rng, background)[0]


def english_caption_and_template(pair: Pair, rng: random.Random, background: str) -> tuple[str, str]:
    """(caption, template) for :func:`english_caption`."""
    tags = [t for t in pair.tags if len(t) > 2 and not t.isdigit() and t.lower() not in pair.name.lower()]
    templates = ICON_TEMPLATES if pair.source in ICON_SETS else ENGLISH_TEMPLATES
    template = rng.choice([t for t in templates if tags or "{tags}" not in t])
    name = pair.name
    caption = template.format(
        name=name,
        Name=name[:1].upper() + name[1:],
        a_name=_article(name),
        bg=background,
        tags=", ".join(rng.sample(tags, min(len(tags), rng.randint(1, 3)))),
    )
    return caption, template


def local_caption(pair: Pair, rng: random.Random) -> tuple[str, str]:
    """(caption, language): the CLDR translation of the name in a template of that language."""
    lang, name = rng.choice(pair.names)
    templates = ICON_LOCAL_TEMPLATES if pair.source in ICON_SETS else LOCAL_TEMPLATES
    return rng.choice(templates[lang]).format(name=name, Name=name[:1].upper() + name[1:]), lang


def boilerplate_caption(rng: random.Random) -> tuple[str, str]:
    """(caption, template): stock alt text with fresh numbers, dates and hashes."""
    template = rng.choice(BOILERPLATE)
    year, month, day = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
    hour, minute, second = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    text = template.format(
        d=rng.randint(1, 9),
        d2=rng.randint(10, 24),
        n4=rng.randint(1000, 9999),
        n5=rng.randint(10000, 99999),
        n6=rng.randint(100000, 999999),
        date=f"{year}-{month:02d}-{day:02d}",
        time=f"{hour % 12 + 1}.{minute:02d}.{second:02d} {'AM' if hour < 12 else 'PM'}",
        time2=f"{hour:02d}-{minute:02d}-{second:02d}",
        hex=f"{rng.getrandbits(64):016x}",
        uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    )
    return text, template


# --- building the pool ----------------------------------------------------------------------------


def noise_counts(n: int) -> dict[str, int]:
    """Rows per noise kind for ``n`` rows (each at least 1), and "clean" for the rest."""
    counts = {kind: max(1, round(frac * n)) for kind, (frac, _) in NOISE.items()}
    counts["clean"] = n - sum(counts.values())
    if counts["clean"] < 1:
        raise ValueError(f"n={n} is too small for one row of every noise kind")
    return counts


class _Builder:
    """The RNG, the pool pairs still unused, the objects and the rows while a pool is built."""

    def __init__(self, pool: list[Pair], n: int, seed: int, cache: Path) -> None:
        self.rng = random.Random(seed)
        self.cache = cache
        self.pairs = list(pool)
        self.rng.shuffle(self.pairs)
        self.ids = list(range(n))
        self.rng.shuffle(self.ids)
        self.objects: dict[str, WebObject] = {}
        self.images: dict[str, Image.Image] = {}  # clean rows' pixels, for near copies

    def take(self, need_translations: bool = False) -> Pair:
        """An unused pool pair (one with CLDR translations when asked)."""
        for i in range(len(self.pairs) - 1, -1, -1):
            if self.pairs[i].names or not need_translations:
                return self.pairs.pop(i)
        raise ValueError("the catalogue has too few distinct pairs for this n: lower n")

    def new_path(self, ext: str) -> str:
        return f"/img/{self.ids.pop():06d}.{ext}"

    def add(self, body: bytes, content_type: str, ext: str, status: int = 200) -> str:
        path = self.new_path(ext)
        self.objects[path] = WebObject(path, body, content_type, status)
        return path

    def add_image(self, im: _Image) -> str:
        ext, mime = ("jpg", "image/jpeg") if im.fmt == "JPEG" else ("png", "image/png")
        return self.add(im.body, mime, ext)


def _row(kind: str | None, path: str, caption: str, pair: Pair | None, **kw) -> QualityRow:
    reason = NOISE[kind][1] if kind else None
    return QualityRow(path, caption, kind, reason, source=pair and pair.source, concept=pair and pair.concept, **kw)


def _clean(b: _Builder) -> QualityRow:
    pair = b.take()
    im = compose(pair, b.rng, b.cache)
    path = b.add_image(im)
    b.images[path] = im.pixels
    caption, template = english_caption_and_template(pair, b.rng, im.background)
    return _row(None, path, caption, pair, detail=template)


def _mismatched(b: _Builder, count: int) -> list[QualityRow]:
    """``count`` images whose captions are rotated among them: every caption describes another emoji."""
    pairs = [b.take() for _ in range(count)]
    images = [compose(p, b.rng, b.cache) for p in pairs]
    captions = [english_caption(p, b.rng, im.background) for p, im in zip(pairs, images, strict=True)]
    order = _derangement(b.rng, [p.concept for p in pairs])
    rows = []
    for i, (pair, im) in enumerate(zip(pairs, images, strict=True)):
        j = order[i]
        rows.append(_row("mismatched", b.add_image(im), captions[j], pair, detail=f"caption of {pairs[j].concept}"))
    return rows


def _derangement(rng: random.Random, concepts: list[str]) -> list[int]:
    """A permutation sending every index to one with a different concept (a rotation, repaired)."""
    n = len(concepts)
    if n < 2:
        return list(range(n))
    idx = list(range(n))
    rng.shuffle(idx)
    order = [0] * n
    for a, b in zip(idx, idx[1:] + idx[:1], strict=True):
        order[a] = b
    for i in range(n):
        if concepts[order[i]] == concepts[i]:
            j = next(
                (j for j in range(n) if concepts[order[j]] != concepts[i] and concepts[order[i]] != concepts[j]), i
            )
            order[i], order[j] = order[j], order[i]
    return order


def _boilerplate(b: _Builder) -> QualityRow:
    pair = b.take()
    caption, template = boilerplate_caption(b.rng)
    return _row("boilerplate", b.add_image(compose(pair, b.rng, b.cache)), caption, pair, detail=template)


def _non_english(b: _Builder) -> QualityRow:
    pair = b.take(need_translations=True)
    caption, lang = local_caption(pair, b.rng)
    return _row("non_english", b.add_image(compose(pair, b.rng, b.cache)), caption, pair, detail=lang)


def _tiny(b: _Builder) -> QualityRow:
    pair = b.take()
    im = compose(pair, b.rng, b.cache, sides=(16, 120))
    return _row("tiny", b.add_image(im), english_caption(pair, b.rng, im.background), pair, detail=str(im.pixels.size))


def _extreme_aspect(b: _Builder) -> QualityRow:
    pair = b.take()
    im = compose(pair, b.rng, b.cache, sides=(200, 280), aspect=(3.6, 8.0), copies=b.rng.randint(1, 3))
    caption = english_caption(pair, b.rng, im.background)
    return _row("extreme_aspect", b.add_image(im), caption, pair, detail=str(im.pixels.size))


def _missing(b: _Builder, i: int) -> QualityRow:
    """A URL with no object: half absent (the server's 404), half an explicit 404 page."""
    pair = b.take()
    if i % 2:
        path = b.add(f"<html><body>404 Not Found ({i})</body></html>".encode(), "text/html", "jpg", status=404)
    else:
        path = b.new_path("jpg")
    return _row("missing", path, english_caption(pair, b.rng, b.rng.choice(list(BACKGROUNDS))), pair, detail="404")


def _corrupt(b: _Builder, i: int) -> QualityRow:
    """Truncated JPEG or PNG (20-60 % of the bytes), or random bytes for every fourth row."""
    pair = b.take()
    im = compose(pair, b.rng, b.cache)
    if i % 4 == 0:
        body, detail = b.rng.randbytes(len(im.body) // 3), "random bytes"
    else:
        body, detail = im.body[: int(len(im.body) * b.rng.uniform(0.2, 0.6))], f"truncated {im.fmt}"
    ext, mime = ("jpg", "image/jpeg") if im.fmt == "JPEG" else ("png", "image/png")
    return _row("corrupt", b.add(body, mime, ext), english_caption(pair, b.rng, im.background), pair, detail=detail)


def _html(b: _Builder, i: int) -> QualityRow:
    """A soft-404 or hotlink page served as image/jpeg at a .jpg path."""
    pair = b.take()
    title = b.rng.choice(("Image not available", "Hotlinking not allowed", "Page moved", "Access denied"))
    body = (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f'<body><h1>{title}</h1><p>Request {i}: please visit <a href="/">our site</a>.</p></body></html>\n'
    ).encode()
    caption = english_caption(pair, b.rng, b.rng.choice(list(BACKGROUNDS)))
    return _row("html", b.add(body, "image/jpeg", "jpg"), caption, pair, detail=title)


def _copies(b: _Builder, originals: list[QualityRow], kind: str, count: int) -> list[QualityRow]:
    """``count`` exact or near copies of clean ``originals`` (round robin), at new URLs."""
    rows = []
    for j in range(count):
        orig = originals[j % len(originals)]
        caption = orig.caption if b.rng.random() < 0.5 else _recaption(b, orig)
        if kind == "dup_exact":
            src = b.objects[orig.path]
            path = b.add(src.body, src.content_type, orig.path.rsplit(".", 1)[1])
            detail = "same bytes"
        else:
            detail = PERTURBATIONS[j % len(PERTURBATIONS)]
            path = b.add(near_copy_bytes(b.images[orig.path], detail, b.rng), "image/jpeg", "jpg")
        rows.append(
            replace(
                orig,
                path=path,
                caption=caption,
                defect=kind,
                expected_reason=NOISE[kind][1],
                dup_of=orig.path,
                detail=detail,
            )
        )
    return rows


def _recaption(b: _Builder, orig: QualityRow) -> str:
    """The copy's alt text: the original's with a repost suffix."""
    return orig.caption + b.rng.choice((" (repost)", " | free download", " - emoji pack", ", reuploaded"))


def _order(b: _Builder, rows: list[QualityRow], copies: list[QualityRow]) -> list[QualityRow]:
    """Shuffle ``rows``, then insert each copy at a random place after its original."""
    out = list(rows)
    b.rng.shuffle(out)
    for copy in copies:
        at = next(i for i, r in enumerate(out) if r.path == copy.dup_of)
        out.insert(b.rng.randint(at + 1, len(out)), copy)
    return out


def generate_pool(pool: list[Pair], n: int, seed: int, cache: Path) -> tuple[dict[str, WebObject], list[QualityRow]]:
    """``n`` rows from ``pool`` with every noise kind planted in NOISE's proportions."""
    counts = noise_counts(n)
    b = _Builder(pool, n, seed, cache)
    clean = [_clean(b) for _ in range(counts["clean"])]
    rows = clean + _mismatched(b, counts["mismatched"])
    makers: dict[str, Callable[[int], QualityRow]] = {
        "boilerplate": lambda i: _boilerplate(b),
        "non_english": lambda i: _non_english(b),
        "tiny": lambda i: _tiny(b),
        "extreme_aspect": lambda i: _extreme_aspect(b),
        "missing": lambda i: _missing(b, i),
        "corrupt": lambda i: _corrupt(b, i),
        "html": lambda i: _html(b, i),
    }
    for kind, make in makers.items():
        rows += [make(i) for i in range(counts[kind])]
    originals = b.rng.sample(clean, min(len(clean), max(1, (counts["dup_exact"] + counts["dup_near"]) // 2)))
    exact_from, near_from = (
        originals[: max(1, len(originals) // 3)],
        originals[max(1, len(originals) // 3) :] or originals,
    )
    copies = _copies(b, exact_from, "dup_exact", counts["dup_exact"]) + _copies(
        b, near_from, "dup_near", counts["dup_near"]
    )
    return b.objects, _order(b, rows, copies)


# --- caching and the public entry points ---------------------------------------------------------


def build_quality_corpus(
    out_dir: str | Path | None = None,
    n: int = 3000,
    seed: int = 0,
    holdout: float = HOLDOUT,
    cache: str | Path | None = None,
    corpus: str = "emoji",
) -> tuple[dict[str, WebObject], list[QualityRow]]:
    """The pool's objects by path and its rows with truth; built once, then read from ``out_dir``.

    The pool draws on the Noto and OpenMoji glyphs but the ``holdout`` share that
    :func:`build_seed_set` keeps for the trusted set. ``out_dir`` defaults to
    ``~/.cache/curate/quality-corpus`` (``$CURATE_QUALITY_CACHE``); ``cache`` (default: ``out_dir``)
    holds the sources (the npm packages) and their catalogues. ``corpus`` names the pool's sources
    (``quality_sources.CORPORA``: ``emoji``, or ``icons``: flags, logos and flat-color icons).
    """
    out_dir = Path(out_dir or default_cache())
    cache = Path(cache or out_dir)
    sources = CORPORA[corpus]
    folder = out_dir / f"pool-v{CORPUS_VERSION}-n{n}-seed{seed}-{'-'.join(sources)}-holdout{holdout:g}"
    if (folder / "rows.parquet").is_file():
        return _read_pool(folder)
    pool, _ = split_glyphs(load_catalogue(sources, cache), seed, holdout)
    objects, rows = generate_pool(pool, n, seed, cache)
    _write_pool(folder, objects, rows)
    return objects, rows


def _write_pool(folder: Path, objects: dict[str, WebObject], rows: list[QualityRow]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    obj = pa.Table.from_pylist([asdict(o) for o in objects.values()])
    pq.write_table(obj, folder / "objects.parquet.tmp")
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in rows]), folder / "rows.parquet.tmp")
    (folder / "objects.parquet.tmp").replace(folder / "objects.parquet")
    (folder / "rows.parquet.tmp").replace(folder / "rows.parquet")  # written last: marks the pool complete


def _read_pool(folder: Path) -> tuple[dict[str, WebObject], list[QualityRow]]:
    objects = {o["path"]: WebObject(**o) for o in pq.read_table(folder / "objects.parquet").to_pylist()}
    return objects, [QualityRow(**r) for r in pq.read_table(folder / "rows.parquet").to_pylist()]


def write_truth(rows: list[QualityRow], base_url: str, path: str | Path) -> Path:
    """The URL list as Parquet, in row order: url, caption and every truth column (dup_of as a URL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    records = [{**asdict(r), "url": base + r.path, "dup_of": r.dup_of and base + r.dup_of} for r in rows]
    pq.write_table(pa.Table.from_pylist(records).drop_columns(["path"]), path)
    return path


@dataclass(frozen=True)
class SeedPart:
    """Trusted pairs of one group of sources: training shards and a held-out validation table."""

    train: Path  # folder of WebDataset tars + sizes.json
    val: Path  # Parquet: image (bytes), caption, concept, source
    n_train: int
    n_val: int


@dataclass(frozen=True)
class SeedSet:
    """The trusted set: other artists' glyphs, and the held-out share of the pool's own sources."""

    artists: SeedPart
    holdout: SeedPart

    @property
    def parts(self) -> tuple[SeedPart, SeedPart]:
        return self.artists, self.holdout


def build_seed_set(
    out_dir: str | Path | None = None,
    seed: int = 0,
    holdout: float = HOLDOUT,
    cache: str | Path | None = None,
    corpus: str = "emoji",
) -> SeedSet:
    """Trusted pairs disjoint from the pool of :func:`build_quality_corpus` (same ``seed``, ``holdout``):
    every glyph of the seed artists (SEED_SOURCES), and the ``holdout`` share of the Noto and OpenMoji
    glyphs the pool leaves out; each part keeps ``VAL_FRACTION[part]`` of its glyphs for validation."""
    out_dir = Path(out_dir or default_cache())
    cache = Path(cache or out_dir)
    artists = _seed_part(out_dir / f"seed-v{CORPUS_VERSION}-seed{seed}-{'-'.join(SEED_SOURCES)}-r{ARTISTS_REVISION}",
                         lambda: load_catalogue(SEED_SOURCES, cache), seed, VAL_FRACTION["artists"], cache)  # fmt: skip
    return SeedSet(artists, build_holdout_part(out_dir, seed, holdout, cache, corpus))


def build_holdout_part(
    out_dir: str | Path | None = None,
    seed: int = 0,
    holdout: float = HOLDOUT,
    cache: str | Path | None = None,
    corpus: str = "emoji",
) -> SeedPart:
    """The seed set's second part alone: the ``holdout`` share of the ``corpus``'s glyphs (Noto and
    OpenMoji by default) the pool of :func:`build_quality_corpus` leaves out (``make demo``'s small
    trusted set; no npm artists needed)."""
    out_dir = Path(out_dir or default_cache())
    cache = Path(cache or out_dir)
    sources = CORPORA[corpus]
    return _seed_part(out_dir / f"seed-v{CORPUS_VERSION}-seed{seed}-{'-'.join(sources)}-holdout{holdout:g}",
                      lambda: split_glyphs(load_catalogue(sources, cache), seed, holdout)[1], seed,
                      VAL_FRACTION["holdout"], cache)  # fmt: skip


def _seed_part(folder: Path, pairs: Callable[[], list[Pair]], seed: int, val_fraction: float, cache: Path) -> SeedPart:
    """Write (once) and describe one part of the seed set: one composition per glyph."""
    if not (folder / "val.parquet").is_file():
        train, val = split_glyphs(pairs(), seed + 1, val_fraction)
        rng = random.Random(seed + 7)
        _write_train_shards(folder / "train", train, rng, cache, per_shard=1000)
        _write_val(folder / "val.parquet", val, rng, cache)
    n_train = sum(json.loads((folder / "train" / "sizes.json").read_text()).values())
    return SeedPart(
        folder / "train", folder / "val.parquet", n_train, pq.read_metadata(folder / "val.parquet").num_rows
    )


def _write_train_shards(folder: Path, pairs: list[Pair], rng: random.Random, cache: Path, per_shard: int) -> None:
    """WebDataset tars ({key}.jpg/.txt/.json) as curate emits them, shuffled, plus sizes.json."""
    from curate.emit.webdataset import WebDatasetWriter

    rng.shuffle(pairs)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for s in range(0, len(pairs), per_shard):
        name = f"{s // per_shard:05d}.tar"
        with WebDatasetWriter(str(folder / name)) as writer:
            for i, pair in enumerate(pairs[s : s + per_shard], start=s):
                im = compose(pair, rng, cache)
                meta = {"source": pair.source, "concept": pair.concept}
                writer.write(f"{i:09d}", im.body, im.fmt.lower(), english_caption(pair, rng, im.background), meta)
            sizes[name] = writer.count
    (folder / "sizes.json").write_text(json.dumps(sizes))


def _write_val(path: Path, pairs: list[Pair], rng: random.Random, cache: Path) -> None:
    records = []
    for pair in pairs:
        im = compose(pair, rng, cache)
        caption = english_caption(pair, rng, im.background)
        records.append({"image": im.body, "caption": caption, "concept": pair.concept, "source": pair.source})
    pq.write_table(pa.Table.from_pylist(records), path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
