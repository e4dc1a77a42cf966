"""CLI polish: `--version`, `-h` on every command, `--quiet`/`--log-level` for Ray's logs, `curate stats`
errors as one line and `--format json` as one JSON document.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import curate
from curate.cli import app

CHECKOUT = Path(__file__).resolve().parents[1]


def cli(*args: object, timeout: float = 120) -> tuple[int, str, str]:
    """`curate ARGS` through :func:`curate.cli.main`, as the console script runs it: exit code, stdout, stderr."""
    code = "import sys; from curate.cli import main; sys.argv = ['curate', *sys.argv[1:]]; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=CHECKOUT
    )
    return result.returncode, result.stdout, result.stderr


def test_version_is_the_package_version():
    declared = re.search(r'^version = "(.+)"$', (CHECKOUT / "pyproject.toml").read_text(), re.M)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"curate {curate.__version__}\n"
    assert declared and curate.__version__ == declared.group(1)


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the app, as argument paths (typer bundles its own click: no isinstance)."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_dash_h_is_help_on_every_command():
    paths = _commands(typer.main.get_command(app))
    assert ("train", "clip") in paths and ("bench", "quality") in paths and ("stats",) in paths
    runner = CliRunner(env={"COLUMNS": "200"})
    for path in paths:
        short, long = runner.invoke(app, [*path, "-h"]), runner.invoke(app, [*path, "--help"])
        assert short.exit_code == 0 and "Usage:" in short.stdout, (path, short.output)
        assert short.stdout == long.stdout, path


def test_log_level_options_are_parsed_and_checked():
    runner = CliRunner()
    for args in (["--quiet"], ["-q"], ["--log-level", "debug"], ["--log-level", "ERROR"]):
        result = runner.invoke(app, [*args, "reasons"])
        assert result.exit_code == 0 and "no_concept" in result.stdout, result.output
    bad = runner.invoke(app, ["--log-level", "loud", "reasons"])
    assert bad.exit_code == 2 and "--log-level" in bad.output and "WARNING" in bad.output


def test_the_ray_log_level_comes_from_the_flags():
    from curate.cli import ray_log_level

    assert ray_log_level(False, None) is None  # Ray's own defaults
    assert ray_log_level(True, None) == logging.ERROR
    assert ray_log_level(True, "info") == logging.INFO  # an explicit level wins
    with pytest.raises(typer.BadParameter):
        ray_log_level(False, "verbose")


def test_log_level_block_sets_and_restores_the_ray_loggers():
    from curate import runtime

    before = {name: logging.getLogger(name).level for name in runtime.RAY_LOGGERS}
    with runtime.log_level(logging.ERROR):
        assert runtime.LOG_LEVEL.get() == logging.ERROR
        assert all(logging.getLogger(name).level == logging.ERROR for name in runtime.RAY_LOGGERS)
    assert runtime.LOG_LEVEL.get() is None
    assert {name: logging.getLogger(name).level for name in runtime.RAY_LOGGERS} == before


RAY_SCRIPT = """
import logging, sys
from contextlib import nullcontext
import pyarrow as pa
from curate import runtime
from curate.signals.caption import CaptionConfig, CaptionSignals

level = sys.argv[1]
table = pa.table({"key": ["a", "b", "c"], "caption": ["a red fox", "a dog on the grass", "two cats"]})
with runtime.log_level(getattr(logging, level)) if level != "default" else nullcontext():
    with runtime.session(num_cpus=1):
        out = runtime.run_stage(table, CaptionSignals(CaptionConfig()))
