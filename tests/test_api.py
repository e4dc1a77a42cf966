"""The public Python API: recipes from keyword arguments, runs on in-memory tables, open runs, WebDataset rows."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import curate
from curate.recipe import RecipeError, build_recipe

README = Path(__file__).parent.parent / "README.md"
LOOPBACK = {"allow_private_addresses": ["127.0.0.0/8"], "timeout": 2, "samples_per_shard": 50}


def test_import_is_cheap_and_exports_what_all_names():
    code = "import sys, curate; print(sorted(m for m in ('ray', 'torch', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert all(getattr(curate, name) is not None for name in curate.__all__)


def test_stages_and_policies_name_every_registered_class():
    from curate.recipe import ENRICH_STAGES, POLICIES, STAGES

    exported = {getattr(curate.stages, n) for n in curate.stages.__all__} | {
        getattr(curate.policies, n) for n in curate.policies.__all__
    }
    assert {*STAGES.values(), *ENRICH_STAGES.values(), *POLICIES.values()} <= exported


def test_recipe_from_keywords_equals_the_yaml_one():
    built = curate.Recipe(
        annotate=[curate.stages.ImageSignals(batch_size=64), curate.stages.CaptionSignals()],
        decide=[curate.policies.ImageSize(min_side=64), curate.policies.CaptionLength(min_chars=2)],
    )
    data = {
        "annotate": [{"stage": "image", "batch_size": 64}, "caption"],
        "decide": [{"policy": "image_size", "min_side": 64}, {"policy": "caption_length", "min_chars": 2}],
    }
    loaded = build_recipe(data, "x.yaml")
    assert {**built.to_dict(), "name": ""} == {**loaded.to_dict(), "name": ""}
    yaml_recipe = curate.Recipe.from_yaml("demo", overrides=["decide.image_size.min_side=99"])
    assert yaml_recipe.decide[0].config.min_side == 99


def test_keyword_typos_and_bad_chains_fail_as_a_recipe_does():
    with pytest.raises(RecipeError, match=r"unknown parameter 'min_sid' \(did you mean 'min_side'\?\)"):
        curate.policies.ImageSize(min_sid=64)
    with pytest.raises(RecipeError, match=r"parameter 'batch_size': Input should be greater than 0"):
        curate.stages.ImageSignals(batch_size=0)
    with pytest.raises(RecipeError, match=r"reads \['caption_chars', 'caption_words'\].*'- stage: caption'"):
        curate.Recipe(decide=[curate.policies.CaptionLength(min_chars=1)])
    with pytest.raises(RecipeError, match=r"decide\[0\]: expected a policy"):
        curate.Recipe(decide=[curate.stages.Hashes()])
    with pytest.raises(RecipeError, match=r"acquire: unknown parameter 'timout' \(did you mean 'timeout'\?\)"):
        curate.Recipe(acquire={"timout": 2})
    assert curate.policies.ImageSize().config.min_side == curate.policies.ImageSize.Config().min_side


@pytest.fixture(scope="module")
def table_run(served_corpus, ray_session, tmp_path_factory):
    """One run of a Python-built recipe on the demo corpus given as a pyarrow Table."""
    recipe = curate.Recipe(
        name="api",
        acquire=LOOPBACK,
        annotate=[curate.stages.ImageSignals(), curate.stages.Hashes(), curate.stages.CaptionSignals()],
        decide=[curate.policies.ImageSize(min_side=64), curate.policies.ExactDedup()],
    )
    table = pq.read_table(served_corpus.urls, columns=["url", "caption"])
    run_dir = tmp_path_factory.mktemp("api") / "run"
    return recipe, table, curate.run(recipe, input=table, output=run_dir)


def test_run_on_a_table_decides_every_row(table_run, served_corpus):
    _, table, result = table_run
    assert pq.read_table(Path(result.run_dir) / "input_table").equals(table)
    steps = result.funnel["steps"]
    assert steps["input"] == len(table) == len(served_corpus.rows)
    assert {"download_error", "too_small", "dup_exact"} <= set(result.funnel["rejected"])
    assert 0 < steps["kept"] < steps["input"]


def test_open_run_gives_tables_manifest_and_funnel(table_run):
    _, table, result = table_run
    with curate.open_run(result.run_dir) as run:
        assert run.samples.count("*").fetchall()[0][0] == len(table)
        decisions = run.decisions.to_arrow_table()
        assert set(decisions.column_names) >= {"key", "keep", "reason"}
        assert run.kept.count("*").fetchall()[0][0] == sum(decisions.column("keep").to_pylist())
        assert run.sql("SELECT count(*) FROM decisions WHERE NOT keep").fetchall()[0][0] == len(table) - sum(
            decisions.column("keep").to_pylist()
        )
        assert run.funnel() == result.funnel
        assert run.manifest["recipe"]["name"] == "api"
        with pytest.raises(LookupError, match="no embeddings"):
            run.embeddings  # noqa: B018 (no stage of this recipe computes any)


def test_decide_again_and_rerun_resume(table_run):
    recipe, table, result = table_run
    stricter = curate.decide(result.run_dir, overrides=["decide.image_size.min_side=100000"])
    assert stricter.funnel["steps"]["kept"] == 0
    assert stricter.funnel["rejected"]["too_small"] > result.funnel["rejected"]["too_small"]
    assert curate.run(recipe, table, result.run_dir, until="acquire").funnel == {}  # resumes
    with pytest.raises(curate.InputError, match="different input table"):
        curate.run("demo", input=table.slice(0, 5), output=result.run_dir)


def test_run_on_a_dataframe(served_corpus, ray_session, tmp_path):
    frame = pq.read_table(served_corpus.urls, columns=["url", "caption"]).slice(0, 12).to_pandas()
    recipe = curate.Recipe(acquire=LOOPBACK, decide=[curate.policies.ImageSize(min_side=64)])
    result = curate.run(recipe, input=frame, output=tmp_path / "run", until="annotate")
    with curate.open_run(result.run_dir) as run:
        urls = run.samples.order("key").select("url").fetchall()
    assert [u for (u,) in urls] == frame["url"].tolist()


def test_run_on_a_ray_dataset_writes_its_rows_with_ray(served_corpus, ray_session, tmp_path):
    import ray

    table = pq.read_table(served_corpus.urls, columns=["url", "caption"]).slice(0, 12)
    recipe = curate.Recipe(acquire=LOOPBACK)
    result = curate.run(recipe, input=ray.data.from_arrow(table), output=tmp_path / "run", until="acquire")
    stored = pq.read_table(tmp_path / "run" / "input_table")
    assert sorted(stored.column("url").to_pylist()) == sorted(table.column("url").to_pylist())
    assert result.manifest["steps"]["acquire"]["status"] == "done"


def test_readme_python_example_runs(served_corpus, ray_session, tmp_path, monkeypatch):
    section = README.read_text().split("## Python API", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api-demo" / "manifest.json").is_file()


def _jpeg(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def test_stage_on_read_webdataset_rows(ray_session, tmp_path):
    import ray

    members = {
        "a.jpg": _jpeg((80, 40)),
        "a.txt": b"a red banner",
        "a.json": json.dumps({"original_width": 800, "original_height": 400}).encode(),
        "b.png": _jpeg((30, 60), "PNG"),
        "b.txt": b"a tall red box",
    }
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = ray.data.read_webdataset(str(tmp_path / "00000.tar"), decoder=None)
    stage = curate.for_webdataset(curate.stages.ImageSignals())
    rows = {r["__key__"]: r for r in ds.map_batches(stage, batch_format="pyarrow").take_all()}
    assert (rows["a"]["width"], rows["a"]["height"], rows["a"]["format"]) == (800, 400, "jpeg")
    assert (rows["b"]["width"], rows["b"]["height"], rows["b"]["format"]) == (30, 60, "png")
    assert rows["b"]["caption"] == "a tall red box" and rows["a"]["decode_error"] is None
    on_table = curate.stages.CaptionSignals()(pa.table({"caption": ["A photo of a cat"]}))
    assert on_table.column("caption_words").to_pylist() == [5]
