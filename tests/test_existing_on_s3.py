"""Curate what is already downloaded when it is on object storage (a real S3 API server on loopback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_existing_shards import CAPTIONS, decisions, image_bytes, write_tar
from test_object_storage import bucket, read_folder, s3_server, s3fs  # noqa: F401 (fixtures)

from curate.recipe import load_recipe
from curate.run import run_pipeline


@pytest.fixture(scope="module")
def s3_ray(s3_server):  # noqa: F811
    """One embedded Ray started after the S3 environment is set, so its workers reach the bucket too."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["CURATE_RAY_TMPDIR"])
    yield
    ray.shutdown()


def s3_decisions(run: str) -> dict[str, tuple[bool, str | None]]:
    table = read_folder(f"{run}/decisions", ["key", "keep", "reason"])
    return {r["key"]: (r["keep"], r["reason"]) for r in table.to_pylist()}


@pytest.mark.slow
def test_img2dataset_folder_in_a_bucket_curated_into_a_bucket(
    served_corpus,
    demo_downloaded,
    s3_ray,
    bucket,  # noqa: F811
    tmp_path,
):
    local = demo_downloaded  # `curate run demo` downloaded the served corpus (a session fixture)
    fs = s3fs()
    for path in sorted((local / "raw").iterdir()):  # an img2dataset output folder: NNNNN.tar/.parquet/_stats.json
        fs.put_file(str(path), f"{bucket}/i2d/{path.name}")
    hits = sum(served_corpus.server.hits.values())
    run = f"{bucket}/run2"
    run_pipeline(load_recipe("demo"), f"{bucket}/i2d", run)
    assert sum(served_corpus.server.hits.values()) == hits  # nothing downloaded
    assert s3_decisions(run) == decisions(local)
    sources = json.loads(s3fs().cat(f"{run}/raw/sources.json"))
    assert sources["format"] == "img2dataset"
    assert all(files[".tar"].startswith(f"{bucket}/i2d/") for files in sources["shards"].values())
    assert not [p for p in s3fs().ls(f"{run}/raw") if p.endswith(".tar")]  # read in place, not copied
    assert list(tmp_path.iterdir()) == [], "nothing of the s3 run may land on local disk"


@pytest.mark.slow
def test_webdataset_tars_in_a_bucket_curated_into_a_local_run(s3_ray, bucket, tmp_path):  # noqa: F811
    images = {
        "cat": ("jpg", image_bytes("JPEG", (200, 30, 30))),
        "dog": ("png", image_bytes("PNG", (30, 30, 200))),
        "owl": ("webp", image_bytes("WEBP", (220, 220, 20))),
        "elk": ("jpeg", image_bytes("JPEG", (240, 240, 240))),
    }
    fs = s3fs()
    for i, keys in enumerate((("cat", "dog"), ("owl", "elk"))):
        members = {}
        for key in keys:
            ext, data = images[key]
            members |= {f"{key}.{ext}": data, f"{key}.txt": CAPTIONS[key].encode()}
        write_tar(tmp_path / f"{i:05d}.tar", members)
        fs.put_file(str(tmp_path / f"{i:05d}.tar"), f"{bucket}/wds/{i:05d}.tar")
    want = {key: (True, None) for key in images}
    recipe = load_recipe("demo", ["input.format=webdataset"])
    run = Path(run_pipeline(recipe, f"{bucket}/wds/{{00000..00001}}.tar", tmp_path / "run").run_dir)
    assert decisions(run) == want
    sources = json.loads((run / "raw" / "sources.json").read_text())
    assert [s[".tar"] for s in sources["shards"].values()] == [f"{bucket}/wds/0000{i}.tar" for i in (0, 1)]
    run2 = Path(
        run_pipeline(load_recipe("demo"), f"{bucket}/wds", tmp_path / "run2").run_dir
    )  # a folder, auto-detected
    assert decisions(run2) == want


def test_url_lists_in_a_bucket_staged_by_tasks_into_a_bucket(bucket, tmp_path):  # noqa: F811
    """The distributed staging path on object storage: list copies and input files in the bucket, the same bytes."""
    from test_input_lists import DEMO, local_tasks, mixed_lists

    from curate.acquire import staging

    local = mixed_lists(tmp_path / "lists")
    fs = s3fs()
    for path in local:
        fs.put_file(str(path), f"{bucket}/lists/{path.name}")
    cfg = DEMO.model_copy(update={"save_additional_columns": ["n"], "driver_max_bytes": 0})
    run = f"{bucket}/run"
    _, staged = staging.stage_urls(f"{bucket}/lists", cfg, 4, run, {}, local_tasks)
    (tmp_path / "run").mkdir()
    _, expected = staging.stage_urls(
        local, cfg.model_copy(update={"driver_max_bytes": 1 << 30}), 4, str(tmp_path / "run"), {}, None
    )
    assert staged.fingerprint == expected.fingerprint
    for path in sorted((tmp_path / "run" / "input").iterdir()):
        assert s3fs().cat(f"{run}/input/{path.name}") == path.read_bytes()
    assert not s3fs().find(f"{run}/.tmp")  # the staged list copies are gone