print("rows", out.num_rows)
"""


@pytest.mark.slow
def test_the_embedded_ray_is_started_even_where_ray_start_left_an_address():
    """Without --address or RAY_ADDRESS curate starts its own Ray, as the README says: ray.init() would join the
    cluster whose address `ray start` wrote to the Ray temp folder (here a stale one, where nothing listens)."""
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        Path(tmp, "ray_current_cluster").write_text("127.0.0.1:9")
        code = "import ray; from curate import runtime\nwith runtime.session(num_cpus=1): print(ray.get_runtime_context().gcs_address)"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"CURATE_RAY_TMPDIR": tmp}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() and not result.stdout.strip().endswith(":9")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


INFO = re.compile(r"\sINFO\s")  # a log record's level, as Ray and Ray Data format it


def _ray_logs(level: str) -> str:
    """stderr of a Ray Data stage run in a process whose output is not a terminal."""
    result = subprocess.run(
        [sys.executable, "-c", RAY_SCRIPT, level], capture_output=True, text=True, timeout=300, cwd=CHECKOUT
    )
    assert result.returncode == 0 and "rows 3" in result.stdout, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_quiet_silences_ray_data_info_blocks_in_a_non_tty_log():
    noisy = _ray_logs("default")
    assert INFO.search(noisy) and "Dataset" in noisy  # what --quiet is for: Ray Data's execution blocks
    quiet = _ray_logs("ERROR")
    assert not INFO.search(quiet) and "Dataset" not in quiet, quiet
    assert "Token authentication" not in quiet and "WARNING" not in quiet, quiet


def _one_tar(path: Path) -> Path:
    """A WebDataset tar of two captioned images: an input `curate run` curates in place."""
    with tarfile.open(path, "w") as tar:
        for key, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            buf = io.BytesIO()
            Image.new("RGB", (96, 96), color).save(buf, format="JPEG")
            caption = f"a {key} square on a plain background".encode()
            for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.slow
def test_curate_quiet_run_logs_no_ray_info_or_warnings(tmp_path):
    tar = _one_tar(tmp_path / "one.tar")
    args = ("--quiet", "run", "demo", "--input", tar, "--output", tmp_path / "run", "--until", "decide")
    code, out, err = cli(*args, timeout=600)
    assert code == 0, err[-3000:]
    assert (tmp_path / "run" / "decisions").is_dir(), out
    assert not INFO.search(err) and "Token authentication" not in err and "WARNING" not in err, err[-3000:]


# --- curate stats -------------------------------------------------------------------------------


def test_stats_json_is_one_document_for_canned_queries_and_sql(tiny_run):
    sql = "SELECT key, width FROM samples ORDER BY key"
    code, out, err = cli("stats", tiny_run, "--languages", sql, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)  # one document, not JSON lines
    assert list(doc) == ["languages", "sql"]
    assert doc["sql"] == [{"key": "0", "width": 10}, {"key": "1", "width": 20}, {"key": "2", "width": 30}]
    assert {row["lang"]: (row["samples"], row["kept"]) for row in doc["languages"]} == {"en": (2, 1), "de": (1, 1)}


def test_stats_json_of_two_runs_stacks_sql_rows_with_their_run(tiny_run, tmp_path):
    other = tmp_path / "other"
    other.symlink_to(tiny_run, target_is_directory=True)
    code, out, err = cli("stats", tiny_run, other, "SELECT count(*) AS n FROM kept", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["sql"]
    assert [row["n"] for row in rows] == [2, 2] and len({row["run"] for row in rows}) == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["SELECT widht FROM samples"], 'Referenced column "widht" not found'),
        (["SELECT widht FROM samples"], 'Candidate bindings: "width"'),
        (["SELEC 1"], "syntax error"),
        (["SELECT count(*) FROM nothing_here"], "nothing_here"),
        (["--funnel"], 'does not have a column named "status"'),  # a canned query on a run lacking a column
        (["--funnel", "--format", "json"], "--funnel"),
    ],
)
def test_stats_errors_are_one_line_and_exit_2(tiny_run, args, says):
    code, out, err = cli("stats", tiny_run, *args)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in err and not out


def test_stats_rejects_an_unknown_format_before_running_anything(tiny_run):
    result = CliRunner().invoke(app, ["stats", str(tiny_run), "SELECT 1 AS a", "--format", "xml"])
    assert result.exit_code == 2 and "table, csv, json" in result.output
