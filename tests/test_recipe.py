"""Recipes are validated before anything runs, with messages that name the file and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curate.acquire.inputs import InputError, prepare_inputs
from curate.recipe import RecipeError, build_recipe, list_recipes, load_recipe
from curate.run import check_writable


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_bundled_recipes_validate():
    assert "demo" in list_recipes()
    for name in list_recipes():
        assert load_recipe(name).name


def test_unknown_stage_names_file_and_known_stages(tmp_path):
    path = write(tmp_path, "annotate:\n  - stage: imagee\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "annotate[0]" in message
    assert "did you mean 'image'" in message and "Known stages" in message


def test_unknown_parameter_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "annotate: [image]\ndecide:\n  - policy: image_size\n    min_sid: 3\n")
    with pytest.raises(RecipeError, match=r"decide\[0\].*unknown parameter 'min_sid'.*did you mean 'min_side'"):
        load_recipe(path)


def test_ill_typed_parameter_says_what_was_given(tmp_path):
    path = write(tmp_path, "acquire:\n  timeout: soon\n")
    with pytest.raises(RecipeError, match=r"acquire: parameter 'timeout'.*got 'soon'"):
        load_recipe(path)


def test_policy_reading_unwritten_column_names_the_stage_to_add():
    with pytest.raises(RecipeError, match=r"exact_dedup.*sha256.*Add '- stage: hashes'"):
        build_recipe({"annotate": ["image"], "decide": ["exact_dedup"]})


def test_annotate_without_image_stage_is_refused():
    with pytest.raises(RecipeError, match=r"availability.*Add '- stage: image'"):
        build_recipe({"annotate": ["caption"]})


def test_set_overrides_by_entry_name_and_rejects_unknown_entries():
    recipe = load_recipe("demo", ["decide.image_size.min_side=200", "acquire.timeout=7.5"])
    assert recipe.decide[0].config.min_side == 200
    assert recipe.acquire.timeout == 7.5
    with pytest.raises(RecipeError, match="no annotate entry 'clp'"):
        load_recipe("demo", ["annotate.clp.model=x"])  # annotate order matters: --set cannot add a stage
    added = load_recipe("demo", ["decide.url_filter.domains=[spam.example]"])  # --set may add a policy, applied last
    assert added.decide[-1].name == "url_filter" and added.decide[-1].config.domains == ["spam.example"]
    with pytest.raises(RecipeError, match=r"decide\[5\] \(policy 'url_filter'\): unknown parameter 'domain' \(did you"):
        load_recipe("demo", ["decide.url_filter.domain=[spam.example]"])  # and checked like one in the file
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe("demo", ["acquire.timeout"])


def test_missing_input_column_says_how_to_name_it(tmp_path):
    table = pa.table({"URL": ["http://x/a.jpg"], "TEXT": ["a"]})
    recipe = load_recipe("demo")
    with pytest.raises(InputError, match=r"urls.csv: no column 'url' \(columns: URL, TEXT\).*input.url_col"):
        prepare_inputs(table, recipe.input, 100, "urls.csv")
    renamed = load_recipe("demo", ["input.url_col=URL", "input.caption_col=TEXT"])
    assert prepare_inputs(table, renamed.input, 100, "urls.csv").column("url").to_pylist() == ["http://x/a.jpg"]


def test_unwritable_output_is_refused_before_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match=r"not writable.*Choose another --output"):
        check_writable(blocker / "run")


def test_cli_prints_one_clear_line_and_exits_2(tmp_path):
    path = write(tmp_path, "annotate:\n  - stage: nope\n")
    urls = tmp_path / "urls.parquet"
    cmd = [
        sys.executable,
        "-m",
        "curate",
        "run",
        str(path),
        "--input",
        str(urls),
        "--output",
        str(tmp_path / "r"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown stage 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_unusable_models_stop_the_run_before_any_download(tmp_path):
    from curate.recipe import RecipeError
    from curate.run import run_pipeline

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a cat\n")
    bad_tag = build_recipe({"annotate": ["image", {"stage": "clip", "model": "ViT-B-32", "pretrained": "no-such-tag"}]})
    with pytest.raises(RecipeError, match=r"annotate\[1\] \(stage 'clip'\).*no-such-tag.*neither a file nor"):
        run_pipeline(bad_tag, urls, tmp_path / "run")
    no_model = build_recipe({"annotate": ["image", {"stage": "language", "model_path": str(tmp_path / "lid.bin")}]})
    with pytest.raises(RecipeError, match=r"stage 'language'.*lid.bin"):
        run_pipeline(no_model, urls, tmp_path / "run")
    assert not (tmp_path / "run" / "raw").exists()


def test_storage_options_are_checked_applied_and_never_recorded(monkeypatch):
    import copy
    import json

    import fsspec

    from curate import lock, storage

    monkeypatch.setattr(fsspec.config, "conf", copy.deepcopy(fsspec.config.conf))
    with pytest.raises(RecipeError, match=r"unknown protocol 's33'.*'s3'"):
        load_recipe("demo", ["storage_options.s33.endpoint_url=http://127.0.0.1:9"])
    with pytest.raises(RecipeError, match=r"storage_options\.s3 must be a mapping"):
        load_recipe("demo", ["storage_options.s3=http://127.0.0.1:9"])
    options = ["storage_options.s3.endpoint_url=http://127.0.0.1:9", "storage_options.s3.secret=hidden"]
    recipe = load_recipe("demo", [*options, "storage_options.s3.client_kwargs.region_name=eu-west-1"])
    assert "storage_options" not in recipe.to_dict() and "hidden" not in json.dumps(recipe.to_dict())
    storage.configure(recipe.storage_options)
    assert fsspec.filesystem("s3").endpoint_url == "http://127.0.0.1:9"  # the default of every s3 filesystem
    env = storage.worker_env()
    assert json.loads(env["FSSPEC_S3"])["secret"] == "hidden"
    conf: dict = {}
    fsspec.config.set_conf_env(conf, env)  # what a Ray worker's fsspec reads at import
    assert conf["s3"] == recipe.storage_options["s3"]
    assert lock.boto_kwargs() == {
        "endpoint_url": "http://127.0.0.1:9",
        "aws_secret_access_key": "hidden",
        "region_name": "eu-west-1",
    }
