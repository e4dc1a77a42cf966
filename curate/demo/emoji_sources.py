"""Real image-text pairs available offline: emoji glyphs of several artists with their names.

Pool sources (the noisy web pool is made of these):

- ``noto``: Debian ``fonts-noto-color-emoji`` rendered with Pillow (the bitmap strike at size 109,
  ``embedded_color=True``), named by the PyPI ``emoji`` package (CLDR short names, with CLDR
  translations in 12 other languages);
- ``openmoji``: the npm ``openmoji`` package's colour SVGs (rasterised with ``cairosvg``), named by
  the annotation and tags of its ``data/openmoji.csv`` (OpenMoji's own extra icons included).

Seed sources (the trusted set the CLIP filter is trained on; never in the pool): the Iconify
JSON sets of other artists from npm (``ICONIFY_VERSIONS``), each icon mapped to its emoji sequence
by the set's ``chars.json`` or else by its name (a slug of the CLDR name), and named like ``noto``.

A second corpus, ``icons`` (``CORPORA``), has no emoji: npm ``@iconify-json`` sets of other kinds
(``ICON_SETS``): country flags (flag-icons, MIT) named by ``pycountry`` (ISO 3166 names and their
iso-codes translations in the 12 LANGUAGES), brand logos (CC0; the slug is the name) and
flat-color-icons (MIT). Only the flags have translations, so its non-English rows are all flags.

Skin-tone and gender variants are left out (they differ from their base emoji only in colour or
hair, which is not what "distinct image" should mean), and so are glyphs that are the same picture
as an earlier one (e.g. the flags of Monaco and Indonesia, or French territories that show the
French flag): :func:`load_catalogue` drops a glyph whose 16x16 colour thumbnail is within
``SAME_PICTURE_RMS`` of an earlier one of the same source. Nothing here is downloaded at import;
:func:`ensure_sources` installs what is missing (root: apt-get, npm) or says how.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_SIZE = 109  # the only size of the font's colour bitmap strike
NOTO_MAX_EMOJI_VERSION = 15.0  # Debian 12's fonts-noto-color-emoji 2.042 covers Emoji 15.0
OPENMOJI_VERSION = "17.0.0"
ICONIFY_VERSIONS = {"twemoji": "1.2.5", "fluent-emoji-flat": "1.2.6", "fluent-emoji": "1.2.7", "emojione": "1.2.3"}
"""npm ``@iconify-json/NAME`` sets of the seed artists: Twemoji (CC-BY-4.0), Fluent Emoji flat and 3D
(MIT), EmojiOne 2 (CC-BY-4.0)."""
SOURCES = ("noto", "openmoji")
ICON_SETS = {"flag": "1.2.12", "logos": "1.2.19", "flat-color-icons": "1.2.3"}
"""npm ``@iconify-json/NAME`` sets of the ``icons`` corpus: flag-icons (MIT), SVG Logos (CC0), flat-color-icons (MIT)."""
CORPORA = {"emoji": SOURCES, "icons": tuple(ICON_SETS)}
"""Pool sources of each corpus filter_quality.py can build (``--corpus``)."""
_PYCOUNTRY_LOCALES = {"zh": "zh_CN"}
SEED_SOURCES = tuple(ICONIFY_VERSIONS)
LANGUAGES = ("de", "fr", "es", "it", "pt", "ru", "ja", "zh", "ko", "tr", "id", "ar")
SAME_PICTURE_RMS = 8.0  # 16x16 RGB thumbnails closer than this (0-255 scale) are one picture (up to scale)
CATALOGUE_VERSION = 1

_TONES = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))
_GENDER_SIGNS = ("\u2640", "\u2642")
_ZWJ, _VS16 = "\u200d", "\ufe0f"
_MAN_WOMAN = ("\U0001f468", "\U0001f469")


class SourceUnavailable(RuntimeError):
    """A source of real pairs is missing and could not be installed; the message says how."""


@dataclass(frozen=True)
class Pair:
    """One real image-text pair: a glyph and its names."""

    source: str  # "noto", "openmoji", an Iconify set
    ident: str  # the emoji sequence (noto) or the OpenMoji hexcode
    concept: str  # shared by both sources' glyphs of one emoji (the sequence without U+FE0F)
    name: str  # English name, e.g. "smiling face with heart-eyes", "flag of Sweden"
    tags: tuple[str, ...] = ()  # English keywords (OpenMoji's CLDR tags and its own)
    names: tuple[tuple[str, str], ...] = ()  # (language, name) CLDR translations

    @property
    def translations(self) -> dict[str, str]:
        return dict(self.names)


# --- installing the sources ---------------------------------------------------------------------


def default_cache() -> Path:
    """``$CURATE_QUALITY_CACHE`` or ``~/.cache/curate/quality-corpus``."""
    return Path(os.environ.get("CURATE_QUALITY_CACHE", "~/.cache/curate/quality-corpus")).expanduser()


def openmoji_dir(cache_dir: Path) -> Path:
    """Where the unpacked npm package lives (``package/color/svg``, ``package/data/openmoji.csv``)."""
    return Path(cache_dir) / f"openmoji-{OPENMOJI_VERSION}" / "package"


def ensure_sources(sources: tuple[str, ...] = SOURCES, cache_dir: Path | None = None, install: bool = True) -> None:
    """Check (and with ``install``, install) what each source needs; raise SourceUnavailable if missing."""
    cache_dir = Path(cache_dir or default_cache())
    _require_module("emoji", "emoji")
    if "noto" in sources and not NOTO_FONT.is_file():
        if install:
            _apt_install("fonts-noto-color-emoji")
        if not NOTO_FONT.is_file():
            raise SourceUnavailable(f"{NOTO_FONT} is missing: apt-get install -y fonts-noto-color-emoji")
    if set(sources) - {"noto"}:
        _require_module("cairosvg", "cairosvg (and the libcairo2 system library)")
    if "openmoji" in sources and not (openmoji_dir(cache_dir) / "data" / "openmoji.csv").is_file():
        _npm_unpack(
            "openmoji",
            OPENMOJI_VERSION,
            openmoji_dir(cache_dir).parent,
            ("package/color/svg/", "package/data/"),
            install,
        )
    if "flag" in sources:
        _require_module("pycountry", "pycountry")
    for name in set(sources) & set(ICON_SETS):
        if not (iconify_dir(name, cache_dir) / "icons.json").is_file():
            _npm_unpack(f"@iconify-json/{name}", ICON_SETS[name], iconify_dir(name, cache_dir).parent,
                        ("package/icons.json",), install)  # fmt: skip
    for name in set(sources) & set(ICONIFY_VERSIONS):
        if not (iconify_dir(name, cache_dir) / "chars.json").is_file():
            target = iconify_dir(name, cache_dir).parent
            _npm_unpack(
                f"@iconify-json/{name}",
                ICONIFY_VERSIONS[name],
                target,
                ("package/icons.json", "package/chars.json"),
                install,
            )


def _require_module(module: str, package: str) -> None:
    try:
        __import__(module)
    except (ImportError, OSError) as err:
        raise SourceUnavailable(
            f"Python module {module!r} is missing ({err}): .venv/bin/pip install {package}"
        ) from None


def _apt_install(package: str) -> None:
    """apt-get install as root; a failure leaves the check to the caller."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"installing Debian package {package} (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, capture_output=True)


