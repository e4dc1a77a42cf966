"""A concept vocabulary and whole-word substring matching of captions against it (MetaCLIP).

MetaCLIP (Xu et al. 2023, "Demystifying CLIP Data") matches every caption against a vocabulary of
concepts by substring search and then balances the pool by how often each concept was matched.
This module owns the vocabulary and the matching; the balancing is a decide policy.

- The id of a concept is its index in :func:`load_vocabulary`'s list, so the list's order is stable.
- Entries and captions are normalised the same way (``str.lower``); a hit counts only when the
  characters either side of it are not letters or digits, so "cat" matches "a cat's toy" and
  "(cat)" but not "category" or "bobcat". Plurals match only when the vocabulary lists them.
- The Aho-Corasick automaton (pyahocorasick) is built once per vocabulary and pickled under
  ``$CURATE_CACHE/concepts/`` (or ``~/.cache/curate/concepts/``), keyed by a hash of the entries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from pathlib import Path

import ahocorasick

from curate.io import AtomicFile, cache_dir

WORDNET_NOUNS = Path("/usr/share/wordnet/index.noun")
"""WordNet 3.0 noun index from Debian's ``wordnet-base`` package: the default, when installed."""
TIMM_LEMMAS = "data/_info/imagenet_synset_to_lemma.txt"
"""Fallback inside the timm package: the lemmas of the ImageNet-21k synsets (WordNet nouns)."""

_MEMO: dict[str, ahocorasick.Automaton] = {}
"""Automata already loaded in this process, by vocabulary hash (Ray reuses worker processes)."""


def normalize(text: str) -> str:
    """The one normalisation applied to entries and captions alike."""
    return text.strip().lower()


def load_vocabulary(source: str | None = None) -> list[str]:
    """Normalised, de-duplicated entries in a stable order; an entry's index is its concept id.

    ``source``: None for the default (WordNet 3.0 noun lemmas if ``/usr/share/wordnet/index.noun``
    exists, else the ImageNet-21k lemmas shipped in timm); or a path to a text file with one entry
    per line (lines starting with ``#`` are comments), or to a Parquet file with a ``concept``
    column (any other column, such as ``weight``, is ignored here).
    """
    if source is None:
        raw = _wordnet_nouns(WORDNET_NOUNS) if WORDNET_NOUNS.exists() else _timm_lemmas()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"concept vocabulary file not found: {path}")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "concept" not in table.column_names:
                raise ValueError(f"{path}: a Parquet vocabulary needs a 'concept' column, has {table.column_names}")
            raw = [v for v in table.column("concept").to_pylist() if v is not None]
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            raw = [line for line in lines if not line.lstrip().startswith("#")]
    entries = list(dict.fromkeys(e for e in map(normalize, raw) if e))  # first occurrence's order
    if not entries:
        raise ValueError(f"concept vocabulary {source or 'default'} has no entries")
    return entries


def _wordnet_nouns(path: Path) -> list[str]:
    """First field of each index.noun line, ``_`` as space; skips the licence header and 1-char lemmas."""
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):  # the licence header lines start with two spaces
                continue
            lemma = line.split(" ", 1)[0].replace("_", " ")
            if len(lemma) > 1:
                out.append(lemma)
    return out


def _timm_lemmas() -> list[str]:
    """The lemmas in timm's ``imagenet_synset_to_lemma.txt`` (``synset<TAB>lemma1, lemma2, ...``)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"no default concept vocabulary: {WORDNET_NOUNS} is absent (apt install wordnet-base) "
            "and timm is not installed; pass a vocabulary file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / TIMM_LEMMAS
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        _, _, lemmas = line.partition("\t")
        out.extend(lemma for lemma in lemmas.split(",") if len(lemma.strip()) > 1)
    return out


def build_automaton(entries: list[str]) -> ahocorasick.Automaton:
    """An Aho-Corasick automaton whose value for ``entries[i]`` is ``(i, len(entries[i]))``.

    Keys are normalised like captions; pass :func:`load_vocabulary`'s list (already normalised and
    de-duplicated; of two entries that normalise alike, the later id would win).
    """
    automaton = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        key = normalize(entry)
        if key:  # an empty key would "match" everywhere
            automaton.add_word(key, (i, len(key)))
    automaton.make_automaton()
    return automaton


def vocabulary_hash(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()[:20]


def cached_automaton(source: str | None = None) -> tuple[ahocorasick.Automaton, list[str]]:
    """The automaton for ``source``'s vocabulary and the entries; built once, then read from disk."""
    entries = load_vocabulary(source)
    key = vocabulary_hash(entries)
    if key in _MEMO:
        return _MEMO[key], entries
    path = cache_dir("concepts") / f"{key}.pkl"
    if path.exists():
        with path.open("rb") as f:
            automaton = pickle.load(f)
    else:
        automaton = build_automaton(entries)
        with AtomicFile(str(path)) as f:  # concurrent workers never read a half-written file
            pickle.dump(automaton, f, protocol=pickle.HIGHEST_PROTOCOL)
    _MEMO[key] = automaton
    return automaton, entries


def match(automaton: ahocorasick.Automaton, text: str) -> list[int]:
    """Sorted ids of the concepts found in ``text`` as whole words (each id once)."""
    if automaton.kind != ahocorasick.AHOCORASICK:  # no entries: nothing can match
        return []
    text = normalize(text)
    n = len(text)
    found = set()
    for end, (concept, length) in automaton.iter(text):
        start = end - length + 1
        if start > 0 and text[start - 1].isalnum():
            continue
        if end + 1 < n and text[end + 1].isalnum():
            continue
        found.add(concept)
    return sorted(found)
