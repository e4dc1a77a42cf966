"""Curate what is already downloaded: img2dataset folders and WebDataset tars as --input, read in place."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.acquire.inputs import InputError
from curate.cli import main
from curate.recipe import load_recipe
from curate.run import run_pipeline


def decisions(run: Path) -> dict[str, tuple[bool, str | None]]:
    table = pq.read_table(run / "decisions", columns=["key", "keep", "reason"])
    return {r["key"]: (r["keep"], r["reason"]) for r in table.to_pylist()}


def emitted(run: Path) -> dict[str, dict[str, bytes]]:
    """Every emitted sample's members by key (from RUN/shards/*.tar)."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((run / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def downloaded(demo_downloaded, ray_session) -> Path:
    """A whole demo run that downloaded the corpus: its raw/ is an img2dataset output folder (the session's one,
    shared with tests/test_existing_on_s3.py; read only)."""
    return demo_downloaded


@pytest.mark.slow
def test_img2dataset_folder_gives_the_same_decisions_without_a_request(served_corpus, downloaded, tmp_path):
    hits = sum(served_corpus.server.hits.values())
    run2 = Path(run_pipeline(load_recipe("demo"), downloaded / "raw", tmp_path / "run2").run_dir)
    assert sum(served_corpus.server.hits.values()) == hits  # nothing downloaded
    assert decisions(run2) == decisions(downloaded)
    assert not list((run2 / "raw").glob("*.tar"))  # read in place, not copied
    sources = json.loads((run2 / "raw" / "sources.json").read_text())
    assert sources["format"] == "img2dataset" and len(sources["shards"]) == len(
        list((downloaded / "raw").glob("*.tar"))
    )
    first, second = emitted(downloaded), emitted(run2)
    assert first.keys() == second.keys() and all(first[k]["jpg"] == second[k]["jpg"] for k in first)
    assert all(first[k]["txt"] == second[k]["txt"] for k in first)
    manifest = json.loads((run2 / "manifest.json").read_text())
    assert manifest["input_format"] == "img2dataset" and manifest["steps"]["acquire"]["shards_downloaded"] == 0


@pytest.mark.slow
def test_img2dataset_parquet_output_format_is_read_in_place(served_corpus, downloaded, tmp_path):
    """img2dataset's output_format parquet: the images are a jpg column of the per-shard Parquet, no tar."""
    folder = tmp_path / "parquet-out"
    folder.mkdir()
    for meta_path in sorted((downloaded / "raw").glob("*.parquet")):
        name = meta_path.stem
        images = {}
        with tarfile.open(downloaded / "raw" / f"{name}.tar") as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    images[member.name[:-4]] = tar.extractfile(member).read()
        meta = pq.read_table(meta_path)
        jpg = pa.array([images.get(k) for k in meta.column("key").to_pylist()], pa.binary())
        pq.write_table(meta.append_column("jpg", jpg), folder / f"{name}.parquet")
        shutil.copy(downloaded / "raw" / f"{name}_stats.json", folder)
    hits = sum(served_corpus.server.hits.values())
    run = Path(run_pipeline(load_recipe("demo"), folder, tmp_path / "run").run_dir)
    assert sum(served_corpus.server.hits.values()) == hits
    assert decisions(run) == decisions(downloaded)
    first, second = emitted(downloaded), emitted(run)
    assert first.keys() == second.keys() and all(first[k]["jpg"] == second[k]["jpg"] for k in first)
    assert all(first[k]["txt"] == second[k]["txt"] for k in first)