def _npm_unpack(package: str, version: str, target: Path, members: tuple[str, ...], install: bool) -> None:
    """``npm pack PACKAGE@VERSION`` into ``target`` (a cache, never the repository); unpack ``members``."""
    if not install:
        raise SourceUnavailable(f"{package}@{version} is not unpacked in {target}: run benchmarks/quality_setup.sh")
    if shutil.which("npm") is None:
        raise SourceUnavailable(f"npm is missing: apt-get install -y npm ({package} comes from the npm registry)")
    target.mkdir(parents=True, exist_ok=True)
    print(f"fetching {package}@{version} (npm pack) into {target}")
    proc = subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--silent"], cwd=target, capture_output=True, text=True
    )
    tgz = target / proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
    if tgz is None or not tgz.is_file():
        raise SourceUnavailable(f"npm pack {package}@{version} failed: {proc.stderr.strip()[-300:]}")
    with tarfile.open(tgz) as tar:
        tar.extractall(target, members=[m for m in tar.getmembers() if m.name.startswith(members)], filter="data")
    tgz.unlink()


def iconify_dir(name: str, cache_dir: Path) -> Path:
    """Where an Iconify set's ``icons.json`` and ``chars.json`` are unpacked."""
    return Path(cache_dir) / f"iconify-{name}-{ICONIFY_VERSIONS.get(name) or ICON_SETS[name]}" / "package"


