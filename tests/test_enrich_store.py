"""Enrich per raw shard: results in enrich/{stage}/{raw_shard}.parquet, only new kept rows processed.

The stage is the real ``hashes`` stage run as an enrich stage (it re-reads each image from raw/, as
recaption does, with no model to load), so the stored sha256 can be checked against annotate's.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import runtime
from curate.decide import decide
from curate.manifest import Manifest
from curate.recipe import build_recipe
from curate.run import enrich
from curate.signals.hashes import Hashes


@pytest.fixture
def run(curated_shards, ray_session, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(curated_shards.parent, target)
    return target


def decide_and_enrich(run, extra_policies: list) -> dict:
    data = json.loads(json.dumps(Manifest(run).data["recipe"]))
    data["decide"] += extra_policies
    recipe = build_recipe(data)
    recipe.enrich = [Hashes()]
    decide([str(p) for p in sorted((run / "samples").iterdir())], recipe.decide, run / "decisions")
    manifest = Manifest(run)
    with runtime.session():
        enrich(recipe, str(run), manifest)
    return manifest.data["steps"]["enrich"]["hashes"]


def kept(run) -> set[str]:
    table = pq.read_table(run / "decisions")
    return {k for k, keep in zip(table["key"].to_pylist(), table["keep"].to_pylist(), strict=True) if keep}


def stored(run) -> dict[str, str]:
    """sha256 by key over every shard file, checking each file holds one raw shard's keys, sorted."""
    samples = pq.read_table(run / "samples", columns=["key", "raw_shard"])
    shard_of = dict(zip(samples["key"].to_pylist(), samples["raw_shard"].to_pylist(), strict=True))
    out = {}
    for path in sorted((run / "enrich" / "hashes").iterdir()):
        table = pq.read_table(path)
        keys = table["key"].to_pylist()
        assert keys == sorted(keys) and {shard_of[k] for k in keys} == {path.stem}
        out |= dict(zip(keys, table["sha256"].to_pylist(), strict=True))
    return out


@pytest.mark.slow
def test_enrich_per_shard_processes_only_newly_kept_rows_and_moves_an_old_single_file(run):
    annotated = pq.read_table(run / "samples", columns=["key", "sha256"])
    truth = dict(zip(annotated["key"].to_pylist(), annotated["sha256"].to_pylist(), strict=True))

    first = decide_and_enrich(run, [{"policy": "caption_length", "min_words": 9}])
    few = kept(run)
    assert first["processed"] == len(few) > 0 and first["reused"] == 0
    assert stored(run) == {k: truth[k] for k in few}  # the image bytes were re-read per shard
    assert json.loads((run / "enrich" / "hashes.json").read_text()) == Hashes().config.cache_key()

    second = decide_and_enrich(run, [])  # a re-decide keeps more rows: only those are processed
    more = kept(run)
    assert more > few
    assert second["processed"] == len(more - few) and second["reused"] == len(few)
    assert stored(run) == {k: truth[k] for k in more}

    folder = run / "enrich" / "hashes"  # a run from before the per-shard layout: one file
    pq.write_table(
        pa.concat_tables([pq.read_table(p) for p in sorted(folder.iterdir())]), folder.with_suffix(".parquet")
    )
    shutil.rmtree(folder)
    third = decide_and_enrich(run, [])
    assert third["processed"] == 0 and third["reused"] == len(more)
    assert stored(run) == {k: truth[k] for k in more} and not folder.with_suffix(".parquet").exists()

    (run / "enrich" / "hashes.json").write_text(json.dumps({"model": "another"}))  # settings changed
    fourth = decide_and_enrich(run, [])
    assert fourth["processed"] == len(more) and fourth["reused"] == 0
    assert not (run / ".tmp").exists() or not list((run / ".tmp").iterdir())
