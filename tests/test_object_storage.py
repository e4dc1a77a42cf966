"""A run directory on object storage: every command against a real S3 API server on loopback (moto's server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

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
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


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


def kept(run: str) -> list[str]:
    table = read_parquet(f"{run}/decisions/decisions.parquet", ["key", "keep"])
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
def test_run_decide_stats_report_status_on_s3(served_corpus, bucket, tmp_path):
    fs = s3fs()
    fs.put_file(str(served_corpus.urls), f"{bucket}/in/urls.parquet")
    run = f"{bucket}/run"
    curate("run", "demo", "--input", f"{bucket}/in/urls.parquet", "--output", run, *SMALL, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing of the run may land on local disk"
    first = kept(run)
    assert first and first == metadata_keys(run) and sizes_total(run) == len(first)
    assert fs.exists(f"{run}/report/report.html") and not fs.exists(f"{run}/curate.lock")
    assert not fs.ls(f"{run}/.tmp") if fs.exists(f"{run}/.tmp") else True

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