# --- names ----------------------------------------------------------------------------------------


def _emoji_data() -> dict:
    import emoji

    emoji.config.load_language(list(LANGUAGES))
    return emoji.EMOJI_DATA


def _clean_name(short: str) -> str:
    """``:smiling_face_with_heart-eyes:`` -> ``smiling face with heart-eyes``."""
    return short.strip(":").replace("_", " ").strip()


def _is_flag(seq: str) -> bool:
    return all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in seq) or seq.startswith("\U0001f3f4\U000e0067")


def _english_name(seq: str, short: str) -> str:
    """CLDR name in alt-text form: country flags become "flag of X", ``keycap: 1`` "keycap 1"."""
    name = _clean_name(short)
    if _is_flag(seq) and not name.lower().startswith("flag"):
        return f"flag of {name}"
    if name.startswith("flag: "):
        return "flag of " + name[len("flag: ") :]
    return name.replace("keycap: ", "keycap ")


def _translations(entry: dict) -> tuple[tuple[str, str], ...]:
    return tuple((lang, _clean_name(entry[lang])) for lang in LANGUAGES if entry.get(lang))


def _is_variant(seq: str) -> bool:
    """Skin-tone and gendered sequences: ZWJ with a female/male sign, or a ZWJ sequence that starts
    with MAN or WOMAN (professions, hair styles, families, couples; the PERSON forms stay)."""
    if any(c in _TONES for c in seq):
        return True
    return _ZWJ in seq and (any(g in seq for g in _GENDER_SIGNS) or seq[0] in _MAN_WOMAN)


# --- glyphs ---------------------------------------------------------------------------------------


@cache
def _noto_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(NOTO_FONT), NOTO_SIZE)


def noto_glyph(seq: str) -> Image.Image:
    """The colour bitmap of ``seq`` (136x128 strike), cropped to its ink, RGBA."""
    font = _noto_font()
    canvas = Image.new("RGBA", (160, 150), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), seq, font=font, embedded_color=True)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def openmoji_glyph(hexcode: str, size: int, cache_dir: Path) -> Image.Image:
    """The OpenMoji colour SVG rasterised at ``size`` px, cropped to its ink, RGBA."""
    import cairosvg

    svg = openmoji_dir(cache_dir) / "color" / "svg" / f"{hexcode}.svg"
    png = cairosvg.svg2png(url=str(svg), output_width=size, output_height=size)
    with Image.open(io.BytesIO(png)) as im:
        glyph = im.convert("RGBA")
    box = glyph.getbbox()
    return glyph.crop(box) if box else glyph


@cache
def _iconify_set(name: str, cache_dir: Path) -> dict:
    return json.loads((iconify_dir(name, cache_dir) / "icons.json").read_text())


def iconify_glyph(name: str, icon: str, size: int, cache_dir: Path) -> Image.Image:
    """An icon of an Iconify set rasterised at ``size`` px, cropped to its ink, RGBA."""
    import cairosvg

    data = _iconify_set(name, Path(cache_dir))
    body = data["icons"][icon]
    w, h = body.get("width", data.get("width", 16)), body.get("height", data.get("height", 16))
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{body.get("left", 0)} {body.get("top", 0)} {w} {h}">{body["body"]}</svg>'
    )
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    with Image.open(io.BytesIO(png)) as im:
        out = im.convert("RGBA")
    box = out.getbbox()
    return out.crop(box) if box else out


