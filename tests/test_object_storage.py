"""A run directory on object storage: every command against a real S3 API server on loopback (moto's server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
SMALL = ["--set", "acquire.samples_per_shard=60", "--set", "emit.samples_per_shard=64"]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1; the environment points boto3, s3fs and pyarrow at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    clear_s3_instances()  # fsspec caches filesystems: one made for another server must not be reused
    try:
        yield env
    finally:
        clear_s3_instances()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def clear_s3_instances() -> None:
    """Forget fsspec's cached S3 filesystems (each holds the endpoint it was made with)."""
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket: ``s3://NAME``."""
    import boto3

    name = f"curate-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def s3fs():
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def curate(*args: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m curate ARGS`` in ``cwd`` with the S3 environment."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "curate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def read_parquet(url: str, columns=None):
    with s3fs().open(url, "rb") as f:
        return pq.read_table(f, columns=columns)


def read_folder(url: str, columns=None):
    """Every file a folder's ``_COMMITTED`` marker lists, concatenated."""
    listed = json.loads(s3fs().cat(f"{url}/_COMMITTED"))
    return pa.concat_tables([read_parquet(f"{url}/{name}", columns) for name in listed])


def kept(run: str) -> list[str]:
    table = read_folder(f"{run}/decisions", ["key", "keep"])
    return sorted(k for k, keep in zip(*(table.column(c).to_pylist() for c in ("key", "keep")), strict=True) if keep)


def metadata_keys(run: str) -> list[str]:
    fs = s3fs()
    listed = json.loads(fs.cat(f"{run}/metadata/_COMMITTED"))
    return sorted(
        k for name in listed for k in read_parquet(f"{run}/metadata/{name}", ["key"]).column("key").to_pylist()
    )


def sizes_total(run: str) -> int:
    return sum(json.loads(s3fs().cat(f"{run}/shards/sizes.json")).values())


@pytest.mark.slow
def test_run_decide_stats_report_status_on_s3(served_corpus, bucket, tmp_path, tmp_path_factory):
    fs = s3fs()
    fs.put_file(str(served_corpus.urls), f"{bucket}/in/urls.parquet")
    run = f"{bucket}/run"
    curate("run", "demo", "--input", f"{bucket}/in/urls.parquet", "--output", run, *SMALL, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing of the run may land on local disk"
    first = kept(run)
    assert first and first == metadata_keys(run) and sizes_total(run) == len(first)
    assert fs.exists(f"{run}/report/report.html") and not fs.exists(f"{run}/curate.lock")
    assert not fs.ls(f"{run}/.tmp") if fs.exists(f"{run}/.tmp") else True
    shards = json.loads(fs.cat(f"{run}/manifest.json"))["steps"]["annotate"]["raw_shards"]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{run}/samples", refresh=True))
    assert names == [f"{s}.parquet" for s in shards]  # one file per raw shard, no folder marker

    fs.rm(f"{run}/samples/{shards[0]}.parquet")  # as if annotate was killed before this shard was committed
    fs.pipe_file(f"{run}/samples/_COMMITTED", json.dumps([]).encode())  # a marker of the folder-at-once layout
    curate("run", "demo", "--input", f"{bucket}/in/urls.parquet", "--output", run, *SMALL, cwd=tmp_path)
    annotate = json.loads(fs.cat(f"{run}/manifest.json"))["steps"]["annotate"]
    assert (annotate["shards_annotated"], annotate["shards_reused"]) == (1, len(shards) - 1)
    assert not fs.exists(f"{run}/samples/_COMMITTED") and kept(run) == first

    curate("decide", run, "--set", "decide.image_size.min_side=200", cwd=tmp_path)
    second = kept(run)
    assert set(second) < set(first)
    assert second == metadata_keys(run) and sizes_total(run) == len(second)
    shards = [p for p in fs.ls(f"{run}/shards", refresh=True) if p.endswith(".tar")]
    listed = [n for n in json.loads(fs.cat(f"{run}/shards/_COMMITTED")) if n.endswith(".tar")]
    assert len(shards) == len(listed)  # the old version's tars are gone

    out = curate("stats", run, "SELECT count(*) AS n FROM kept", "--format", "csv", cwd=tmp_path).stdout
    assert out.split()[-1] == str(len(second))
    out = curate("stats", run, "SELECT count(*) AS n FROM read_parquet('/etc/passwd')", cwd=tmp_path, check=False)
    assert out.returncode != 0  # the sandbox holds for a run on s3 too
    assert "complete" in curate("status", run, cwd=tmp_path).stdout
    from curate.train.data import dataset_size, expand_shards, iter_pairs

    shards = expand_shards(f"{run}/shards")  # what `curate train clip --data s3://.../shards` reads
    assert shards[0].startswith("s3://") and dataset_size(shards) == len(second)
    assert sorted(key for key, _, _ in iter_pairs(shards)) == second
    from curate.train.clip import ClipTrainConfig, train_clip

    tiny = {"steps": 3, "batch_size": 8, "data_workers": 1, "warmup_steps": 1, "save_every": 3, "log_every": 1}
    cfg = ClipTrainConfig.from_yaml("configs/train/clip-tiny.yaml", tiny)
    model = tmp_path_factory.mktemp("model")
    assert train_clip(cfg, f"{run}/shards", model)["steps"] == 3
    from curate.train.eval import evaluate_clip  # what `curate eval clip MODEL --data s3://.../shards` reads

    assert evaluate_clip(str(model), f"{run}/shards", batch_size=64, device="cpu")["retrieval"]["n"] == len(second)
    fs.rm(f"{run}/report", recursive=True)
    curate("report", run, cwd=tmp_path)
    assert s3fs().exists(f"{run}/report/report.html")
    assert list(tmp_path.iterdir()) == []


def test_lease_refuses_a_second_writer_and_takes_over_a_stale_one(bucket):
    from curate import lock

    run = f"{bucket}/run"
    with lock.RunLock(run, command="first") as first:
        assert isinstance(first, lock.Lease)
        assert lock.holder(run)["command"] == "first"
        with pytest.raises(lock.RunLocked, match="first"):
            lock.RunLock(run, command="second").acquire()
    assert lock.holder(run) is None and not s3fs().exists(f"{run}/curate.lock")
    stale = {"pid": 1, "host": "gone", "started": "then", "command": "dead", "heartbeat": 0}
    s3fs().pipe_file(f"{run}/curate.lock", json.dumps(stale).encode())
    assert lock.holder(run) is None
    with lock.RunLock(run, command="third") as third:
        assert third.took_over["command"] == "dead"
        assert lock.holder(run)["command"] == "third"


def wait_until_stable(raw: str, quiet_s: float = 4.0, timeout: float = 60) -> set[str]:
    """Complete shards once none has appeared for ``quiet_s`` (workers of a killed driver may finish theirs)."""
    from curate.acquire.download import complete_shards

    deadline = time.monotonic() + timeout
    seen, since = complete_shards(raw), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        s3fs()
        now = complete_shards(raw)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


@pytest.mark.slow
def test_killed_run_on_s3_resumes_without_downloading_complete_shards(slow_corpus, bucket, tmp_path):
    from curate.acquire.download import complete_shards
    from curate.manifest import Manifest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "CURATE_LEASE_TIMEOUT_S": "3"}
    s3fs().put_file(str(slow_corpus), f"{bucket}/urls.parquet")
    run = f"{bucket}/run"
    args = ["run", "demo", "--input", f"{bucket}/urls.parquet", "--output", run]
    args += ["--set", "acquire.samples_per_shard=10", "--set", "acquire.threads=1"]
    cmd = [sys.executable, "-m", "curate", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(complete_shards(f"{run}/raw")) < 2:
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.2)
        s3fs()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = wait_until_stable(f"{run}/raw")
    total = Manifest(run).steps["acquire"]["shards"]
    assert 2 <= len(done_before) < total, "the kill must land in the middle of acquisition"
    assert s3fs().exists(f"{run}/curate.lock")  # the killed writer's lease, stale after 3 s

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "taking over the stale lease" in again.stderr
    assert Manifest(run).steps["acquire"]["shards_downloaded"] == total - len(done_before)
    assert kept(run) and kept(run) == metadata_keys(run)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_node_cluster_shares_only_the_bucket(served_corpus, bucket, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from curate.manifest import Manifest
    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    s3fs().put_file(str(served_corpus.urls), f"{bucket}/urls.parquet")
    monkeypatch.chdir(tmp_path)
    if ray.is_initialized():
        ray.shutdown()
    head = {"num_cpus": 1, "include_dashboard": False, "temp_dir": os.environ["CURATE_RAY_TMPDIR"]}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    run = f"{bucket}/run"
    try:
        recipe = load_recipe("demo", ["acquire.samples_per_shard=20", "emit.samples_per_shard=40"])
        result = run_pipeline(recipe, f"{bucket}/urls.parquet", run, address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    nodes = Manifest(run).steps["acquire"]["nodes"]
    assert len(nodes) == 2, f"acquire ran on {nodes}"
    assert result.funnel["steps"]["kept"] == sum(r is None for r in served_corpus.expected_reasons())
    assert kept(run) == metadata_keys(run) and sizes_total(run) == len(kept(run))
    assert list(tmp_path.iterdir()) == [], "nothing of the run may land on local disk"


def test_commit_dir_on_s3_lists_only_the_new_version_and_removes_the_old(bucket):
    from curate import storage

    fs = s3fs()
    for version, names in ((1, ["a.parquet", "b.parquet"]), (2, ["c.parquet"])):
        tmp = f"{bucket}/run/.tmp/v{version}"
        for name in names:
            fs.pipe_file(f"{tmp}/{name}", str(version).encode())
        storage.commit_dir(tmp, f"{bucket}/run/samples")
        assert storage.files(f"{bucket}/run/samples") == [f"{bucket}/run/samples/{n}" for n in names]
        assert not fs.exists(tmp)
    assert sorted(storage.name(p) for p in fs.ls(f"{bucket}/run/samples", refresh=True)) == ["_COMMITTED", "c.parquet"]
    fs.pipe_file(f"{bucket}/run/samples/stray.parquet", b"half-written by a killed writer")
    assert storage.files(f"{bucket}/run/samples") == [f"{bucket}/run/samples/c.parquet"]  # readers trust the marker


@pytest.mark.slow
def test_storage_options_in_the_recipe_reach_driver_workers_and_lease(served_corpus, bucket, tmp_path, monkeypatch):
    """The endpoint and credentials only in the recipe (the environment points at a closed port): the run
    completes on the driver, the Ray workers and the lease, and the secret is not in the manifest."""
    import copy

    import fsspec
    import ray

    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    s3fs().put_file(str(served_corpus.urls), f"{bucket}/in/urls.parquet")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setattr(fsspec.config, "conf", copy.deepcopy(fsspec.config.conf))  # undone after the test
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    if ray.is_initialized():
        ray.shutdown()
    secret = "s3cr3t-" + uuid.uuid4().hex
    options = [f"storage_options.s3.endpoint_url={endpoint}", "storage_options.s3.key=x"]
    options.append(f"storage_options.s3.secret={secret}")
    recipe = load_recipe("demo", ["acquire.samples_per_shard=60", "emit.samples_per_shard=64", *options])
    run = f"{bucket}/run"
    result = run_pipeline(recipe, f"{bucket}/in/urls.parquet", run)
    assert result.funnel["steps"]["kept"] == sum(r is None for r in served_corpus.expected_reasons())
    manifest = s3fs().cat(f"{run}/manifest.json").decode()
    assert "storage_options" not in json.loads(manifest)["recipe"] and secret not in manifest
    assert kept(run) == metadata_keys(run)
    monkeypatch.setenv("FSSPEC_S3", json.dumps(recipe.storage_options["s3"]))  # readers: fsspec's own variable
    out = curate("stats", run, "SELECT count(*) AS n FROM kept", "--format", "csv", cwd=tmp_path).stdout
    assert out.split()[-1] == str(len(kept(run)))
    assert list(tmp_path.iterdir()) == []
