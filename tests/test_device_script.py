"""benchmarks/device.sh, the prepared GPU measurement, dry-run on CPU at tiny sizes so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_script_dry_run_measures_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device.sh"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "device.json").read_text())
    assert summary["dry_run"] is True
    parts = summary["parts"]
    assert {name: p["exit_status"] for name, p in parts.items()} == {"clip_stage": 0, "recaption": 0, "train_clip": 0}
    clip_rows = parts["clip_stage"]["result"]["rows"]
    assert {r["decode"] for r in clip_rows} == {"cpu", "device"}
    assert all(r["ray_images_per_s"] > 0 and r["decoder"] == "pillow" for r in clip_rows)  # no GPU decoder here
    assert parts["recaption"]["result"]["rows"][0]["ray_captions_per_s"] > 0
    train = parts["train_clip"]["result"]
    assert train["ratio"] > 0 and {r["tool"] for r in train["runs"]} == {"curate", "open_clip"}
