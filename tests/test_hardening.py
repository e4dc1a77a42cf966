"""Hostile inputs end as one-line errors (exit 2) or as correct runs, never as tracebacks (issue 15).

Paths with quotes reach DuckDB as data; `curate stats` SQL is sandboxed; resources stay out of the
annotate cache key; emitted shards load in Hugging Face `datasets`.
"""

from __future__ import annotations

import json
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.acquire.inputs import InputError, read_url_list
from curate.cli import main
from curate.manifest import Manifest
from curate.recipe import RecipeError, load_recipe
from curate.run import run_pipeline


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `curate ARGS` in-process; return the exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["curate", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


# --- the SQL sandbox, on conftest's tiny_run ----------------------------------------------------------


def test_stats_sql_over_the_run_views_works(tiny_run, monkeypatch, capsys):
    sql = "SELECT count(*) AS n, sum(s.width) AS w FROM samples s JOIN decisions d USING (key) JOIN kept k USING (key)"
    code, out, _ = cli(monkeypatch, capsys, "stats", tiny_run, sql, "--format", "json")
    assert code == 0 and json.loads(out) == {"sql": [{"n": 2, "w": 40}]}


def test_stats_sql_cannot_write_a_file(tiny_run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "written.csv"
    code, _, err = cli(monkeypatch, capsys, "stats", tiny_run, f"COPY (SELECT * FROM samples) TO '{target}'")
    assert code == 2 and "--unsafe-sql" in err and "Traceback" not in err
    assert not target.exists()
    over = tiny_run / "samples" / "00000.parquet"  # not even the run's own files
    code, _, _ = cli(monkeypatch, capsys, "stats", tiny_run, f"COPY (SELECT 1 AS a) TO '{over}' (USE_TMP_FILE false)")
    assert code == 2 and pq.read_table(over).num_rows == 3


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
    ],
)
def test_stats_sql_cannot_read_other_files(tiny_run, sql, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "stats", tiny_run, sql)
    assert code == 2 and "Permission" in err and "root:" not in out


@pytest.mark.parametrize(
    "setting",
    [
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "SET allowed_paths = ['/etc/passwd']",
    ],
)
def test_stats_sql_cannot_lift_the_sandbox(tiny_run, setting, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "stats", tiny_run, f"{setting}; SELECT * FROM read_csv('/etc/passwd')")
    assert code == 2 and "Traceback" not in err


def test_unsafe_sql_flag_lifts_the_sandbox(tiny_run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "written.csv"
    code, _, _ = cli(
        monkeypatch, capsys, "stats", tiny_run, f"COPY (SELECT key FROM kept) TO '{target}'", "--unsafe-sql"
    )
    assert code == 0 and target.read_text().split() == ["key", "0", "2"]
    code, out, _ = cli(
        monkeypatch,
        capsys,
        "stats",
        tiny_run,
        f"SELECT count(*) AS n FROM read_csv('{target}')",
        "--unsafe-sql",
        "--format",
        "json",
    )
    assert code == 0 and json.loads(out) == {"sql": [{"n": 2}]}


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM no_such_table", "SELECT no_such_column FROM samples"])
def test_bad_sql_is_one_line_and_exit_2(tiny_run, sql, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "stats", tiny_run, sql)
    assert code == 2 and err.startswith("error:") and "SQL failed" in err and err.count("\n") == 1


# --- URL lists and recipes ----------------------------------------------------------------------


def test_unclosed_quote_in_a_csv_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        'url,caption\nhttp://a/0.jpg,a 12" ruler\nhttp://a/1.jpg,"a cat\nhttp://a/2.jpg,a dog\nhttp://a/3.jpg,"x"\n'
    )
    with pytest.raises(InputError, match=r"urls.csv: line 3: a quoted value is not closed"):
        read_url_list(path)
    path.write_text('url,caption\nhttp://a/0.jpg,"a cat\nhttp://a/1.jpg,a dog\n')  # open until the end
    with pytest.raises(InputError, match=r"line 2"):
        read_url_list(path)


