"""English word evidence from word frequencies (the ``wordfreq`` package's word lists, offline).

fastText's lid.176.ftz reads characters, and on a caption of two or three words it often gives a
default answer ("a badger emoji" -> ru). Word frequencies see the words themselves: ``badger`` and
``emoji`` are common English words, ``flagge`` and ``simgesi`` are common German and Turkish ones.
:func:`english_margin` turns that into one number per caption, which the language policy's
``rule: vocab`` combines with fastText's answer, the script and the length.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache
from types import ModuleType

VOCAB_LANGUAGES = tuple("en de fr es it pt nl sv da nb fi pl cs sk sl sh ro hu tr id ms vi ca lv lt fil is".split())
"""English (first) and the Latin-script languages wordfreq 3.1 has word lists for: the languages a caption in
English letters may be in (other scripts are the policy's script test's job)."""

FLOOR_ZIPF = 3.0
"""wordfreq's ``small`` lists hold every word at Zipf >= 3 (once per million words) in every language;
a word missing from a list counts as this frequency, so rare words and names are evidence for none."""

TOKEN_CAP = 1.0
"""At most this many Zipf points per word for or against a language: one word shared by two languages
("logo" is common Portuguese, "a" Hungarian) cannot outvote the rest of the caption."""

_EXTRA = (
    "The language stage's `vocab: true` (and the language policy's `rule: vocab`) needs the word lists of "
    "the `wordfreq` package, a curate dependency: `pip install wordfreq`."
)


@cache
def word_lists() -> dict[str, dict[str, float]]:
    """Language -> {word: Zipf frequency above FLOOR_ZIPF} for VOCAB_LANGUAGES (loaded once per process,
    0.2-0.7 s and ~200 MB measured). Raises ImportError naming the package to install when wordfreq is missing."""
    wordfreq = check_vocab()
    return {
        lang: {
            word: math.log10(freq) + 9.0 - FLOOR_ZIPF
            for word, freq in wordfreq.get_frequency_dict(lang, "small").items()
        }
        for lang in VOCAB_LANGUAGES
    }


def check_vocab() -> ModuleType:
    """The wordfreq module; ImportError with the install command when it is missing (the stage's ``check``)."""
    try:
        import wordfreq
    except ImportError as err:
        raise ImportError(_EXTRA) from err
    return wordfreq


def words(text: str | None) -> list[str]:
    """The caption's words: wordfreq's Unicode tokenizer, case-folded, words of letters only."""
    import wordfreq

    return [token for token in wordfreq.simple_tokenize(text or "") if token.isalpha()]


def english_margin(text: str | None) -> float:
    """How much more English the caption's words are than any other listed language's, in capped Zipf
    points: min over languages L of the sum over words of clip(z_en(w) - z_L(w), -TOKEN_CAP, TOKEN_CAP),
    z being the Zipf frequency above FLOOR_ZIPF (0 when not listed). A common English word never counts
    against English ("logo" is commoner in Portuguese, "a" in Hungarian: both are English alt text).
    Positive: English words win ("a badger emoji" 0.7); negative: another language's do ("Flagge: Irak"
    -2.0); 0 without words, or with only names and rare words (fastText decides those)."""
    leads = [word_leads(token) for token in words(text)]
    return float(min(map(sum, zip(*leads, strict=True)))) if leads else 0.0


@lru_cache(maxsize=1 << 16)
def word_leads(word: str) -> tuple[float, ...]:
    """The word's capped English lead over each other language of VOCAB_LANGUAGES; a word in the English
    list counts only for English (never below 0)."""
    lists = word_lists()
    english = lists["en"].get(word, 0.0)
    leads = (min(max(english - lists[lang].get(word, 0.0), -TOKEN_CAP), TOKEN_CAP) for lang in VOCAB_LANGUAGES[1:])
    return tuple(max(lead, 0.0) if english > 0.0 else lead for lead in leads)
