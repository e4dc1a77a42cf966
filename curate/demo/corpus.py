"""A small generated web corpus of image-text pairs with planted defects.

Everything is synthetic and deterministic from a seed: clean rows are drawings of coloured
shapes with a caption describing them; defect rows exercise the pipeline's rejection paths
(missing and slow URLs, corrupt bytes, HTML served as an image, tiny images, exact duplicates).
Only Pillow, numpy and the standard library are used.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class WebObject:
    """One object served by the demo web server."""

    path: str  # URL path served, e.g. "/img/000123.jpg"
    body: bytes  # response body
    content_type: str  # e.g. "image/jpeg", "image/png", "text/html"
    status: int = 200  # HTTP status (404 for missing objects)
    delay_s: float = 0.0  # server sleeps this long before answering (the "slow URL")


@dataclass(frozen=True)
class DemoRow:
    """One row of the URL list: where it points, its caption and what the pipeline must do."""

    path: str  # path of the object this row's URL points to
    caption: str  # alt text
    defect: str | None  # None for a clean row, else one of DEFECTS
    expected_reason: str | None  # the curate reason code this row must end with (None = kept)


DEFECTS = ("missing", "slow", "corrupt", "html", "tiny", "duplicate")

_EXPECTED: dict[str, str] = {
    "missing": "download_error",
    "slow": "download_timeout",
    "corrupt": "decode_error",
    "html": "decode_error",
    "tiny": "too_small",
    "duplicate": "dup_exact",
}

_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 50),
    "green": (50, 165, 70),
    "blue": (40, 85, 215),
    "purple": (135, 60, 180),
    "pink": (240, 130, 185),
    "brown": (125, 80, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "teal": (30, 150, 150),
}
_SHAPES = ("circle", "square", "triangle", "star", "stripes", "ring", "diamond", "cross")
_SIZES = (("small", 0.15, 0.25), ("", 0.28, 0.42), ("large", 0.45, 0.65))
_PREFIXES = ("", "", "", "a picture of ", "an illustration of ", "a drawing of ")
_COPY_TEMPLATES = ("repost: {}", "{}, reuploaded", "stock image of {}", "wallpaper with {}")
_MIN_SIDE, _MAX_SIDE, _MAX_ASPECT = 160, 512, 2.0
_MIN_DHASH_DISTANCE = 2  # reject identical or one-bit-apart difference hashes


@dataclass(frozen=True)
class _Shape:
    kind: str
    color: str
    size_word: str
    cx: float  # centre, as a fraction of width / height
    cy: float
    frac: float  # extent, as a fraction of the smaller side
    angle: float  # rotation in radians


@dataclass(frozen=True)
class _Drawing:
    width: int
    height: int
    background: str
    shapes: tuple[_Shape, ...]
    gradient: tuple[float, float]  # direction (radians), strength


def _defect_count(n_clean: int) -> int:
    """Planted rows per defect kind (except the single slow URL): 7 for n_clean=300."""
    return min(12, 4 + n_clean // 100)


def _random_size(rng: random.Random, lo: int, hi: int, max_aspect: float) -> tuple[int, int]:
    """Random (width, height) with both sides in [lo, hi] and aspect ratio <= max_aspect."""
    while True:
        short = rng.randint(lo, hi)
        long_ = rng.randint(short, min(hi, int(short * max_aspect)))
        if rng.random() < 0.5:
            return long_, short
        return short, long_


def _random_drawing(rng: random.Random, size: tuple[int, int]) -> _Drawing:
    """Pick a background and 1-3 shapes whose colours differ from it."""
    background = rng.choice(list(_PALETTE))
    colors = [c for c in _PALETTE if c != background]
    shapes = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        size_word, lo, hi = rng.choice(_SIZES)
        frac = rng.uniform(lo, hi)
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        kind = rng.choice(_SHAPES)
        shapes.append(_Shape(kind, rng.choice(colors), size_word, cx, cy, frac, rng.uniform(0, 6.3)))
    gradient = (rng.uniform(0, 2 * math.pi), rng.uniform(10, 45))
    shapes.sort(key=lambda s: -s.frac)  # big ones first, so small ones stay visible
    return _Drawing(size[0], size[1], background, tuple(shapes), gradient)


def _background(d: _Drawing) -> Image.Image:
    """The background colour with a soft linear gradient in a random direction."""
    direction, strength = d.gradient
    xs = (np.arange(d.width, dtype=np.float32) / d.width - 0.5) * math.cos(direction)
    ys = (np.arange(d.height, dtype=np.float32) / d.height - 0.5) * math.sin(direction)
    t = (ys[:, None] + xs[None, :]) * strength
    base = np.array(_PALETTE[d.background], dtype=np.float32)
    arr = np.clip(base[None, None, :] + t[:, :, None], 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles with the given radii, rotated by ``angle``."""
    n = len(radii)
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * i / n),
            cy + r * math.sin(angle + 2 * math.pi * i / n),
        )
        for i, r in enumerate(radii)
    ]


