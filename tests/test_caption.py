"""The caption stage on real captions, called directly (no Ray)."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from curate.signals.caption import (
    STOCK_ALT_TEXTS,
    CaptionConfig,
    CaptionSignals,
    caption_signals,
    normalize_caption,
)


def run(captions: list[str | None]) -> list[dict]:
    table = pa.table({"caption": pa.array(captions, pa.string())})
    return CaptionSignals()(table).to_pylist()


BOILERPLATE = [
    # no_letters: non-empty, but no letter in any script
    ("12345", "no_letters"),
    ("!!!", "no_letters"),
    ("😀😀", "no_letters"),
    ("2019-05-01 12:30", "no_letters"),
    ("   ", "no_letters"),
    ("&nbsp;&nbsp;&nbsp;", "no_letters"),
    ("-", "no_letters"),
    ("", None),
    ("2019 Toyota Corolla", None),
    ("😀 happy birthday", None),
    # url
    ("http://x.com/a.jpg", "url"),
    ("https://cdn.shop.example.com/files/products/1234.png?v=16", "url"),
    ("www.example.com/page", "url"),
    ("example.com", "url"),
    ("(Example.org)", "url"),
    ("visit example.com for more photos", None),
    ("St. Louis", None),
    ("Vue.js", None),
    # filename
    ("IMG_1234.JPG", "filename"),
    ("DSC0042", "filename"),
    ("DSCN1234", "filename"),
    ("P1010001.jpg", "filename"),
    ("image-001.png", "filename"),
    ("photo_2019-05-01.jpeg", "filename"),
    ("Screenshot 2020-01-01 at 10.00.00.png", "filename"),
    ("Screen Shot 2019-03-04 at 1.23.45 PM.png", "filename"),
    ("20190501_123456.jpg", "filename"),
    ("WhatsApp Image 2021-05-01 at 10.11.12.jpeg", "filename"),
    ("1234567890.jpg", "filename"),
    ("untitled-1.gif", "filename"),
    ("IMG-20190501-WA0001", "filename"),
    ("my_cat.HEIC", "filename"),
    ("3f8a9c2e1b7d4f60a1c2", "filename"),  # hash stem
    ("550e8400-e29b-41d4-a716-446655440000.webp", "filename"),
    ("logo.svg", "filename"),
    ("how to convert png to jpg online", None),
    ("shot with a Nikon D750 and a 50mm lens", None),
    ("IMG_1234 at the beach in Nice", None),
    ("Screenshot of the settings page", None),
    # stock
    ("image", "stock"),
    ("Photo", "stock"),
    ("[Picture]", "stock"),
    ("Click here!", "stock"),
    ("Stock photo", "stock"),
    ("royalty-free stock photo", "stock"),
    ("click to enlarge", "stock"),
    ("No Image Available", "stock"),
    ("Loading...", "stock"),
    ("photo 1", "stock"),
    ("Image #2", "stock"),
    ("slide 3 of 10", "stock"),
    ("Insert image description here", "stock"),
    ("N/A", "stock"),
    ("null", "stock"),
    ("undefined", "stock"),
    ("фото", "stock"),
    ("图片", "stock"),
    ("a photo of a dog on the beach", None),
    ("company logo on a white background", None),
    ("click here to see the red dress", None),
    ("no image can capture this view", None),
    # repetitive
    ("sale sale sale sale sale", "repetitive"),
    ("Buy now buy now buy now buy now", "repetitive"),
    ("best best best best best price", "repetitive"),
    ("aaaaaaaaaaaa", "repetitive"),
    ("wow!!!!!!!!!!!!", "repetitive"),
    ("dog dog cat cat", None),
    ("very very very very good", None),
    ("a red car, a blue car and a green car", None),
    # real text in other scripts
    ("Красивый закат над морем летом", None),
    ("Фото красивого заката над морем", None),
    ("美丽的日落在海上", None),
    ("東京タワーの夜景の写真", None),
    ("서울의 밤 풍경", None),
    ("غروب الشمس فوق البحر", None),
    ("صورة غروب الشمس فوق البحر", None),
    ("सूर्यास्त के समय समुद्र तट", None),
    ("Ein Bild von einem Hund im Park", None),
]


@pytest.mark.parametrize(("caption", "kind"), BOILERPLATE)
def test_boilerplate_kind(caption, kind):
    assert caption_signals(caption)[2] == kind


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # double-escaped
        ("caf&eacute; &#8220;quoted&#x201D;", "café “quoted”"),
        ("Black&decker drill &copy 2020", "Black&decker drill &copy 2020"),  # no ';': left alone
        ("AT&T store", "AT&T store"),
        ("cafÃ© au lait", "café au lait"),  # mojibake
        ("caf&Atilde;&copy; au lait", "café au lait"),  # entity-escaped mojibake
        ("Itâ€™s a dog", "It’s a dog"),
        ("“curly” quotes ’stay’ and ﬁ ligature", "“curly” quotes ’stay’ and ﬁ ligature"),
        ("全角，标点。", "全角，标点。"),
        ("<b>red</b> car", "red car"),
        ("H<sub>2</sub>O molecule", "H2O molecule"),
        ("line one<br/>line two", "line one line two"),
        ('<p class="x">a <a href="/y">link</a></p>', "a link"),
        ("&lt;b&gt;bold&lt;/b&gt; text", "bold text"),
        ("<p>a <!-- hidden --> b</p><script>var x = 1;</script><STYLE>p {}</STYLE> c", "a b c"),
        ("<!-- never closed <b>x</b>", "<!-- never closed x"),
        ("a <b and c> d", "a <b and c> d"),  # not clearly markup
        ("press <Ctrl> + C", "press <Ctrl> + C"),
        ("x<y and y>z", "x<y and y>z"),
        ("I <3 my cat", "I <3 my cat"),
        ("a\u00a0red\tcar\non the\r\nroad", "a red car on the road"),
        ("  lots   of    space  ", "lots of space"),
        ("bell\x07 and\x00null\x7f", "bell andnull"),
        ("\ufeffbom at start", "bom at start"),
        ("\x1b[31mred\x1b[0m text", "red text"),
        ("fullwidth\u3000space", "fullwidth space"),
        (None, ""),
        ("", ""),
    ],
)
def test_normalize_caption(raw, norm):
    assert normalize_caption(raw) == norm


TRICKY = [
    "  a red  circle ",
    "",
    "  ",
    "\t",
    "\n\n",
    "a",
    " a b ",
    "a\u00a0b",
    "\u00a0lead and trail\u00a0",
    "tabs\tand\nnewlines\r\nhere",
    "a\x1cb\x1dc\x1ed\x1fe",
    "next\x85line",
    "zero\u200bwidth",
    "ideographic\u3000space",
    "naïve café",
    "😀😀 emoji 👍🏽 skin tone",
    "e\u0301 combining",
    "東京タワー",
    "caf\ufffd au lait",
]


def test_counts_match_python_on_tricky_strings():
    rows = run([*TRICKY, None])
    expected = [(len(t), len(t.split())) for t in TRICKY] + [(0, 0)]
    assert [(r["caption_chars"], r["caption_words"]) for r in rows] == expected


def test_columns_and_types():
    out = CaptionSignals()(pa.table({"caption": pa.array(["a red car"], pa.string())}))
    assert {name: out.schema.field(name).type for name in CaptionSignals.writes} == {
        "caption_norm": pa.string(),
        "caption_chars": pa.int32(),
        "caption_words": pa.int32(),
        "caption_unique_ratio": pa.float32(),
        "caption_boilerplate": pa.string(),
        "caption_hash": pa.uint64(),
    }
    assert CaptionSignals.Config is CaptionConfig
    assert CaptionSignals.name == "caption" and CaptionSignals.reads == ("caption",)


def test_null_and_empty_captions():
    rows = run([None, "", "   "])
    assert [r["caption_norm"] for r in rows] == ["", "", ""]
    assert [(r["caption_chars"], r["caption_words"]) for r in rows] == [(0, 0), (0, 0), (3, 0)]
    assert [r["caption_unique_ratio"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["caption_boilerplate"] for r in rows] == [None, None, "no_letters"]


def test_unique_ratio_uses_lowercased_words_of_the_normalised_caption():
    rows = run(["The dog and the DOG", "<b>one</b> two", "sale sale sale sale"])
    assert rows[0]["caption_unique_ratio"] == pytest.approx(3 / 5)
    assert rows[1]["caption_unique_ratio"] == 1.0
    assert rows[2]["caption_unique_ratio"] == pytest.approx(0.25)


def test_counts_are_on_the_raw_caption_not_the_normalised_one():
    raw = "  <b>red</b>&amp;blue  "
    (row,) = run([raw])
    assert (row["caption_chars"], row["caption_words"]) == (len(raw), 1) == (23, 1)
    assert row["caption_norm"] == "red&blue"


def test_large_and_replacement_character_captions_do_not_crash():
    big = " ".join(f"word{i}" for i in range(2_000))[:10_240]  # 10 KB, no repeats
    sentence = "a long descriptive caption about a red car parked near the old harbour. "
    looped = (sentence * (10_240 // len(sentence) + 1))[:10_240]  # the same sentence 140 times
    invalid = b"caf\xe9 au lait \xff\xfe near the \xc3 river".decode("utf-8", errors="replace")
    junk = "x" * 10_240
    rows = run([big, invalid, junk, "\ufffd\ufffd\ufffd", looped])
    assert rows[0]["caption_chars"] == 10_240 and rows[0]["caption_words"] == len(big.split())
    assert rows[0]["caption_boilerplate"] is None
    assert "\ufffd" in rows[1]["caption_norm"] and rows[1]["caption_boilerplate"] is None
    assert rows[1]["caption_words"] == len(invalid.split())
    assert rows[2]["caption_boilerplate"] == "repetitive"
    assert rows[3]["caption_boilerplate"] == "no_letters"
    assert rows[4]["caption_boilerplate"] == "repetitive"


def test_pathological_markup_and_patterns_stay_fast():
    hostile = [
        "<!--" * 3000,
        "<script>" * 1500,
        "<b " + "=" * 10_000,
        "<a " * 4000,
        "img1234" + "_a" * 5000 + "!",
        "photo" + "." * 10_000 + "x",
        "a-" * 5000 + "b.com",
        "&amp;" * 2000,
    ]
    start = time.perf_counter()
    run(hostile)
    assert time.perf_counter() - start < 1.0


def test_existing_columns_are_replaced_not_duplicated():
    table = pa.table({"caption": ["a red car"], "caption_norm": ["stale"]})
    out = CaptionSignals()(table)
    assert out.column_names.count("caption_norm") == 1
    assert out.column("caption_norm").to_pylist() == ["a red car"]


def test_empty_batch():
    out = CaptionSignals()(pa.table({"caption": pa.array([], pa.string())}))
    assert out.num_rows == 0 and set(CaptionSignals.writes) <= set(out.column_names)


def test_stock_list_is_normalised_lowercase():
    assert all(t == t.lower().strip() and "  " not in t for t in STOCK_ALT_TEXTS)
