"""Shared fixtures: a generated corpus served on 127.0.0.1, and a short Ray temp dir."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.demo.corpus import build_corpus
from curate.demo.server import LoopbackServer, write_url_list

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# Ray's unix sockets need a short path; pytest's tmp paths can be too long.
_RAY_TMP = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
os.environ["CURATE_RAY_TMPDIR"] = _RAY_TMP


def pytest_sessionfinish(session, exitstatus):
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_session():
    """The tests' one embedded Ray, shared by every module that asks for it: each run_pipeline joins it instead
    of starting its own (a start and shutdown take ~5 s, and fresh workers import curate and torch again).

    It is started here when none runs (first use, or after a test that needed its own cluster shut it down)
    and stays up for the next module; a test that does not ask for it gets no Ray (see ``_own_ray``).
    Its workers keep the environment of their start: a test that sets variables workers must see starts its own.
    """
    ensure_ray()
    yield


def ensure_ray() -> None:
    """Start the shared embedded Ray unless a Ray is running."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=_RAY_TMP, logging_level=logging.WARNING)
        _SHARED_RAY.add(ray.get_runtime_context().get_node_id())


_SHARED_RAY: set[str] = set()
"""Node ids of the Rays ``ray_session`` started (a Ray a test or fixture started itself is left alone)."""
_RAY_MODULES: set[str] = set()
"""Test files with a test that uses ``ray_session``."""


def pytest_collection_modifyitems(session, config, items):
    _RAY_MODULES.update(str(item.path) for item in items if "ray_session" in getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True)
def _own_ray(request):
    """The tests of a file that never uses ``ray_session`` run as before it existed: the shared Ray is shut
    down first, so each of their runs starts (and stops) an embedded Ray of its own, or the cluster it builds."""
    ray = sys.modules.get("ray")
    if str(request.node.path) not in _RAY_MODULES and ray is not None and _shared_ray_is_up(ray):
        ray.shutdown()
    yield


def _shared_ray_is_up(ray) -> bool:
    return ray.is_initialized() and ray.get_runtime_context().get_node_id() in _SHARED_RAY


def downloaded_samples(keys: list[str], **columns) -> pa.Table:
    """Samples as acquisition and the image stage leave them: every download a success, every image
    100x100 and decoded; ``columns`` add columns or replace these."""
    n = len(keys)
    base = {
        "key": keys,
        "url": [f"http://h/{k}" for k in keys],
        "caption": ["c"] * n,
        "status": ["success"] * n,
        "width": [100] * n,
        "height": [100] * n,
        "decode_error": pa.nulls(n, pa.string()),
    }
    return pa.table(base | columns)


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A run directory written by hand, for `curate stats`: three samples without a download status, their
    decisions (one rejected as too small) and the two kept rows' metadata."""
    run, keys = tmp_path / "run", ["0", "1", "2"]
    for folder, table in {
        "samples": pa.table(
            {"key": keys, "url": ["u0", "u1", "u2"], "width": [10, 20, 30], "lang": ["en", "en", "de"]}
        ),
        "decisions": pa.table({"key": keys, "keep": [True, False, True], "reason": [None, "too_small", None]}),
        "metadata": pa.table({"key": ["0", "2"], "caption": ["a", "c"]}),
    }.items():
        (run / folder).mkdir(parents=True)
        pq.write_table(table, run / folder / "00000.parquet")
    (run / "manifest.json").write_text("{}")
    return run


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory) -> Path:
    """A URL list whose every object answers after 40 ms, so acquisition lasts long enough to be interrupted."""
    import dataclasses

    objects, rows = build_corpus(n_clean=60, seed=2, slow_delay_s=3.0)
    objects = {p: dataclasses.replace(o, delay_s=max(o.delay_s, 0.04)) for p, o in objects.items()}
    with LoopbackServer(objects) as server:
        yield write_url_list(rows, server.base_url, tmp_path_factory.mktemp("slow") / "urls.parquet")