def _draw_stripes(draw: ImageDraw.ImageDraw, box: tuple[float, ...], fill, vertical: bool) -> None:
    """Parallel bars filling every other fifth of ``box``."""
    x0, y0, x1, y1 = box
    for i in range(0, 5, 2):
        if vertical:
            w = (x1 - x0) / 5
            draw.rectangle((x0 + i * w, y0, x0 + (i + 1) * w, y1), fill=fill)
        else:
            h = (y1 - y0) / 5
            draw.rectangle((x0, y0 + i * h, x1, y0 + (i + 1) * h), fill=fill)


def _draw_shape(draw: ImageDraw.ImageDraw, s: _Shape, width: int, height: int) -> None:
    """Draw one shape onto ``draw``."""
    r = max(2.0, s.frac * min(width, height) / 2)
    cx, cy = s.cx * width, s.cy * height
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = _PALETTE[s.color]
    if s.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif s.kind == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(r / 3)))
    elif s.kind == "square":
        draw.polygon(_polygon(cx, cy, [r * 1.2] * 4, math.pi / 4 + s.angle / 8), fill=fill)
    elif s.kind == "diamond":
        draw.polygon(_polygon(cx, cy, [r * 1.1, r * 0.75] * 2, 0.0), fill=fill)
    elif s.kind == "triangle":
        draw.polygon(_polygon(cx, cy, [r * 1.1] * 3, s.angle), fill=fill)
    elif s.kind == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.1, r * 0.45] * 5, s.angle), fill=fill)
    elif s.kind == "cross":
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:  # stripes
        _draw_stripes(draw, box, fill, vertical=s.angle < math.pi)


def _render(d: _Drawing) -> Image.Image:
    """Rasterise a drawing."""
    img = _background(d)
    draw = ImageDraw.Draw(img)
    for s in d.shapes:
        _draw_shape(draw, s, d.width, d.height)
    return img


def _encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode as JPEG or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _phrase(s: _Shape) -> str:
    """English noun phrase for one shape, e.g. "a small blue square"."""
    if s.kind == "stripes":
        return f"{s.color} stripes"
    noun = " ".join(w for w in (s.size_word, s.color, s.kind) if w)
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _caption(d: _Drawing, prefix: str = "") -> str:
    """Caption describing a drawing, e.g. "a red circle and a blue square on a yellow background"."""
    phrases = [_phrase(s) for s in d.shapes]
    things = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{prefix}{things} on {'an' if d.background[0] in 'aeiou' else 'a'} {d.background} background"


