"""MetaCLIP concept balancing on a constructed head-heavy pool (no Ray): counts, seeds, tails."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.decide import decide
from curate.decide.balance import Balance

N_CONCEPTS = 60
ZIPF = [round(6000 / (rank + 1)) for rank in range(N_CONCEPTS)]  # 6000, 3000, 2000, ... 100


def pool(tmp_path, extra: list[list[int]] = ()) -> str:
    """One row per (concept, occurrence): concept c appears in exactly ZIPF[c] rows, plus ``extra``."""
    ids = [[c] for c, count in enumerate(ZIPF) for _ in range(count)] + list(extra)
    rng = np.random.default_rng(7)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    n = len(ids)
    table = pa.table(
        {
            "key": [f"{i:07d}" for i in range(n)],
            "url": ["u"] * n,
            "caption": ["c"] * n,
            "status": ["success"] * n,
            "width": [100] * n,
            "decode_error": pa.nulls(n, pa.string()),
            "concept_ids": pa.array(ids, pa.list_(pa.int32())),
        }
    )
    pq.write_table(table, tmp_path / "samples.parquet")
    return str(tmp_path / "samples.parquet")


def balance(tmp_path, samples: str, info: dict | None = None, **config) -> list[dict]:
    out = tmp_path / f"decisions-{len(list(tmp_path.iterdir()))}"
    decide(samples, [Balance(Balance.Config(**config))], out, info=info)
    ids = pq.read_table(samples).select(["key", "concept_ids"]).to_pylist()
    decisions = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    return [{**row, **decisions[row["key"]]} for row in ids]


def kept_per_concept(rows: list[dict]) -> Counter:
    return Counter(c for r in rows if r["keep"] for c in r["concept_ids"])


def test_each_concept_ends_near_min_count_t(tmp_path):
    t = 400
    rows = balance(tmp_path, pool(tmp_path), t=t, seed=0)
    kept = kept_per_concept(rows)
    for concept, count in enumerate(ZIPF):
        if count <= t:
            assert kept[concept] == count  # tail concepts are never dropped
        else:  # Binomial(count, t / count): within 4 standard deviations of t
            assert abs(kept[concept] - t) <= 4 * np.sqrt(t * (1 - t / count)), (concept, kept[concept])
    assert {r["reason"] for r in rows if not r["keep"]} == {"balanced_out"}


def test_the_same_seed_gives_the_same_result_and_another_seed_differs(tmp_path):
    samples = pool(tmp_path)
    first = [r["keep"] for r in balance(tmp_path, samples, t=300, seed=1)]
    again = [r["keep"] for r in balance(tmp_path, samples, t=300, seed=1)]
    other = [r["keep"] for r in balance(tmp_path, samples, t=300, seed=2)]
    assert first == again and first != other


def test_a_row_with_any_tail_concept_is_always_kept(tmp_path):
    mixed = [[0, 59]] * 50  # the largest head concept together with the rarest one
    rows = balance(tmp_path, pool(tmp_path, mixed), t=150, seed=0)
    assert all(r["keep"] for r in rows if r["concept_ids"] == [0, 59])


def test_target_size_chooses_the_cap(tmp_path):
    info: dict = {}
    rows = balance(tmp_path, pool(tmp_path), info=info, target_size=8000, seed=0)
    kept = sum(r["keep"] for r in rows)
    assert abs(kept - 8000) <= 0.03 * 8000
    t = info["balance"]["t"]
    assert sum(min(c, t) for c in ZIPF) >= 8000 > sum(min(c, t - 1) for c in ZIPF)


@pytest.mark.parametrize(("policy", "kept"), [("drop", False), ("keep", True)])
def test_rows_matching_no_concept(tmp_path, policy, kept):
    rows = balance(tmp_path, pool(tmp_path, [[]] * 20), t=10_000, no_match=policy)
    unmatched = [r for r in rows if not r["concept_ids"]]
    assert len(unmatched) == 20 and all(r["keep"] is kept for r in unmatched)
    if not kept:
        assert {r["reason"] for r in unmatched} == {"no_concept"}


def test_exactly_one_of_t_or_target_size():
    with pytest.raises(ValueError, match="exactly one of t"):
        Balance.Config()
    with pytest.raises(ValueError, match="exactly one of t"):
        Balance.Config(t=5, target_size=9)


def test_concept_summary_reports_counts_before_and_after(tmp_path):
    from curate.report.stats import concept_summary

    pool(tmp_path)
    (tmp_path / "run" / "samples").mkdir(parents=True)
    (tmp_path / "samples.parquet").rename(tmp_path / "run" / "samples" / "part.parquet")
    decide(
        str(tmp_path / "run" / "samples" / "*.parquet"),
        [Balance(Balance.Config(t=400))],
        tmp_path / "run" / "decisions",
    )
    summary = concept_summary(tmp_path / "run", top=3)
    assert [h["before"] for h in summary["head"]] == ZIPF[:3]
    assert all(abs(h["after"] - 400) < 100 for h in summary["head"])
    assert summary["concepts"] == {"before": N_CONCEPTS, "after": N_CONCEPTS}  # no concept lost
    assert summary["entropy_bits"]["after"] > summary["entropy_bits"]["before"]  # flatter


def test_a_recipe_balances_only_after_the_concepts_stage():
    from curate.recipe import RecipeError, build_recipe

    recipe = build_recipe({"annotate": ["image", "concepts"], "decide": [{"policy": "balance", "t": 5}]})
    assert [p.name for p in recipe.decide] == ["balance"]
    with pytest.raises(RecipeError, match="Add '- stage: concepts'"):
        build_recipe({"annotate": ["image"], "decide": [{"policy": "balance", "t": 5}]})


def test_long_tail_plot_is_a_readable_png(tmp_path):
    from PIL import Image

    from curate.report.plots import concept_long_tail

    pool(tmp_path)
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (tmp_path / "samples.parquet").rename(run / "samples" / "part.parquet")
    decide(str(run / "samples" / "*.parquet"), [Balance(Balance.Config(t=400))], run / "decisions")
    png = concept_long_tail(run, run / "report" / "concepts.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
        assert len(set(im.convert("L").getdata())) > 10  # lines were drawn, not a blank canvas


def test_stats_concepts_shows_the_names_of_the_runs_vocabulary(tmp_path):
    """`curate stats RUN --concepts` names each head concept from the vocabulary the run's recipe
    recorded; a run whose vocabulary file is gone falls back to `#id`."""
    import json

    from typer.testing import CliRunner

    from curate.cli import app

    run = tmp_path / "run"
    pool(tmp_path)
    (run / "samples").mkdir(parents=True)
    (tmp_path / "samples.parquet").rename(run / "samples" / "part.parquet")
    decide(str(run / "samples" / "*.parquet"), [Balance(Balance.Config(t=400))], run / "decisions")
    names = [f"thing {c:02d}" for c in range(N_CONCEPTS)]
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("# a comment line\n" + "\n".join(name.upper() for name in names) + "\n")
    recipe = {"annotate": [{"stage": "image"}, {"stage": "concepts", "vocabulary": str(vocabulary)}]}
    (run / "manifest.json").write_text(json.dumps({"recipe": recipe, "steps": {}}))

    def head() -> list[tuple[str, int]]:
        result = CliRunner().invoke(app, ["stats", str(run), "--concepts", "--format", "json"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)["concepts"]
        return [(r["concept (head) / summary"], r["before"]) for r in rows[:3]]

    assert head() == [(names[c], ZIPF[c]) for c in range(3)]
    vocabulary.unlink()
    assert head() == [(f"#{c}", ZIPF[c]) for c in range(3)]