class ServedCorpus:
    """The demo corpus on a live loopback server, with its URL list written to disk."""

    def __init__(self, server: LoopbackServer, objects, rows, urls: Path) -> None:
        self.server, self.objects, self.rows, self.urls = server, objects, rows, urls

    def expected_reasons(self) -> list[str | None]:
        return pq.read_table(self.urls).column("expected_reason").to_pylist()


@pytest.fixture(scope="session")
def served_corpus(tmp_path_factory) -> ServedCorpus:
    objects, rows = build_corpus(n_clean=120, seed=1, slow_delay_s=5.0)
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp_path_factory.mktemp("corpus") / "urls.parquet")
        yield ServedCorpus(server, objects, rows, urls)


@pytest.fixture(scope="session")
def demo_downloaded(served_corpus, tmp_path_factory) -> Path:
    """A whole `curate run demo` that downloaded the served corpus (read it, never change it): its raw/ is an
    img2dataset output folder. Once per session for every test that curates what is already downloaded."""
    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    ensure_ray()
    return Path(run_pipeline(load_recipe("demo"), served_corpus.urls, tmp_path_factory.mktemp("dl") / "run").run_dir)


@pytest.fixture(scope="session")
def curated_shards(tmp_path_factory) -> Path:
    """RUN/shards of `curate run demo` on a 300-pair corpus: what trainers consume."""
    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    objects, rows = build_corpus(n_clean=300, seed=3, slow_delay_s=3.0)
    tmp = tmp_path_factory.mktemp("curated")
    ensure_ray()
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp / "urls.parquet")
        run_pipeline(load_recipe("demo"), urls, tmp / "run")
    return tmp / "run" / "shards"


@pytest.fixture(scope="session")
def lit_model(curated_shards, tmp_path_factory) -> Path:
    """lit-offline with projections trained by `curate train clip` on two of the three curated shards."""
    from curate.train.clip import ClipTrainConfig, train_clip

    output = tmp_path_factory.mktemp("lit")
    overrides = {"steps": 100, "batch_size": 32, "log_every": 5, "warmup_steps": 2}
    cfg = ClipTrainConfig.from_yaml("configs/train/lit-offline.yaml", overrides)
    train_clip(cfg, f"{curated_shards}/{{00000..00001}}.tar", output)
    return output


LLAVA_TINY_TEST = {
    "stage1.steps": 40,
    "stage1.batch_size": 8,
    "stage1.lr": 3.0e-3,
    "stage2.steps": 100,
    "stage2.batch_size": 8,
    "stage2.lr": 2.0e-3,
    "log_every": 5,
}
"""llava-tiny, shortened for the tests: two stages on 24 records of the demo export."""


def llava_subset(run_dir: Path, folder: Path, n: int = 24) -> Path:
    """The first ``n`` records of RUN/llava's two files in ``folder``, images linked, not copied.
    Conversations keep their first exchange (describe → caption): half the tokens to train on."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pretrain.json", "instruct.json"):
        records = json.loads((run_dir / "llava" / name).read_text())[:n]
        records = [{**r, "conversations": r["conversations"][:2]} for r in records]
        (folder / name).write_text(json.dumps(records))
    (folder / "images").symlink_to(run_dir / "llava" / "images")
    return folder


@pytest.fixture(scope="session")
def llava_model(curated_shards, tmp_path_factory) -> Path:
    """`curate train llava` (llava-tiny, both stages) overfit on 24 curated samples."""
    from curate.train.llava import LlavaTrainConfig, train_llava

    tmp = tmp_path_factory.mktemp("llava")
    data = llava_subset(curated_shards.parent, tmp / "data")
    cfg = LlavaTrainConfig.from_yaml("configs/train/llava-tiny.yaml", LLAVA_TINY_TEST)
    train_llava(cfg, data, tmp / "model")
    return tmp / "model"