def _dhash(img: Image.Image) -> int:
    """64-bit difference hash of an image (used to keep generated images visually distinct)."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


class _Builder:
    """Holds the RNG, the path pool and the set of seen images while a corpus is built."""

    def __init__(self, seed: int, n_objects: int) -> None:
        self.rng = random.Random(seed)
        self.ids = list(range(n_objects))
        self.rng.shuffle(self.ids)
        self.objects: dict[str, WebObject] = {}
        self.seen_bytes: set[str] = set()
        self.seen_pixels: set[str] = set()
        self.seen_dhash: list[int] = []

    def new_path(self, ext: str) -> str:
        """A fresh "/img/NNNNNN.ext" path; ids are shuffled so paths do not reveal the kind."""
        return f"/img/{self.ids.pop():06d}.{ext}"

    def add(self, path: str, body: bytes, content_type: str, **kw) -> None:
        """Register an object under ``path``."""
        self.objects[path] = WebObject(path, body, content_type, **kw)

    def _is_new(self, img: Image.Image, body: bytes) -> bool:
        """True (and remember it) if neither the bytes nor the picture were generated before."""
        b_hash = hashlib.sha256(body).hexdigest()
        p_hash = hashlib.sha256(img.tobytes()).hexdigest()
        dh = _dhash(img)
        near = any(bin(dh ^ o).count("1") < _MIN_DHASH_DISTANCE for o in self.seen_dhash)
        if b_hash in self.seen_bytes or p_hash in self.seen_pixels or near:
            return False
        self.seen_bytes.add(b_hash)
        self.seen_pixels.add(p_hash)
        self.seen_dhash.append(dh)
        return True

    def distinct_image(self, lo: int, hi: int, fmt: str) -> tuple[_Drawing, bytes]:
        """Generate an image (side lengths in [lo, hi]) unlike every earlier one."""
        for _ in range(200):
            d = _random_drawing(self.rng, _random_size(self.rng, lo, hi, _MAX_ASPECT))
            img = _render(d)
            body = _encode(img, fmt, quality=self.rng.randint(80, 95))
            if _is_readable(body) and self._is_new(img, body):
                return d, body
        raise RuntimeError("could not generate a distinct image")  # pragma: no cover


def _is_readable(body: bytes) -> bool:
    """True if Pillow can fully decode ``body``."""
    try:
        with Image.open(io.BytesIO(body)) as im:
            im.load()
        return True
    except Exception:
        return False


def _make_image_row(b: _Builder, lo: int, hi: int, defect: str | None) -> DemoRow:
    """A valid image object plus its row (clean, tiny, or the base of another defect)."""
    fmt, ext = ("PNG", "png") if b.rng.random() < 0.1 else ("JPEG", "jpg")
    d, body = b.distinct_image(lo, hi, fmt)
    path = b.new_path(ext)
    b.add(path, body, f"image/{'png' if fmt == 'PNG' else 'jpeg'}")
    caption = _caption(d, b.rng.choice(_PREFIXES))
    return DemoRow(path, caption, defect, _EXPECTED.get(defect) if defect else None)


def _make_missing(b: _Builder, i: int) -> DemoRow:
    """A URL with no object: half absent from the dict, half an explicit 404 page."""
    path = b.new_path("jpg")
    if i % 2:
        b.add(path, f"<html><body>404 Not Found ({i})</body></html>".encode(), "text/html", status=404)
    caption = f"photo number {i} from a gallery that no longer exists"
    return DemoRow(path, caption, "missing", _EXPECTED["missing"])


def _make_slow(b: _Builder, delay_s: float) -> DemoRow:
    """A valid image the server answers only after ``delay_s`` seconds."""
    row = _make_image_row(b, _MIN_SIDE, _MAX_SIDE, "slow")
    obj = b.objects[row.path]
    b.objects[row.path] = WebObject(obj.path, obj.body, obj.content_type, delay_s=delay_s)
    return row


def _make_corrupt(b: _Builder, i: int) -> DemoRow:
    """A truncated JPEG (first ~30% of its bytes), or for i == 0 plain random bytes."""
    d, full = b.distinct_image(_MIN_SIDE, _MAX_SIDE, "JPEG")
    body = full[: int(len(full) * 0.3)]
    if i == 0:
        body = b.rng.randbytes(len(body))
        while _is_readable(body):  # pragma: no cover - astronomically unlikely
            body = b.rng.randbytes(len(body))
    path = b.new_path("jpg")
    b.add(path, body, "image/jpeg")
    return DemoRow(path, _caption(d), "corrupt", _EXPECTED["corrupt"])


def _make_html(b: _Builder, i: int) -> DemoRow:
    """An HTML page served as image/jpeg at a .jpg path (a typical soft-404 or hotlink wall)."""
    path = b.new_path("jpg")
    title = b.rng.choice(("Image not available", "Hotlinking not allowed", "Page moved"))
    body = (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f'<body><h1>{title}</h1><p>Request {i}: please visit <a href="/">our site</a>.</p>'
        "</body></html>\n"
    ).encode()
    b.add(path, body, "image/jpeg")
    color, shape = b.rng.choice(list(_PALETTE)), b.rng.choice(_SHAPES)
    return DemoRow(path, f"a {color} {shape} on a plain background", "html", _EXPECTED["html"])


def _make_copies(b: _Builder, originals: list[DemoRow], n: int) -> list[tuple[DemoRow, DemoRow]]:
    """``n`` (original, copy) pairs, spread over the originals round-robin."""
    pairs = []
    for j in range(n):
        orig = originals[j % len(originals)]
        ext = orig.path.rsplit(".", 1)[1]
        path = b.new_path(ext)
        src = b.objects[orig.path]
        b.add(path, src.body, src.content_type)
        caption = b.rng.choice(_COPY_TEMPLATES).format(orig.caption)
        pairs.append((orig, DemoRow(path, caption, "duplicate", _EXPECTED["duplicate"])))
    return pairs


def _shuffle_keeping_copies_after(
    b: _Builder, rows: list[DemoRow], pairs: list[tuple[DemoRow, DemoRow]]
) -> list[DemoRow]:
    """Shuffle ``rows``, then insert each copy at a random position after its original."""
    out = list(rows)
    b.rng.shuffle(out)
    for orig, copy in pairs:
        at = out.index(orig)
        out.insert(b.rng.randint(at + 1, len(out)), copy)
    return out


def build_corpus(
    n_clean: int = 300, seed: int = 0, slow_delay_s: float = 6.0
) -> tuple[dict[str, WebObject], list[DemoRow]]:
    """Objects by path, and the URL list rows (clean rows plus planted defects).

    Each defect kind except ``slow`` gets ``min(12, 4 + n_clean // 100)`` rows (7 at the
    default 300); there is exactly one slow row. Duplicate copies always follow their
    original, which is a clean row that must be kept.
    """
    if n_clean < 1:
        raise ValueError("n_clean must be >= 1")
    k = _defect_count(n_clean)
    b = _Builder(seed, n_objects=n_clean + 1 + 5 * k)
    clean = [_make_image_row(b, _MIN_SIDE, _MAX_SIDE, None) for _ in range(n_clean)]
    rows = list(clean)
    rows += [_make_missing(b, i) for i in range(k)]
    rows.append(_make_slow(b, slow_delay_s))
    rows += [_make_corrupt(b, i) for i in range(k)]
    rows += [_make_html(b, i) for i in range(k)]
    rows += [_make_image_row(b, 8, 24, "tiny") for _ in range(k)]
    originals = b.rng.sample(clean, min(len(clean), math.ceil(k / 2)))
    pairs = _make_copies(b, originals, k)
    return b.objects, _shuffle_keeping_copies_after(b, rows, pairs)
