"""Concept vocabulary and whole-word matching (MetaCLIP style); small explicit vocabularies."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import concepts
from curate.concepts import build_automaton, cached_automaton, load_vocabulary, match
from curate.signals.concepts import ConceptMatch, ConceptsConfig

ENTRIES = ["cat", "dog", "hot dog", "t-shirt", "ice", "ice cream", "café", "geese", "goose", "new york"]


def found(text: str, entries: list[str] = ENTRIES) -> list[str]:
    return [entries[i] for i in match(build_automaton(entries), text)]


def test_word_boundaries():
    assert found("a cat on the sofa") == ["cat"]
    assert found("category") == []
    assert found("a bobcat") == []
    assert found("two cats") == []  # no stemming: "cats" is not listed
    assert found("two cats", ["cat", "cats"]) == ["cats"]
    assert found("cat") == ["cat"]
    assert found("catdog") == []
    assert found("cat2") == []


@pytest.mark.parametrize("text", ["cat,", "cat.", "(cat)", "a cat's toy", '"cat"', "cat!dog", "cat_photo"])
def test_punctuation_is_a_boundary(text):
    assert "cat" in found(text)


def test_multi_word_and_hyphenated_entries():
    assert found("a hot dog with mustard") == ["dog", "hot dog"]
    assert found("a hotdog") == []
    assert found("blue t-shirt, size XL") == ["t-shirt"]
    assert found("skyline of New York at night") == ["new york"]


def test_plurals_only_when_listed():
    assert found("a flock of geese") == ["geese"]
    assert found("a goose") == ["goose"]
    assert found("two gooses") == []


def test_case_insensitive():
    assert found("HOT DOG") == ["dog", "hot dog"]
    assert found("Cat") == ["cat"]
    assert found("x", ["X-Ray"]) == []
    assert found("an x-ray image", ["X-Ray"]) == ["X-Ray"]


def test_overlapping_entries_and_repeats():
    assert found("ice cream") == ["ice", "ice cream"]
    assert found("cat cat cat, a cat and a dog") == ["cat", "dog"]
    assert match(build_automaton(ENTRIES), "dog cat dog") == [0, 1]  # sorted ids, each once


@pytest.mark.parametrize(
    "text",
    ["一只猫在沙发上", "Кошка спит на диване", "Ein Café in München", "🐱 cat 🐶", "", "   ", "\u0130stanbul cat"],
)
def test_non_ascii_does_not_crash(text):
    assert isinstance(match(build_automaton(ENTRIES), text), list)


def test_non_ascii_entries():
    assert found("coffee at the café.") == ["café"]
    assert found("CAFÉ") == ["café"]
    assert found("🐱cat🐶") == ["cat"]  # emoji are not letters or digits
    assert found("кошка спит", ["кошка"]) == ["кошка"]
    assert found("кошкаа", ["кошка"]) == []
    assert found("一只猫", ["猫"]) == []  # no spaces in Chinese: the whole run is one "word"


def test_stage_on_table():
    stage = ConceptMatch(ConceptsConfig(vocabulary=None, column="text"))
    stage._automaton, stage._ready = build_automaton(ENTRIES), True
    table = pa.table({"text": ["A cat and a dog", None, "nothing here", "ice cream"]})
    out = stage(table)
    assert stage.reads == ("text",)
    assert out.schema.field("concept_ids").type == pa.list_(pa.int32())
    assert out.schema.field("concept_count").type == pa.int32()
    assert out.column("concept_ids").to_pylist() == [[0, 1], [], [], [4, 5]]
    assert out.column("concept_count").to_pylist() == [2, 0, 0, 2]
    state = stage.__getstate__()
    assert state["_automaton"] is None and state["_ready"] is False
    pickle.dumps(stage)


def test_stage_with_vocabulary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# animals\nCat\ndog\n\n  cat  \n")
    stage = ConceptMatch(ConceptsConfig(vocabulary=str(vocab)))
    stage.check()
    out = stage(pa.table({"caption": ["Dog and CAT"]}))
    assert out.column("concept_ids").to_pylist() == [[0, 1]]


def test_check_fails_on_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ConceptMatch(ConceptsConfig(vocabulary=str(tmp_path / "missing.txt"))).check()


def test_default_vocabulary_is_large():
    entries = load_vocabulary()
    assert len(entries) > 10_000
    assert len(set(entries)) == len(entries)
    assert all(e == e.strip().lower() and len(e) > 1 for e in entries)
    assert {"dog", "hot dog"} <= set(entries)
    assert load_vocabulary() == entries  # stable order: ids do not move


def test_text_and_parquet_vocabularies(tmp_path):
    text = tmp_path / "v.txt"
    text.write_text("# comment\nRed Fox\nred fox\nbadger\n\n")
    assert load_vocabulary(str(text)) == ["red fox", "badger"]
    parquet = tmp_path / "v.parquet"
    pq.write_table(pa.table({"concept": ["Otter", None, "otter", "sea lion"], "weight": [1.0, 2.0, 3.0, 4.0]}), parquet)
    assert load_vocabulary(str(parquet)) == ["otter", "sea lion"]
    pq.write_table(pa.table({"name": ["otter"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="concept"):
        load_vocabulary(str(tmp_path / "bad.parquet"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no entries"):
        load_vocabulary(str(tmp_path / "empty.txt"))


def test_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    monkeypatch.setattr(concepts, "_MEMO", {})
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\ndog\n")
    _, entries = cached_automaton(str(vocab))
    files = list((tmp_path / "concepts").glob("*.pkl"))
    assert len(files) == 1 and entries == ["cat", "dog"]
    assert not list((tmp_path / "concepts").glob("*.tmp"))

    def no_build(_entries):
        raise AssertionError("rebuilt the automaton")

    monkeypatch.setattr(concepts, "build_automaton", no_build)
    monkeypatch.setattr(concepts, "_MEMO", {})  # a fresh process: read from disk
    again, _ = cached_automaton(str(vocab))
    assert match(again, "a dog") == [1]
    vocab.write_text("cat\ndog\nfox\n")  # another vocabulary, another key: must build
    with pytest.raises(AssertionError, match="rebuilt"):
        cached_automaton(str(vocab))