def glyph(pair: Pair, size: int, cache_dir: Path | None = None) -> Image.Image:
    """The glyph of ``pair`` with its longer side ``size`` px, RGBA."""
    cache_dir = Path(cache_dir or default_cache())
    if pair.source == "noto":
        im = noto_glyph(pair.ident)
    elif pair.source == "openmoji":
        im = openmoji_glyph(pair.ident, int(size * 1.4), cache_dir)
    else:
        im = iconify_glyph(pair.source, pair.ident, int(size * 1.4), cache_dir)
    scale = size / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)


def thumbnail(im: Image.Image) -> np.ndarray:
    """16x16 RGB thumbnail of a glyph composited on mid grey, as float32 (768,)."""
    base = Image.new("RGBA", im.size, (128, 128, 128, 255))
    base.alpha_composite(im)
    return np.asarray(base.convert("RGB").resize((16, 16), Image.Resampling.BOX), np.float32).ravel()


# --- the catalogue ---------------------------------------------------------------------------------


def noto_pairs() -> list[Pair]:
    """Every fully qualified, non-variant emoji the installed font draws as one glyph."""
    import emoji

    data, font = _emoji_data(), _noto_font()
    pairs = []
    for seq, entry in data.items():
        if entry["status"] != emoji.STATUS["fully_qualified"] or entry["E"] > NOTO_MAX_EMOJI_VERSION:
            continue
        if _is_variant(seq) or font.getbbox(seq)[2] > 140:  # wider: the font has no single glyph
            continue
        name = _english_name(seq, entry["en"])
        pairs.append(Pair("noto", seq, seq.replace(_VS16, ""), name, (), _translations(entry)))
    return pairs


def openmoji_pairs(cache_dir: Path) -> list[Pair]:
    """OpenMoji rows without skin tones, gendered variants or components, with their annotations."""
    data = _emoji_data()
    with (openmoji_dir(cache_dir) / "data" / "openmoji.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = []
    for row in rows:
        seq = row["emoji"]
        if row["skintone"] or row["group"] == "component" or _is_variant(seq):
            continue
        svg = openmoji_dir(cache_dir) / "color" / "svg" / f"{row['hexcode']}.svg"
        if not svg.is_file():
            continue
        entry = data.get(seq) or data.get(seq + _VS16) or {}
        name = _english_name(seq, row["annotation"])
        if row["group"] == "extras-openmoji":  # OpenMoji's own names are slugs: "spouting-orca"
            name = name.replace("-", " ")
        tags = tuple(dict.fromkeys(t.strip() for t in f"{row['tags']},{row['openmoji_tags']}".split(",") if t.strip()))
        concept = seq.replace(_VS16, "") if entry else f"openmoji:{row['hexcode']}"
        pairs.append(Pair("openmoji", row["hexcode"], concept, name, tags, _translations(entry) if entry else ()))
    return pairs


def _thumbnail_or_none(pair: Pair, cache_dir: Path) -> np.ndarray | None:
    """The glyph's thumbnail, or None for the few SVGs cairosvg cannot draw (they are left out)."""
    try:
        return thumbnail(glyph(pair, 64, cache_dir))
    except Exception:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("’", "")).strip("-")


def _icon_sequences(cache_dir: Path) -> dict[str, str]:
    """Icon name -> emoji sequence: every set's ``chars.json``, then slugs of the CLDR names."""
    data = _emoji_data()
    names = {}
    for seq, entry in data.items():
        for short in (entry["en"], *entry.get("alias", ())):
            names.setdefault(_slug(_clean_name(short)), seq)
            names.setdefault("flag-for-" + _slug(_clean_name(short)), seq)  # EmojiOne's flag names
    for name in ICONIFY_VERSIONS:
        chars = iconify_dir(name, cache_dir) / "chars.json"
        if chars.is_file():
            for hexes, icon in json.loads(chars.read_text()).items():
                names.setdefault(icon, "".join(chr(int(h, 16)) for h in hexes.split("-")))
    return names