def image_bytes(fmt: str, color: tuple[int, int, int], size: int = 96) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), color)
    img.putpixel((size // 2, size // 3), (color[2], color[0], color[1]))  # no two images alike
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


CAPTIONS = {
    "cat": "a photograph of a small red barn in a green field",
    "dog": "a blue boat floating on a calm lake at sunset",
    "owl": "a yellow bicycle leaning against an old brick wall",
    "elk": "a white lighthouse standing on a rocky coast",
}


def test_webdataset_tars_are_curated_in_place(ray_session, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    images = {
        "cat": ("jpg", image_bytes("JPEG", (200, 30, 30))),
        "dog": ("png", image_bytes("PNG", (30, 30, 200))),
        "owl": ("webp", image_bytes("WEBP", (220, 220, 20))),
        "elk": ("jpeg", image_bytes("JPEG", (240, 240, 240))),
    }
    for i, keys in enumerate((("cat", "dog"), ("owl", "elk"))):
        members = {}
        for key in keys:
            ext, data = images[key]
            members |= {f"{key}.{ext}": data, f"{key}.txt": CAPTIONS[key].encode()}
            if key != "elk":
                members[f"{key}.json"] = json.dumps({"url": f"https://example.org/{key}.{ext}"}).encode()
        write_tar(shards / f"{i:05d}.tar", members)
    recipe = load_recipe("demo", ["input.format=webdataset"])
    run = Path(run_pipeline(recipe, f"{shards}/{{00000..00001}}.tar", tmp_path / "run").run_dir)
    assert decisions(run) == {key: (True, None) for key in images}
    out = emitted(run)
    for key, (ext, data) in images.items():  # each image with its own caption (emit re-encodes PNG/WebP as JPEG)
        assert out[key]["txt"].decode() == CAPTIONS[key]
        if ext in ("jpg", "jpeg"):
            assert out[key]["jpg"] == data
        else:
            got = Image.open(io.BytesIO(out[key]["jpg"])).convert("RGB").getpixel((0, 0))
            want = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 12
    meta = pq.read_table(run / "metadata").to_pylist()
    urls = {r["key"]: r["url"] for r in meta}
    assert urls.get("cat") == "https://example.org/cat.jpg" and urls.get("elk") is None
    assert not list((run / "raw").glob("*.tar"))  # the tars are read where they are
    run_pipeline(recipe, f"{shards}/{{00000..00001}}.tar", run)  # resume: signals reused, same decisions
    assert json.loads((run / "manifest.json").read_text())["steps"]["annotate"]["executions"] == 1
    assert decisions(run) == {key: (True, None) for key in images}


def test_an_input_folder_without_shards_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.tar files"):
        run_pipeline(load_recipe("demo", ["input.format=webdataset"]), tmp_path / "empty", tmp_path / "run")
    with pytest.raises(InputError, match=r"no \*_stats\.json"):
        run_pipeline(load_recipe("demo", ["input.format=img2dataset"]), tmp_path / "empty", tmp_path / "run2")


def test_webdataset_samples_without_caption_or_with_a_broken_image_still_get_a_reason(ray_session, tmp_path):
    members = {
        "good.jpg": image_bytes("JPEG", (10, 120, 10)),
        "good.txt": CAPTIONS["cat"].encode(),
        "nocap.png": image_bytes("PNG", (120, 10, 10)),  # no .txt
        "broken.jpg": b"\xff\xd8 not really a jpeg",
        "broken.txt": CAPTIONS["dog"].encode(),
        "lonely.txt": CAPTIONS["owl"].encode(),  # no image
        "lonely.json": b"{not json",
    }
    write_tar(tmp_path / "one.tar", members)  # auto-detected: a .tar file
    run = Path(run_pipeline(load_recipe("demo"), tmp_path / "one.tar", tmp_path / "run").run_dir)
    got = decisions(run)
    assert got["good"] == (True, None)
    assert got["broken"] == (False, "decode_error")
    assert got["lonely"] == (False, "no_image")
    assert got["nocap"] == (False, "caption_short")  # no .txt: a null caption
    assert set(got) == {"good", "nocap", "broken", "lonely"}


def test_webdataset_keys_must_be_unique_across_tars(ray_session, tmp_path):
    for name in ("a.tar", "b.tar"):
        write_tar(tmp_path / name, {"same.jpg": image_bytes("JPEG", (1, 2, 3)), "same.txt": b"a caption"})
    with pytest.raises(InputError, match="key 'same' is in more than one shard"):
        run_pipeline(load_recipe("demo"), str(tmp_path / "*.tar"), tmp_path / "run")


@pytest.mark.slow
def test_raw_shards_of_another_layout_are_refused_not_mis_paired(served_corpus, ray_session, tmp_path):
    first = Path(run_pipeline(load_recipe("demo"), served_corpus.urls, tmp_path / "run1", until="acquire").run_dir)
    recipe = load_recipe("demo", ["acquire.samples_per_shard=50"])
    second = Path(run_pipeline(recipe, served_corpus.urls, tmp_path / "run2", until="acquire").run_dir)
    for path in (first / "raw").iterdir():  # another samples_per_shard: same shard and key names, other rows
        shutil.copy(path, second / "raw" / path.name)
    with pytest.raises(InputError, match=r"raw shard 00000 \(.*\): key '\d+'.*Use a new --output"):
        run_pipeline(recipe, served_corpus.urls, second)
    assert not (second / "decisions").exists()


@pytest.fixture(scope="module")
def acquired(served_corpus, ray_session, tmp_path_factory) -> Path:
    """A run of the demo corpus downloaded up to acquire (tests copy it before changing it)."""
    run = run_pipeline(load_recipe("demo"), served_corpus.urls, tmp_path_factory.mktemp("acq") / "run", until="acquire")
    return Path(run.run_dir)


def test_a_shard_swapped_with_another_is_refused(served_corpus, acquired, tmp_path, monkeypatch, capsys):
    raw = shutil.copytree(acquired, tmp_path / "run") / "raw"
    for suffix in (".tar", ".parquet"):
        (raw / f"00000{suffix}").rename(raw / f"swap{suffix}")
        (raw / f"00001{suffix}").rename(raw / f"00000{suffix}")
        (raw / f"swap{suffix}").rename(raw / f"00001{suffix}")
    argv = ["curate", "run", "demo", "--input", str(served_corpus.urls), "--output", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", [*argv, "--until", "annotate"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "is not an input row of this shard" in err and "Use a new --output" in err


def test_raw_records_of_other_urls_are_refused(served_corpus, acquired, tmp_path):
    """Same keys, other rows (e.g. the raw shards came from the same list in another order): the URLs differ."""
    raw = shutil.copytree(acquired, tmp_path / "run") / "raw"
    table = pq.read_table(raw / "00001.parquet")
    urls = table.column("url").to_pylist()
    urls[3], urls[4] = urls[4], urls[3]
    pq.write_table(
        table.set_column(table.column_names.index("url"), "url", pa.array(urls, pa.string())), raw / "00001.parquet"
    )
    with pytest.raises(
        InputError, match=r"raw shard 00001 .*: key '\d+' has url '.*' in the shard but '.*' in the input"
    ):
        run_pipeline(load_recipe("demo"), served_corpus.urls, tmp_path / "run", until="annotate")


@pytest.mark.slow
@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_a_folder_written_by_img2dataset_itself(output_format, ray_session, tmp_path):
    """img2dataset's own download() (its downloader and writers), then curate on its folder: no request."""
    from img2dataset import download

    from curate.demo.corpus import build_corpus
    from curate.demo.server import LoopbackServer, write_url_list

    objects, rows = build_corpus(n_clean=40, seed=1, slow_delay_s=1.0)
    folder = tmp_path / "out"
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp_path / "urls.parquet")
        download(
            url_list=str(urls),
            input_format="parquet",
            caption_col="caption",
            output_format=output_format,
            output_folder=str(folder),
            processes_count=1,
            thread_count=8,
            number_sample_per_shard=50,
            resize_mode="no",
            timeout=3,
            retries=0,
            distributor="multiprocessing",
            enable_wandb=False,
            disallowed_header_directives=[],
        )
        hits = sum(server.hits.values())
        run = Path(run_pipeline(load_recipe("demo"), folder, tmp_path / "run").run_dir)
        assert sum(server.hits.values()) == hits
    listed = pq.read_table(urls, columns=["url", "caption"]).to_pylist()
    raw = [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p, columns=["key", "status"]).to_pylist()]
    got = pq.read_table(run / "decisions").to_pylist()
    assert sorted(r["key"] for r in got) == sorted(r["key"] for r in raw) and len(got) == len(listed)
    pairs = {(r["url"], r["caption"]) for r in listed}
    assert all((r["url"], r["caption"]) in pairs for r in got)  # every key keeps its own URL and caption
    status = {r["key"]: r["status"] for r in raw}
    for r in got:
        if status[r["key"]] == "failed_to_download":
            assert r["reason"] in ("download_error", "bad_url")
        if status[r["key"]] == "failed_to_resize":
            assert r["reason"] == "decode_error"
    assert any(r["keep"] for r in got)
