"""Bundled recipes and configs are found by name or documented path from any directory; own files win."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from curate import resources
from curate.acquire.inputs import InputError
from curate.bench import read_eval_spec
from curate.cli import app
from curate.errors import EvalError, PresetError
from curate.recipe import RecipeError, find_recipe, load_recipe
from curate.train.clip import ClipTrainConfig
from curate.train.eval import load_task
from curate.train.llava import LlavaTrainConfig


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a directory that is not the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_kind_has_bundled_files():
    expected = {
        "recipe": "demo",
        "train": "clip-tiny",
        "model": "lit-offline",
        "eval": "shapes",
        "cluster": "local-cluster",
    }
    for kind, name in expected.items():
        assert name in resources.names(kind), kind
        assert resources.bundled(kind, name).is_file()


@pytest.mark.parametrize(
    "name", ["clip-tiny", "clip-tiny.yaml", "configs/train/clip-tiny.yaml", "./configs/train/clip-tiny.yaml"]
)
def test_a_preset_by_name_or_documented_path_from_another_directory(elsewhere, name):
    path = resources.resolve("train", name)
    assert path == resources.folder("train") / "clip-tiny.yaml"
    assert ClipTrainConfig.from_yaml(name).model == "clip-tiny"


def test_names_with_dots_and_other_kinds(elsewhere):
    assert resources.resolve("train", "llava-qwen-0.5b").name == "llava-qwen-0.5b.yaml"
    assert LlavaTrainConfig.from_yaml("llava-tiny").lm
    assert load_task("shapes").classnames
    assert load_recipe("demo").name == "demo"
    assert find_recipe("pipelines/demo.yaml") == resources.folder("recipe") / "demo.yaml"
    assert resources.resolve("model", "configs/models/clip-tiny.json").is_file()


def test_a_file_on_disk_wins_over_the_bundled_one(elsewhere):
    own = elsewhere / "configs" / "train" / "clip-tiny.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("model: ViT-B-32\nsteps: 7\n")
    assert resources.resolve("train", "configs/train/clip-tiny.yaml") == own.relative_to(elsewhere)
    assert ClipTrainConfig.from_yaml("configs/train/clip-tiny.yaml").steps == 7
    assert ClipTrainConfig.from_yaml("clip-tiny").steps != 7  # a bare name is the bundled preset


def test_a_missing_path_never_falls_back_to_a_bundled_file_of_the_same_stem(elsewhere):
    assert resources.bundled("recipe", "my/recipes/demo.yaml") is None
    assert resources.bundled("train", "configs/models/clip-tiny.yaml") is None  # another kind's folder
    with pytest.raises(RecipeError, match=r"my/demo.yaml: no such recipe file. Bundled recipes: .*demo"):
        find_recipe("my/demo.yaml")


def test_unknown_names_are_clear_errors(elsewhere):
    with pytest.raises(FileNotFoundError, match=r"no bundled train of that name \(.*'clip-tiny'"):
        resources.resolve("train", "clip-tinny")
    with pytest.raises(ValueError, match="unknown kind of bundled file 'recipes'"):
        resources.folder("recipes")
    with pytest.raises(EvalError, match=r"no-such-spec\.yaml: no such eval spec file\. Bundled eval specs: shapes"):
        read_eval_spec("no-such-spec.yaml")
    result = CliRunner().invoke(app, ["train", "clip", "--config", "nope", "--data", "x", "--output", "y"])
    assert isinstance(result.exception, PresetError) and "Bundled presets: clip-tiny" in str(result.exception)


def test_curate_bundled_lists_the_files_and_prints_one_path(elsewhere):
    runner = CliRunner()
    listing = runner.invoke(app, ["bundled"])
    assert listing.exit_code == 0 and "local-cluster" in listing.output and "lit-offline" in listing.output
    one = runner.invoke(app, ["bundled", "cluster", "local-cluster"])
    assert one.exit_code == 0 and one.output.strip() == str(resources.folder("cluster") / "local-cluster.yaml")
    assert isinstance(runner.invoke(app, ["bundled", "clusters"]).exception, InputError)


def test_a_documented_model_config_path_works_from_another_directory(elsewhere):
    from curate.models.clip import open_clip_module, registered_name

    assert registered_name("configs/models/clip-tiny.json", open_clip_module()) == "clip-tiny"
