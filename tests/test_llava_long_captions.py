"""LLaVA export and preset fit each other: long web captions are not repeated in follow-ups, an export of
400-character alt texts trains with llava-tiny, and records that cannot fit are listed before step 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LLAVA_TINY_TEST

from curate import runtime
from curate.demo.synthetic import synthetic_run
from curate.emit.llava import CONVERSATION_BYTES, QUOTE_CHARS, llava_records, text_bytes
from curate.emit.run import emit
from curate.emit.shards import EmitConfig
from curate.models.llava import load_tokenizer
from curate.train.llava import LlavaTrainConfig, train_llava
from curate.train.llava_data import RecordsTooLong, check_files

SHORT = {**LLAVA_TINY_TEST, "stage1.steps": 3, "stage2.steps": 3, "stage1.batch_size": 4, "stage2.batch_size": 4}
"""llava-tiny, shortened further: the point is that every record fits, not what the model learns."""


def long_caption(i: int, chars: int = 400) -> str:
    """A web alt text of ``chars`` characters, different for every ``i``."""
    text = f"picture {i} " + "of a small coloured tile photographed for a product page on a shopping site " * 20
    return text[:chars].strip()


def pairs(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    return [(q["value"], a["value"]) for q, a in zip(turns[::2], turns[1::2], strict=True)]


def test_a_long_caption_is_said_once_and_short_ones_keep_two_follow_ups():
    rows = [
        {"key": f"{i:03d}", "caption": long_caption(i), "caption_alt": long_caption(i + 100), "width": 8, "height": 6}
        for i in range(40)
    ]
    rows += [{"key": "short", "caption": "a red tile", "caption_alt": "tile", "width": 8, "height": 6}]
    pretrain, instruct = llava_records(rows, "00000")
    assert (pretrain, instruct) == llava_records(rows, "00000"), "deterministic"
    for record in instruct[:-1]:
        turns = pairs(record)
        assert text_bytes(turns) <= max(CONVERSATION_BYTES, text_bytes(turns[:1]))
        for question, _ in turns[1:]:
            if question.startswith("Does this caption fit"):
                assert len(question.split('"')[1]) <= QUOTE_CHARS
    assert len(pairs(instruct[-1])) == 3, "a short caption still gets two follow-ups"
    asked = {q.split(":")[0] for record in instruct[:-1] for q, _ in pairs(record)[1:]}
    assert "Does this caption fit the image" in asked, "long captions keep the yes/no turn, quoted shortly"


@pytest.fixture(scope="module")
def long_export(ray_session, tmp_path_factory) -> Path:
    """curate's own LLaVA export of 32 samples whose captions are 400-character alt texts."""
    run = tmp_path_factory.mktemp("long") / "run"
    synthetic_run(run, 32, 2, keep_every=1)
    for path in (run / "samples").glob("*.parquet"):
        table = pq.read_table(path)
        captions = pa.array([long_caption(int(k)) for k in table.column("key").to_pylist()], pa.string())
        pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", captions), path)
    with runtime.session(num_cpus=2):
        emit(str(run), EmitConfig(samples_per_shard=16, llava=True), "alt", {}, {})
    return run / "llava"


def test_an_export_of_400_character_alt_texts_trains_with_llava_tiny(long_export, tmp_path):
    cfg = LlavaTrainConfig.from_yaml("llava-tiny", SHORT)
    tokenizer = load_tokenizer(cfg.lm)
    files = [long_export / "pretrain.json", long_export / "instruct.json"]
    with pytest.raises(RecordsTooLong):
        check_files(files, tokenizer, 64, 512, drop=False)  # the old max_length: these records did not fit
    summary = train_llava(cfg, long_export, tmp_path / "model")
    assert [summary[s]["step"] for s in ("stage1", "stage2")] == [3, 3]
    assert summary["stage1"]["dropped_too_long"] == summary["stage2"]["dropped_too_long"] == 0
    assert (tmp_path / "model" / "stage2" / "llava.json").is_file()


def with_records_too_long(export: Path, folder: Path, chars: int = 1500) -> Path:
    """A copy of ``export`` whose first record of each file has a ``chars``-character caption."""
    folder.mkdir()
    for name in ("pretrain.json", "instruct.json"):
        records = json.loads((export / name).read_text())
        records[0]["conversations"][1]["value"] = long_caption(0, chars)
        (folder / name).write_text(json.dumps(records))
    (folder / "images").symlink_to(export / "images")
    return folder


def test_a_record_that_cannot_fit_is_reported_before_step_one(long_export, tmp_path):
    data = with_records_too_long(long_export, tmp_path / "data")
    first = json.loads((data / "pretrain.json").read_text())[0]["id"]
    cmd = [sys.executable, "-m", "curate", "train", "llava", "--config", "llava-tiny", "--data", str(data)]
    cmd += ["--output", str(tmp_path / "model"), "--set", "stage1.steps=2", "--set", "stage2.steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    for name in ("pretrain.json", "instruct.json"):
        assert f"{name}: 1 of 32 records exceed max_length=1024" in message
    assert f"{first} (" in message and "too_long: drop" in message
    assert not (tmp_path / "model" / "stage1" / "log.jsonl").exists(), "nothing trained"


def test_too_long_drop_trains_without_them_and_counts_them(long_export, tmp_path):
    data = with_records_too_long(long_export, tmp_path / "data")
    cfg = LlavaTrainConfig.from_yaml("llava-tiny", {**SHORT, "too_long": "drop"})
    summary = train_llava(cfg, data, tmp_path / "model")
    assert summary["stage1"]["dropped_too_long"] == summary["stage2"]["dropped_too_long"] == 1
    assert summary["stage2"]["step"] == 3
