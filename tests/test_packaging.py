"""The wheel carries the recipes and configs: an installed curate works with no checkout.

The wheel is built from a copy of the sources (pip's ``--no-build-isolation`` with this venv's
setuptools: offline) and installed with ``--no-deps`` into a fresh venv whose only view of this
venv is a ``.pth`` line naming its site-packages, for the dependencies: that line does not run
this venv's own ``.pth`` files, so the editable curate of the checkout stays invisible and
curate is imported from the wheel. Every command then runs from an empty directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "curate", "pipelines", "configs")

PROBE = """
import json, sys
import importlib.resources as r
import curate
from curate import resources
from curate.models.clip import open_clip_module
from curate.recipe import load_recipe
from curate.train.clip import ClipTrainConfig
from curate.train.eval import load_task

open_clip = open_clip_module()
print(json.dumps({
    "curate": curate.__file__,
    "importlib": [str(r.files("curate.pipelines")), str(r.files("curate.configs"))],
    "folders": {kind: str(resources.folder(kind)) for kind in resources.KINDS},
    "recipes": resources.names("recipe"),
    "demo": load_recipe("demo").name,
    "preset": ClipTrainConfig.from_yaml("clip-tiny").model,
    "documented_path": ClipTrainConfig.from_yaml("configs/train/lit-offline.yaml").model,
    "models": [m for m in ("clip-tiny", "lit-offline") if m in open_clip.list_models()],
    "task": load_task("shapes").name,
    "cluster": str(resources.resolve("cluster", "local-cluster")),
}))
"""


def _run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _copy_sources(dest: Path) -> Path:
    for name in SOURCES:
        src = CHECKOUT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(path: Path) -> Path:
    """A venv with no packages of its own; this venv's site-packages serves the dependencies."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path).stdout.strip())
    (site / "curate_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _copy_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source], source)
    (built,) = dist.glob("curate-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel, tmp_path_factory) -> Path:
    python = _fresh_venv(tmp_path_factory.mktemp("wheel-venv") / "venv")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], wheel.parent)
    return python


def _probe(python: Path, cwd: Path) -> dict:
    return json.loads(_run([python, "-c", PROBE], cwd).stdout.strip().splitlines()[-1])


def test_the_wheel_holds_every_package_recipe_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent.relative_to(CHECKOUT) for p in (CHECKOUT / "curate").rglob("__init__.py")]
    missing = [f"{p}/__init__.py" for p in packages if f"{p.as_posix()}/__init__.py" not in names]
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    data = [*(CHECKOUT / "pipelines").glob("*.yaml"), *(CHECKOUT / "configs").rglob("*.yaml")]
    data += (CHECKOUT / "configs").rglob("*.json")
    expected = {f"curate/{p.relative_to(CHECKOUT).as_posix()}" for p in data}
    assert "curate/pipelines/demo.yaml" in expected and "curate/configs/train/clip-tiny.yaml" in expected
    assert expected <= names, sorted(expected - names)
    assert "curate/py.typed" in names  # PEP 561: type checkers use curate's hints


def test_curate_declares_its_type_hints():
    marker = CHECKOUT / "curate" / "py.typed"
    assert marker.is_file() and "py.typed" in (CHECKOUT / "pyproject.toml").read_text()


def test_an_installed_wheel_finds_its_recipes_and_configs_from_another_directory(wheel_python, tmp_path):
    reasons = _run([wheel_python, "-m", "curate", "reasons"], tmp_path).stdout
    assert "no_concept" in reasons
    found = _probe(wheel_python, tmp_path)
    site = wheel_python.parents[1]
    assert Path(found["curate"]).is_relative_to(site), found["curate"]
    for path in [*found["importlib"], *found["folders"].values(), found["cluster"]]:
        assert Path(path).is_relative_to(site), path
    assert {"demo", "datacomp-basic", "laion-like"} <= set(found["recipes"])
    assert (found["demo"], found["preset"], found["documented_path"]) == ("demo", "clip-tiny", "lit-offline")
    assert found["models"] == ["clip-tiny", "lit-offline"] and found["task"] == "shapes"


def test_an_editable_install_finds_the_checkout_folders_through_importlib_resources(source, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", source], source)
    found = _probe(python, tmp_path)
    assert found["importlib"] == [str(source / "pipelines"), str(source / "configs")]
    assert found["folders"]["train"] == str(source / "configs" / "train")
    assert found["preset"] == "clip-tiny" and found["models"] == ["clip-tiny", "lit-offline"]


def test_curate_demo_runs_the_bundled_recipe_from_the_wheel(wheel_python, tmp_path):
    run = tmp_path / "run"
    out = _run([wheel_python, "-m", "curate", "demo", "--quick", "--output", run, "--n", "40"], tmp_path, timeout=600)
    assert "curated shards" in out.stdout + out.stderr and "rejected: download_timeout" in out.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "demo"
    assert list((run / "shards").glob("*.tar"))
