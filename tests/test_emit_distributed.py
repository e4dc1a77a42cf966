"""Emit with no rows on the driver: the same output for the same seed whatever the cluster or the blocks,
exact shard sizes, LLaVA JSON one valid array for any shard count, and the writer contract."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import ensure_ray
from ray.cluster_utils import Cluster

from curate import runtime
from curate.demo.synthetic import synthetic_run
from curate.emit.formats import FORMATS
from curate.emit.llava import combine_json_lines
from curate.emit.parquet import MetadataFormat
from curate.emit.run import emit
from curate.emit.shards import EmitConfig, kept_rows

ROWS, RAW_SHARDS, PER_SHARD = 600, 5, 64
LLAVA = EmitConfig(samples_per_shard=PER_SHARD, shuffle_seed=7, llava=True)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A synthetic run: 600 samples in 5 raw shards, every 2nd kept, every 7th image a PNG."""
    run = tmp_path_factory.mktemp("pool") / "run"
    synthetic_run(run, ROWS, RAW_SHARDS, keep_every=2, png_every=7)
    return run


def emit_copy(pool: Path, target: Path, cfg: EmitConfig = LLAVA, previous: dict | None = None) -> dict:
    if not target.exists():
        shutil.copytree(pool, target)
    return emit(str(target), cfg, "alt", {}, previous or {})


def output(run: Path) -> dict:
    """What a run emitted, comparable across runs: tar members (names and bytes) in order, sizes,
    metadata rows in order, LLaVA JSON."""
    tars = {}
    for tar in sorted((run / "shards").glob("*.tar")):
        with tarfile.open(tar) as f:
            tars[tar.name] = [(m.name, f.extractfile(m).read()) for m in f.getmembers()]
    metadata = [pq.read_table(p).to_pylist() for p in sorted((run / "metadata").glob("*.parquet"))]
    llava = {
        n: json.loads(p.read_text()) for n in ("pretrain.json", "instruct.json") if (p := run / "llava" / n).is_file()
    }
    return {"tars": tars, "sizes": json.loads((run / "shards" / "sizes.json").read_text()), "meta": metadata, **llava}


def order(key: str, seed: int) -> tuple[int, str]:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()), key