def iconify_pairs(name: str, cache_dir: Path) -> list[Pair]:
    """The icons of an Iconify set that map to a known, non-variant emoji."""
    data, sequences = _emoji_data(), _icon_sequences(cache_dir)
    pairs = []
    for icon in sorted(_iconify_set(name, Path(cache_dir))["icons"]):
        seq = sequences.get(icon)
        key = seq if seq in data else f"{seq}{_VS16}"
        entry = data.get(key)
        if entry is None or _is_variant(seq):
            continue
        pairs.append(
            Pair(name, icon, seq.replace(_VS16, ""), _english_name(key, entry["en"]), (), _translations(entry))
        )
    return pairs


def icon_pairs(name: str, cache_dir: Path) -> list[Pair]:
    """The icons of a non-emoji set: flags (4x3) of ISO 3166 countries with their translated names,
    or logos / flat-color icons named by their slug ("google-drive-icon" -> "google drive")."""
    icons = sorted(_iconify_set(name, Path(cache_dir))["icons"])
    if name == "flag":
        return [p for icon in icons if icon.endswith("-4x3") and (p := _flag_pair(icon)) is not None]
    pairs = []
    for icon in icons:
        base = icon.removesuffix("-icon")
        pairs.append(Pair(name, icon, f"{name}:{base}", base.replace("-", " ")))
    return pairs


def _flag_pair(icon: str) -> Pair | None:
    import pycountry

    country = pycountry.countries.get(alpha_2=icon.removesuffix("-4x3").upper())
    if country is None:
        return None
    english = getattr(country, "common_name", None) or country.name
    names = tuple(
        (lang, t) for lang in LANGUAGES if (t := _country_name(country.name, lang)) not in (country.name, english)
    )
    return Pair("flag", icon, f"flag:{country.alpha_2}", f"flag of {english}", (), names)


def _country_name(name: str, lang: str) -> str:
    """The iso-codes translation of an ISO 3166 name (the English name when there is none)."""
    import gettext

    import pycountry

    locale = _PYCOUNTRY_LOCALES.get(lang, lang)
    return gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[locale], fallback=True).gettext(name)


def distinct(pairs: list[Pair], thumbs: np.ndarray, rms: float = SAME_PICTURE_RMS) -> list[int]:
    """Indices of ``pairs`` kept: a glyph within ``rms`` of an earlier kept one of its source is dropped."""
    kept: list[int] = []
    for source in dict.fromkeys(p.source for p in pairs):
        idx = [i for i, p in enumerate(pairs) if p.source == source]
        x = thumbs[idx].astype(np.float64)
        sq = (x * x).sum(1)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0) / x.shape[1]
        alive = np.ones(len(idx), bool)
        for a in range(len(idx)):
            if alive[a]:
                later = np.arange(a + 1, len(idx))
                alive[later[dist2[a, a + 1 :] < rms * rms]] = False
        kept += [i for i, ok in zip(idx, alive, strict=True) if ok]
    return sorted(kept)


def load_catalogue(sources: tuple[str, ...] = SOURCES, cache_dir: Path | None = None) -> list[Pair]:
    """The distinct real pairs of ``sources``, cached as JSON in ``cache_dir`` (built once, ~10 s a source)."""
    cache_dir = Path(cache_dir or default_cache())
    path = cache_dir / f"catalogue-v{CATALOGUE_VERSION}-{'-'.join(sources)}.json"
    if path.is_file():
        return [
            Pair(**{**p, "tags": tuple(p["tags"]), "names": tuple(map(tuple, p["names"]))})
            for p in json.loads(path.read_text())
        ]
    ensure_sources(sources, cache_dir)
    pairs = (noto_pairs() if "noto" in sources else []) + (openmoji_pairs(cache_dir) if "openmoji" in sources else [])
    pairs += [p for name in sources if name in ICONIFY_VERSIONS for p in iconify_pairs(name, cache_dir)]
    pairs += [p for name in sources if name in ICON_SETS for p in icon_pairs(name, cache_dir)]
    thumbs = [_thumbnail_or_none(p, cache_dir) for p in pairs]
    pairs, thumbs = zip(*[(p, t) for p, t in zip(pairs, thumbs, strict=True) if t is not None], strict=True)
    pairs = [pairs[i] for i in distinct(list(pairs), np.stack(thumbs))]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([p.__dict__ for p in pairs], ensure_ascii=False))
    tmp.replace(path)
    return pairs
