"""The recaption enrich stage: through Ray, on kept samples only; the caption policy picks as specified."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import runtime
from curate.manifest import Manifest
from curate.recipe import RecipeError, apply_override, build_recipe
from curate.run import decide_and_emit


def recaption_recipe(run_dir, **recaption) -> dict:
    data = json.loads(json.dumps(Manifest(run_dir).data["recipe"]))
    data["enrich"] = [{"stage": "recaption", "batch_size": 16, "max_new_tokens": 120, **recaption}]
    return data


def kept_keys(run_dir) -> set[str]:
    decisions = pq.read_table(run_dir / "decisions").to_pylist()
    return {d["key"] for d in decisions if d["keep"]}


def stored_results(run_dir):
    """Every raw shard's results file: one per shard that has kept samples, each sorted by key."""
    files = sorted((run_dir / "enrich" / "recaption").iterdir())
    assert files and all(f.name.endswith(".parquet") for f in files)
    tables = [pq.read_table(f) for f in files]
    assert all(t.column("key").to_pylist() == sorted(t.column("key").to_pylist()) for t in tables)
    return pa.concat_tables(tables)


def metadata(run_dir) -> list[dict]:
    return pq.ParquetDataset(run_dir / "metadata").read().to_pylist()


@pytest.fixture(scope="module")
def run_copy(curated_shards, ray_session, tmp_path_factory):
    target = tmp_path_factory.mktemp("recaption") / "run"
    shutil.copytree(curated_shards.parent, target)
    return target


@pytest.mark.slow
def test_recaption_runs_on_kept_samples_only_and_both_picks_the_higher_clip_score(run_copy, llava_model, lit_model):
    data = recaption_recipe(run_copy, model=str(llava_model), caption="both", select_model=str(lit_model))
    data["decide"].append({"policy": "caption_length", "min_words": 17})  # ~30 of the run's ~290 kept rows
    with runtime.session():
        decide_and_emit(build_recipe(data), run_copy, Manifest(run_copy))
    kept = kept_keys(run_copy)
    stored = stored_results(run_copy).to_pylist()
    assert {r["key"] for r in stored} == kept and len(stored) == len(kept) < 300
    assert all(r["caption_synthetic"] for r in stored)
    rows = metadata(run_copy)
    assert {r["key"] for r in rows} == kept
    for row in rows:
        better = row["clip_score_synthetic"] > row["clip_score_alt"]
        assert row["caption"] == (row["caption_synthetic"] if better else row["caption_alt"])
        assert row["caption_source"] == ("synthetic" if better else "alt")
    # Which side wins depends on the tiny fixture models (trained on the export's first records, so on emit's
    # shuffle order); test_both_policy_picks_per_row pins both outcomes on a built table.
    manifest = Manifest(run_copy).data["steps"]["enrich"]
    assert manifest["recaption"]["processed"] == len(kept)
    report = (run_copy / "report" / "report.html").read_text()
    assert 'id="captions"' in report and "synthetic_score" in report


@pytest.mark.slow
def test_policy_change_reuses_captions_and_synthetic_uses_them_everywhere(run_copy, llava_model, lit_model):
    """Same captioner settings: switching to `synthetic` and keeping more rows captions only the new rows."""
    before = {r["key"]: r["caption_synthetic"] for r in stored_results(run_copy).to_pylist()}
    data = recaption_recipe(run_copy, model=str(llava_model), caption="synthetic", select_model=str(lit_model))
    data["decide"].append({"policy": "caption_length", "min_words": 16})  # ~30 rows more than the test above
    with runtime.session():
        decide_and_emit(build_recipe(data), run_copy, Manifest(run_copy))
    kept = kept_keys(run_copy)
    record = Manifest(run_copy).data["steps"]["enrich"]["recaption"]
    assert record["processed"] == len(kept - set(before)) > 0
    assert record["reused"] == len(before)
    stored = {r["key"]: r["caption_synthetic"] for r in stored_results(run_copy).to_pylist()}
    assert all(stored[k] == v for k, v in before.items())
    for row in metadata(run_copy):
        assert row["caption"] == row["caption_synthetic"] and row["caption_source"] == "synthetic"
        assert row["caption_alt"]  # the alt text is kept next to it
    pretrain = json.loads((run_copy / "llava" / "pretrain.json").read_text())
    assert all(r["conversations"][1]["value"] == stored[r["id"]] for r in pretrain)


def test_both_policy_picks_per_row():
    """`both`: the synthetic caption where it scores higher or either score is missing, else the alt text;
    `alt` ignores synthetic captions, `synthetic` takes any non-empty one."""
    from curate.emit.shards import final_caption

    meta = pa.table(
        {
            "caption": ["alt a", "alt b", "alt c", "alt d"],
            "caption_norm": ["norm a", "", "norm c", None],
            "caption_synthetic": ["syn a", "syn b", "", "syn d"],
            "clip_score_alt": [0.9, 0.1, 0.1, None],
            "clip_score_synthetic": [0.2, 0.5, 0.9, 0.3],
        }
    )
    both = final_caption(meta, "both").to_pydict()
    assert both["caption"] == ["norm a", "syn b", "norm c", "syn d"]
    assert both["caption_source"] == ["alt", "synthetic", "alt", "synthetic"]
    assert both["caption_alt"] == ["alt a", "alt b", "alt c", "alt d"]
    assert final_caption(meta, "alt").to_pydict()["caption_source"] == ["alt"] * 4
    assert final_caption(meta, "synthetic").to_pydict()["caption"] == ["syn a", "syn b", "norm c", "syn d"]


def test_both_selects_with_the_annotate_clip_model_by_default(tmp_path):
    data = {
        "annotate": ["image", "caption", {"stage": "clip", "model": "clip-tiny"}],
        "enrich": [{"stage": "recaption", "model": str(tmp_path), "caption": "both"}],
    }
    stage = build_recipe(data).enrich[0]
    assert stage.config.select_model == "clip-tiny"
    data["enrich"][0]["caption"] = "synthetic"
    assert build_recipe(data).enrich[0].config.select_model is None


def test_unknown_enrich_stage_or_parameter_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown stage 'recaptoin'.*did you mean 'recaption'"):
        build_recipe({"enrich": [{"stage": "recaptoin", "model": "x"}]})
    with pytest.raises(RecipeError, match="unknown parameter 'promt'"):
        build_recipe({"enrich": [{"stage": "recaption", "model": "x", "promt": "hi"}]})


def test_set_adds_an_enrich_stage(tmp_path):
    data = {"annotate": ["image", "caption"]}
    apply_override(data, f"enrich.recaption.model={tmp_path}")
    apply_override(data, "enrich.recaption.caption=alt")
    stage = build_recipe(data).enrich[0]
    assert (stage.name, stage.config.model, stage.config.caption) == ("recaption", str(tmp_path), "alt")
