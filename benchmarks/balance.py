"""Benchmark: MetaCLIP-style concept matching (and, later, balancing) of captions.

Claim checked: "concept matching runs at >= 20,000 captions/s on one core" for 50,000 alt-text-like
captions against a vocabulary of >= 100,000 entries.

What is measured, in one process on one core (no Ray, so the number is per core):
- ``build``: building the Aho-Corasick automaton for the vocabulary, and pickling it to the cache;
- ``load``: reading the cached automaton back (what each worker's ``setup()`` does);
- ``match()``: :func:`curate.concepts.match` over the captions, one Python call per caption;
- ``stage``: the ``concepts`` stage over 256-row ``pyarrow`` batches (to_pylist, match, append).
The vocabulary is the default one (WordNet nouns, else the ImageNet-21k lemmas in timm), padded up
to ``--vocab`` entries with synthetic two-word entries (an adjective + a lemma: "red fox", "wooden
bowl"), since MetaCLIP's 500k-entry list is not shipped here; the padding is reported. Captions are
generated alt text: descriptive sentences built from common nouns and vocabulary lemmas, product
titles, file names, and some non-English captions.

Run from the repository root::

    .venv/bin/python benchmarks/balance.py                 # 50,000 captions, 120,000 entries
    .venv/bin/python benchmarks/balance.py --n 200000 --vocab 500000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import concepts
from curate.signals.concepts import ConceptMatch, ConceptsConfig

ADJECTIVES = (
    "red blue green yellow black white brown grey pink orange purple golden silver wooden metal "
    "plastic glass leather cotton vintage modern antique old new small large tiny giant wild young "
    "baby fresh frozen wet dry hot cold bright dark"
).split()
NOUNS = (
    "dog cat house car tree beach city street mountain lake river bowl table woman man child bicycle "
    "flower garden sunset market bridge chair window door kitchen bedroom boat train bird horse cake "
    "coffee shirt dress shoe bag phone laptop book sign building church castle road forest field sky"
).split()
PLACES = "the park|the beach|a kitchen|the city|a garden|the snow|a forest|the street|a market".split("|")
BRANDS = "Nike|Acme|IKEA|Samsung|Lego|Zara|Sony|Bosch".split("|")
FOREIGN = [
    "Un vieux phare sur la côte bretonne",
    "Ein Hund im Park bei Sonnenuntergang",
    "一只猫在沙发上睡觉",
    "Кошка спит на диване у окна",
    "Café com leite e pão de queijo",
    "東京タワーの夜景 🌃",
]


def padded_vocabulary(target: int, seed: int = 0) -> tuple[list[str], int]:
    """The default vocabulary plus synthetic "adjective lemma" entries up to ``target``; (entries, base size)."""
    base = concepts.load_vocabulary()
    if len(base) >= target:
        return base, len(base)
    rng = np.random.default_rng(seed)
    singles = [e for e in base if " " not in e and e.isalpha()]
    seen = set(base)
    entries = list(base)
    while len(entries) < target:
        for adj, lemma in zip(rng.choice(ADJECTIVES, 10_000), rng.choice(singles, 10_000), strict=True):
            pair = f"{adj} {lemma}"
            if pair not in seen:
                seen.add(pair)
                entries.append(pair)
    return entries[:target], len(base)


def make_captions(n: int, lemmas: list[str], seed: int = 0) -> list[str]:
    """Alt-text-like captions: sentences (most), product titles, file names, non-English."""
    rng = np.random.default_rng(seed)
    lemmas = np.array(lemmas)  # rng.choice on a list would convert it on every call

    def noun() -> str:
        return str(rng.choice(NOUNS)) if rng.random() < 0.7 else str(rng.choice(lemmas))

    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.65:
            words = [str(rng.choice(ADJECTIVES)), noun(), "with", "a", noun(), "in", str(rng.choice(PLACES))]
            if rng.random() < 0.5:
                words += ["and", "a", str(rng.choice(ADJECTIVES)), noun() + ("s" if rng.random() < 0.3 else "")]
            text = ("A " if rng.random() < 0.6 else "") + " ".join(words)
            out.append(text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else ""))
        elif kind < 0.85:
            out.append(
                f"{rng.choice(BRANDS)} Men's {noun().title()} - {str(rng.choice(ADJECTIVES)).title()}, "
                f"Size {rng.choice(['S', 'M', 'L', 'XL'])} | Free Shipping"
            )
        elif kind < 0.93:
            out.append(f"IMG_{i:05d}.JPG" if rng.random() < 0.5 else f"stock photo {noun()} {i}")
        else:
            out.append(FOREIGN[i % len(FOREIGN)])
    return out


def matching_section(args: argparse.Namespace) -> dict:
    """Build / load times of the automaton and captions/s of matching, on one core."""
    entries, base_size = padded_vocabulary(args.vocab)
    lemmas = [e for e in entries[:base_size] if " " not in e]
    captions = make_captions(args.n, lemmas)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(entries) + "\n", encoding="utf-8")
        saved_cache = os.environ.get("CURATE_CACHE")
        os.environ["CURATE_CACHE"] = str(Path(tmp) / "cache")  # a cold cache, removed afterwards
        start = time.perf_counter()
        concepts.build_automaton(entries)
        build_s = time.perf_counter() - start
        stage = ConceptMatch(ConceptsConfig(vocabulary=str(vocab_file)))
        start = time.perf_counter()
        stage.ensure_setup()  # vocabulary file read + build + pickle to the cache
        first_setup_s = time.perf_counter() - start
        concepts._MEMO.clear()  # as in a fresh worker process
        stage = ConceptMatch(ConceptsConfig(vocabulary=str(vocab_file)))
        start = time.perf_counter()
        stage.ensure_setup()  # vocabulary file read + cached automaton load
        load_s = time.perf_counter() - start
        automaton = stage._automaton

        start = time.perf_counter()
        ids = [concepts.match(automaton, c) for c in captions]
        match_s = time.perf_counter() - start
        table = pa.table({"caption": pa.array(captions, pa.string())})
        tables = [table.slice(i, 256) for i in range(0, len(captions), 256)]
        start = time.perf_counter()
        for t in tables:
            stage(t)
        stage_s = time.perf_counter() - start
        if saved_cache is None:
            del os.environ["CURATE_CACHE"]
        else:
            os.environ["CURATE_CACHE"] = saved_cache
    counts = np.array([len(i) for i in ids])
    return {
        "n_captions": args.n,
        "vocab_entries": len(entries),
        "vocab_default_entries": base_size,
        "vocab_synthetic_entries": len(entries) - base_size,
        "build_s": round(build_s, 2),
        "first_setup_s": round(first_setup_s, 2),
        "cached_setup_s": round(load_s, 2),
        "match_captions_per_s": round(args.n / match_s),
        "stage_captions_per_s": round(args.n / stage_s),
        "mean_concepts_per_caption": round(float(counts.mean()), 2),
        "captions_with_no_concept": round(float((counts == 0).mean()), 3),
    }


def balancing_section(rows: int, concepts: int = 100_000, t: int = 20_000) -> dict:
    """Seconds to balance ``rows`` rows of Zipf-distributed concept ids (1-3 per row), as the
    balance policy does after fetching them: flatten, count, draw (and solve a cap for a target)."""
    import numpy as np
    import pyarrow as pa

    from curate.decide.balance import balanced_keep, concept_pairs, solve_cap

    rng = np.random.default_rng(0)
    per_row = rng.integers(1, 4, rows)
    flat_ids = np.minimum(rng.zipf(1.3, int(per_row.sum())) - 1, concepts - 1).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_ids))
    start = time.perf_counter()
    flat, parent = concept_pairs(ids)
    keep = balanced_keep(flat, parent, rows, t, seed=0)
    draw_s = time.perf_counter() - start
    start = time.perf_counter()
    cap = solve_cap(flat, parent, rows, rows // 4)
    solve_s = time.perf_counter() - start
    return {"rows": rows, "t": t, "kept": int(keep.sum()), "balance_s": round(draw_s, 2),
            "target": rows // 4, "solved_t": cap, "solve_cap_s": round(solve_s, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=50_000, help="captions")
    parser.add_argument("--vocab", type=int, default=120_000, help="vocabulary entries (padded)")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows for the balancing timing")
    parser.add_argument("--out", default="benchmarks/results/balance.json")
    args = parser.parse_args()
    m = matching_section(args)
    print(
        f"vocabulary: {m['vocab_entries']:,} entries = {m['vocab_default_entries']:,} default "
        f"+ {m['vocab_synthetic_entries']:,} synthetic 'adjective lemma' pairs; {args.n:,} captions; one core"
    )
    print(f"{'matching':28} {'value':>12}")
    for label, key in [
        ("automaton build (s)", "build_s"),
        ("first setup: build+cache (s)", "first_setup_s"),
        ("cached setup (s)", "cached_setup_s"),
        ("match() captions/s", "match_captions_per_s"),
        ("stage captions/s", "stage_captions_per_s"),
        ("concepts per caption", "mean_concepts_per_caption"),
        ("share with no concept", "captions_with_no_concept"),
    ]:
        print(f"{label:28} {m[key]:12,}")
    b = balancing_section(args.rows)
    print(f"balancing {b['rows']:,} rows (t={b['t']:,}): {b['balance_s']} s, kept {b['kept']:,}; "
          f"solving t for {b['target']:,} rows: t={b['solved_t']:,} in {b['solve_cap_s']} s")  # fmt: skip
    result = {"matching": m, "balancing": b}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
