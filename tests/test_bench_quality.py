"""`curate bench quality` end to end at a tiny scale: the table is right (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app

pytestmark = pytest.mark.slow


def test_bench_quality_compares_recipes_with_no_filter(served_corpus, curated_shards, ray_session, tmp_path):
    spec = tmp_path / "eval.yaml"
    spec.write_text(yaml.safe_dump({"data": str(curated_shards), "zero_shot": "shapes"}))
    basic = yaml.safe_load(
        Path("pipelines/datacomp-basic.yaml").read_text()
    )  # opted in: the pool is served on 127.0.0.1
    basic["acquire"] = {**basic.get("acquire", {}), "allow_private_addresses": True}
    (tmp_path / "datacomp-basic.yaml").write_text(yaml.safe_dump(basic))
    args = [
        "bench",
        "quality",
        "--pool",
        str(served_corpus.urls),
        "--recipes",
        "demo",
        str(tmp_path / "datacomp-basic.yaml"),
    ]
    args += ["--eval", str(spec), "--output", str(tmp_path / "out"), "--samples", "160"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out" / "quality.json").read_text())
    rows = {r["recipe"]: r for r in out["rows"]}
    assert list(rows) == ["no-filter", "1-demo", "2-datacomp-basic"]
    total = len(served_corpus.rows)
    for name, row in rows.items():
        decisions = pq.read_table(tmp_path / "out" / name / "decisions").to_pylist()
        assert row["input"] == total == len(decisions)
        assert row["kept"] == sum(d["keep"] for d in decisions)
        assert row["kept_fraction"] == pytest.approx(row["kept"] / total)
        assert 0 <= row["retrieval_r1"] <= 1 and 0 <= row["zero_shot_top1"] <= 1
        log = (tmp_path / "out" / name / "model" / "log.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["step"] == 160 // 64  # equal samples seen: same steps and batch
    no_filter = {d["reason"] for d in pq.read_table(tmp_path / "out" / "no-filter" / "decisions").to_pylist()}
    assert no_filter <= {
        None,
        "download_error",
        "download_timeout",
        "decode_error",
        "bad_url",
    }  # only the availability check
    assert rows["no-filter"]["kept"] > rows["1-demo"]["kept"] > rows["2-datacomp-basic"]["kept"]
    with Image.open(tmp_path / "out" / "quality.png") as im:
        assert im.size[0] > 100
    assert "quality.json" in result.output.replace("\n", "")  # a long tmp path wraps mid-word