@pytest.mark.slow
def test_same_seed_same_output_on_one_and_two_nodes_and_any_block_size(pool, tmp_path):
    """The two-node cluster first, then one node: the tests' shared embedded Ray, left up for the next tests."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": os.environ["CURATE_RAY_TMPDIR"]},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        with runtime.session(cluster.address):
            emit_copy(pool, tmp_path / "two")
    finally:
        cluster.shutdown()
    ensure_ray()  # one node, two CPUs
    with runtime.session():
        emit_copy(pool, tmp_path / "one")
        context = ray.data.DataContext.get_current()
        default = context.target_max_block_size
        context.target_max_block_size = 2048  # a few rows per block
        try:
            emit_copy(pool, tmp_path / "small-blocks")
        finally:
            context.target_max_block_size = default
    one = output(tmp_path / "one")
    assert output(tmp_path / "small-blocks") == one
    assert output(tmp_path / "two") == one

    kept = ROWS // 2
    assert list(one["sizes"].values()) == [PER_SHARD] * (kept // PER_SHARD) + [kept % PER_SHARD]
    assert [len(members) // 3 for members in one["tars"].values()] == list(one["sizes"].values())
    keys = [row["key"] for rows in one["meta"] for row in rows]
    assert keys == sorted(keys, key=lambda k: order(k, LLAVA.shuffle_seed)), "shards follow the seeded hash order"
    assert sorted(keys) == [f"{i:09d}" for i in range(0, ROWS, 2)]
    assert [r["id"] for r in one["pretrain.json"]] == keys == [r["id"] for r in one["instruct.json"]]
    rows = [row for rows in one["meta"] for row in rows]
    assert any(r["phash"] >= 1 << 63 for r in rows)  # uint64 kept in Parquet, signed in the tar's .json
    tar_json = {name[:-5]: json.loads(data) for m in one["tars"].values() for name, data in m if name.endswith("json")}
    assert all(tar_json[r["key"]]["phash"] == r["phash"] - (r["phash"] >= 1 << 63) * (1 << 64) for r in rows)


@pytest.mark.slow
def test_llava_json_is_one_array_for_zero_one_and_several_shards(ray_session, tmp_path):
    with runtime.session():
        for name, keep_every, per_shard, shards in (("none", 0, 10, 0), ("one", 3, 1000, 1), ("many", 3, 3, 5)):
            run = tmp_path / name
            kept = synthetic_run(run, 40, 2, keep_every=keep_every)
            record = emit(str(run), EmitConfig(samples_per_shard=per_shard, llava=True), "alt", {}, {})
            assert record["shards"] == shards and record["samples"] == record["llava_records"] == kept
            sizes = json.loads((run / "shards" / "sizes.json").read_text())
            assert len(sizes) == shards and sum(sizes.values()) == kept
            for file in ("pretrain.json", "instruct.json"):
                records = json.loads((run / "llava" / file).read_text())
                assert isinstance(records, list) and len(records) == kept
                assert all((run / "llava" / r["image"]).is_file() for r in records)


def test_combine_json_lines_streams_parts_into_one_array(tmp_path):
    parts = []
    for i, records in enumerate(([], [{"id": "a"}], [{"id": "b"}, {"id": "c\nd"}])):
        parts.append(tmp_path / f"{i}.jsonl")
        parts[-1].write_text("".join(json.dumps(r) + "\n" for r in records))
    for chosen, ids in (([], []), (parts[:1], []), (parts[1:2], ["a"]), (parts, ["a", "b", "c\nd"])):
        out = io.BytesIO()
        combine_json_lines([str(p) for p in chosen], out)
        assert [r["id"] for r in json.loads(out.getvalue())] == ids


def test_cut_spans_makes_exact_parts_across_blocks():
    spans = [("a", 0, 5), ("b", 2, 9), ("c", 0, 1)]  # 13 rows
    parts = runtime.cut_spans(spans, 4)
    assert [sum(z - a for _, a, z in p) for p in parts] == [4, 4, 4, 1]
    assert parts[1] == [("a", 4, 5), ("b", 2, 5)]
    assert runtime.cut_spans([], 4) == []


def test_kept_rows_reads_per_shard_decisions_and_enrich_results_of_either_layout(pool, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pool, run)
    samples = str(run / "samples" / "00001.parquet")
    decisions = pq.read_table(run / "decisions" / "decisions.parquet")
    expected = {k for k, keep in zip(*(decisions.column(c).to_pylist() for c in ("key", "keep")), strict=True) if keep}
    expected &= set(pq.read_table(samples).column("key").to_pylist())
    assert set(kept_rows(str(run), samples, {}).column("key").to_pylist()) == expected

    mine = sorted(expected)[:3]  # decisions per raw shard: only this shard's file is read
    pq.write_table(pa.table({"key": mine, "keep": [True, True, False]}), run / "decisions" / "00001.parquet")
    assert sorted(kept_rows(str(run), samples, {}).column("key").to_pylist()) == mine[:2]

    (run / "enrich" / "tag").mkdir(parents=True)  # enrich results per raw shard
    pq.write_table(pa.table({"key": mine[:1], "label": ["x"]}), run / "enrich" / "tag" / "00001.parquet")
    pq.write_table(pa.table({"key": mine[1:2], "score": [0.5]}), run / "enrich" / "old.parquet")  # one file
    rows = kept_rows(str(run), samples, {"tag": ["label"], "old": ["score"], "absent": ["z"]})
    got = {r["key"]: (r["label"], r["score"]) for r in rows.to_pylist()}
    assert got == {mine[0]: ("x", None), mine[1]: (None, 0.5)} and "z" not in rows.column_names


class KeysFormat(MetadataFormat):
    """A third format, as small as one can be: the keys of each shard, then of the run, one a line
    (it collects rows as the Parquet metadata writer does, and writes only their keys)."""

    name = "keys"
    folder = "keys"

    def close(self) -> dict:
        Path(self.path(".txt")).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path(".txt")).write_text("".join(row["key"] + "\n" for row in self._rows))
        return {"file": self.path(".txt")}

    @classmethod
    def finish(cls, out_dir: str, cfg: EmitConfig, summaries: list[dict]) -> dict:
        lines = "".join(Path(s["file"]).read_text() for s in summaries)
        (Path(cls.root(out_dir)) / "all.txt").write_text(lines)
        return {"keys": lines.count("\n")}


@pytest.mark.slow
def test_a_format_registered_in_one_line_is_written_and_removed_when_dropped(pool, ray_session, tmp_path, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tasks unpickle KeysFormat from here
    monkeypatch.setitem(FORMATS, "keys", KeysFormat)
    cfg = EmitConfig(samples_per_shard=100, formats=["webdataset", "keys"])
    with runtime.session():
        record = emit_copy(pool, tmp_path / "run", cfg)
        run = tmp_path / "run"
        assert record["formats"] == ["webdataset", "keys"] and record["keys"] == ROWS // 2
        keys = (run / "keys" / "all.txt").read_text().split()
        assert keys == [name[:-4] for tar in output(run)["tars"].values() for name, _ in tar if name.endswith(".jpg")]
        assert sorted(p.name for p in (run / "keys").iterdir()) == ["00000.txt", "00001.txt", "00002.txt", "all.txt"]
        assert not (run / "metadata").exists()
        emit_copy(pool, run, EmitConfig(samples_per_shard=100), previous=record)
    assert not (run / "keys").exists() and (run / "metadata").is_dir()


def test_unknown_format_is_a_recipe_error():
    from curate.recipe import RecipeError, build_recipe

    with pytest.raises(RecipeError, match=r"formats.*webdataset, parquet, llava"):
        build_recipe({"annotate": ["image"], "emit": {"formats": ["webdatset"]}})
    assert build_recipe({"annotate": ["image"], "emit": {"llava": True}}).emit.formats == ["webdataset", "parquet"]
