"""One config language: recipes, trainer presets and eval specs load, take --set and fail the same way."""

from __future__ import annotations

import sys

import pytest

from curate import config
from curate.acquire.inputs import InputError
from curate.bench import read_eval_spec
from curate.cli import main
from curate.errors import ConfigError, EvalError, NotFound, PresetError, UserError
from curate.lock import RunLocked
from curate.recipe import RecipeError, load_recipe
from curate.report.stats import NotInRun
from curate.train.clip import ClipTrainConfig
from curate.train.eval import load_task
from curate.train.llava import LlavaTrainConfig
from curate.train.llava_data import LlavaDataError


def cli(monkeypatch, capsys, *args: str) -> str:
    """Run ``curate ARGS`` as the console script does; it must exit 2 with one line on stderr."""
    monkeypatch.setattr(sys, "argv", ["curate", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_typo_in_a_preset_file_is_one_line_with_did_you_mean(monkeypatch, capsys, tmp_path):
    preset = tmp_path / "my-preset.yaml"
    preset.write_text("model: clip-tiny\nlearnign_rate: 0.001\n")
    err = cli(monkeypatch, capsys, "train", "clip", "--config", str(preset), "--data", "x", "--output", "y")
    assert f"{preset}: unknown parameter 'learnign_rate' (did you mean 'lr'?)" in err  # lr: "Peak learning rate"
    preset.write_text("model: clip-tiny\nwarmup_stesp: 3\n")
    err = cli(monkeypatch, capsys, "train", "clip", "--config", str(preset), "--data", "x", "--output", "y")
    assert "unknown parameter 'warmup_stesp' (did you mean 'warmup_steps'?)" in err


def test_set_on_a_preset_names_the_set_and_the_fix(monkeypatch, capsys):
    args = ("train", "clip", "--config", "clip-tiny", "--data", "x", "--output", "y", "--set")
    err = cli(monkeypatch, capsys, *args, "warmup_stesp=3")
    assert "clip-tiny.yaml (--set warmup_stesp): unknown parameter" in err and "did you mean 'warmup_steps'" in err
    err = cli(monkeypatch, capsys, *args, "lr=fast")
    assert "parameter 'lr'" in err and "got 'fast'" in err and "Peak learning rate (AdamW)." in err  # the description
    err = cli(monkeypatch, capsys, *args, "lr")
    assert "--set 'lr': expected KEY=VALUE" in err
    err = cli(monkeypatch, capsys, "train", "clip", "--config", "clip-tinny", "--data", "x", "--output", "y")
    assert "clip-tinny: no such preset file. Bundled presets:" in err and "clip-tiny" in err


def test_set_on_a_zero_shot_task_fails_before_any_model_loads(monkeypatch, capsys, tmp_path):
    args = ("eval", "clip", str(tmp_path / "no-model"), "--data", str(tmp_path), "--zero-shot", "shapes", "--set")
    err = cli(monkeypatch, capsys, *args, "templatse=['a {}.']")
    assert "shapes.yaml (--set templatse): unknown parameter 'templatse' (did you mean 'templates'?)" in err
    err = cli(monkeypatch, capsys, *args, "templates=3")
    assert "parameter 'templates'" in err and "each with one {} for the class name" in err


def test_an_eval_spec_reads_like_a_preset(tmp_path):
    spec = tmp_path / "eval.yaml"
    spec.write_text("data: held-out/shards\nzero_shott: shapes\n")
    with pytest.raises(EvalError, match=r"eval.yaml: unknown parameter 'zero_shott' \(did you mean 'zero_shot'\?\)"):
        read_eval_spec(spec)
    spec.write_text("data: held-out/shards\n")
    assert read_eval_spec(spec, ["zero_shot=shapes"]) == {"data": "held-out/shards", "zero_shot": "shapes"}
    spec.write_text("zero_shot: shapes\n")
    with pytest.raises(EvalError, match=r"eval.yaml: missing parameter 'data' \(Held-out WebDataset shards"):
        read_eval_spec(spec)


def test_one_override_syntax_for_recipes_presets_and_tasks():
    recipe = load_recipe("demo", ["decide.image_size.min_side=200", "acquire.timeout=7.5", "annotate.image.dhash=true"])
    assert recipe.decide[0].config.min_side == 200 and recipe.acquire.timeout == 7.5 and recipe.annotate[0].config.dhash
    clip = ClipTrainConfig.from_yaml("clip-tiny", ["steps=5", "betas=[0.9, 0.95]", "grad_clip=~"])
    assert (clip.steps, clip.betas[1], clip.grad_clip) == (5, 0.95, None)
    assert ClipTrainConfig.from_yaml("clip-tiny", {"steps": 5, "betas": (0.9, 0.95), "grad_clip": None}) == clip
    llava = LlavaTrainConfig.from_yaml("llava-tiny", ["stage1.steps=3", "lora.target_modules=[q_proj, v_proj]"])
    assert llava.stage1.steps == 3 and llava.lora.target_modules == ["q_proj", "v_proj"]
    assert load_task("shapes", ["templates=['a {}.']"]).templates == ("a {}.",)
    for load, error in (
        (lambda s: load_recipe("demo", s), RecipeError),
        (lambda s: ClipTrainConfig.from_yaml("clip-tiny", s), PresetError),
    ):
        with pytest.raises(error, match="expected KEY=VALUE"):
            load(["steps"])
        with pytest.raises(error, match="is a value, not a section"):
            load(["name.x=1"] if error is RecipeError else ["steps.x=1"])


def test_set_value_walks_mappings_lists_and_named_entries():
    data = {"decide": [{"policy": "image_size"}, "language"], "betas": [0.9, 0.98]}
    entries = {"decide": ("policy", False), "enrich": ("stage", True)}
    config.apply_overrides(
        data, ["decide.language.min_prob=0.5", "betas.0=0.8", "enrich.recaption.model=m", "a.b.c=1"], entries=entries
    )
    assert data["decide"][1] == {"policy": "language", "min_prob": 0.5} and data["betas"] == [0.8, 0.98]
    assert data["enrich"] == [{"stage": "recaption", "model": "m"}] and data["a"] == {"b": {"c": 1}}
    with pytest.raises(ConfigError, match=r"no decide entry 'langauge' \(did you mean 'language'\?\)"):
        config.apply_overrides(data, ["decide.langauge.min_prob=1"], entries=entries)


def test_invalid_yaml_is_one_line_with_its_place(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nannotate:\n  - stage: image\n   bad: 1\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: not valid YAML: line 4, column 4: ") as err:
        load_recipe(path)
    assert "\n" not in str(err.value)


def test_every_user_error_is_one_type_the_cli_catches():
    for cls in (ConfigError, RecipeError, PresetError, EvalError, InputError, RunLocked, LlavaDataError, NotInRun):
        assert issubclass(cls, UserError)
    assert issubclass(NotFound, UserError) and issubclass(NotFound, FileNotFoundError)  # callers catching OSError too
    assert issubclass(NotInRun, LookupError)