def test_unclosed_quote_in_a_tsv_is_refused(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text('url\tcaption\nhttp://a/0.jpg\tok\nhttp://a/1.jpg\t"a cat\nhttp://a/2.jpg\ta dog\n')
    with pytest.raises(InputError, match=r"line 3"):
        read_url_list(path)


def test_quoted_commas_and_quotes_still_parse(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        'url,caption\nhttp://a/0.jpg,"a cat, sitting"\nhttp://a/1.jpg,"a ""quoted"" dog"\nhttp://a/2.jpg,12" x\n'
    )
    assert read_url_list(path).column("caption").to_pylist() == ["a cat, sitting", 'a "quoted" dog', '12" x']


@pytest.mark.parametrize(
    "name", ["key", "url", "caption", "raw_shard", "fetchable", "status", "error_message", "phash"]
)
def test_reserved_additional_columns_are_refused_at_validation(name):
    with pytest.raises(RecipeError, match=rf"save_additional_columns: '{name}' is a column .* writes"):
        load_recipe("demo", [f"input.save_additional_columns=[{name}]"])


def test_repeated_additional_column_is_refused():
    with pytest.raises(RecipeError, match="twice"):
        load_recipe("demo", ["input.save_additional_columns=[source, source]"])


def test_zero_row_input_is_an_input_error(tmp_path, monkeypatch, capsys):
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), urls)
    code, _, err = cli(monkeypatch, capsys, "run", "demo", "--input", urls, "--output", tmp_path / "run")
    assert code == 2 and "no rows" in err and "nothing to curate" in err
    assert not (tmp_path / "run" / "raw").exists()


# --- a real run into a folder named o'neil ------------------------------------------------------

DEMO = ["acquire.samples_per_shard=40", "emit.samples_per_shard=50"]


@pytest.fixture(scope="module")
def oneil_run(served_corpus, ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "o'neil"
    result = run_pipeline(load_recipe("demo", DEMO), served_corpus.urls, run_dir)
    return run_dir, result


@pytest.mark.slow
def test_a_run_in_a_folder_with_an_apostrophe_decides_and_reports(oneil_run, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "o'neil [2]"
    shutil.copytree(oneil_run[0], run_dir)
    kept = oneil_run[1].funnel["steps"]["kept"]
    assert kept > 0
    code, _, err = cli(monkeypatch, capsys, "decide", run_dir, "--set", "decide.image_size.min_side=65")
    assert code == 0, err
    code, out, _ = cli(monkeypatch, capsys, "stats", run_dir, "SELECT count(*) AS n FROM kept", "--format", "json")
    (kept,) = json.loads(out)["sql"]
    assert code == 0 and kept["n"] == sum(json.loads((run_dir / "shards/sizes.json").read_text()).values())
    for flag in ("--funnel", "--languages", "--duplicates"):
        assert cli(monkeypatch, capsys, "stats", run_dir, flag)[0] == 0
    code, _, err = cli(monkeypatch, capsys, "report", run_dir)
    assert code == 0 and (run_dir / "report" / "report.html").is_file()


@pytest.mark.slow
def test_resource_settings_do_not_rerun_annotate(oneil_run, served_corpus, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(oneil_run[0], run_dir)
    resources = ["annotate.image.batch_size=128", "annotate.language.num_cpus=0.5", "annotate.caption.actors=2"]
    run_pipeline(load_recipe("demo", [*DEMO, *resources]), served_corpus.urls, run_dir)
    assert Manifest(run_dir).steps["annotate"]["executions"] == 1
    assert Manifest(run_dir).data["recipe"]["annotate"][0]["batch_size"] == 128  # the full recipe is recorded
    run_pipeline(load_recipe("demo", [*DEMO, "annotate.image.dhash=true"]), served_corpus.urls, run_dir)
    assert Manifest(run_dir).steps["annotate"]["executions"] == 2
    dhash = pq.read_table(run_dir / "samples", columns=["dhash"]).column("dhash")
    assert dhash.null_count < len(dhash)


@pytest.mark.slow
def test_huggingface_datasets_loads_every_emitted_row(oneil_run, tmp_path, monkeypatch):
    from datasets import load_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run_dir = oneil_run[0]
    tars = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    loaded = load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf"))
    meta = pq.read_table(run_dir / "metadata")
    assert meta.schema.field("phash").type == pa.uint64()  # Parquet keeps the unsigned hashes
    assert sorted(loaded["__key__"]) == sorted(meta.column("key").to_pylist())
    by_key = {row["key"]: row for row in meta.to_pylist()}
    for row in loaded:
        expected = by_key[row["__key__"]]
        assert row["txt"] == expected["caption"] and row["json"]["caption"] == expected["caption"]
        for column in ("phash", "caption_hash"):
            assert row["json"][column] & 0xFFFFFFFFFFFFFFFF == expected[column]
