"""notebooks/explore.ipynb runs top to bottom against the session's demo run, so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_executes_top_to_bottom(curated_shards, monkeypatch, tmp_path):
    run_dir = curated_shards.parent
    monkeypatch.setenv("CURATE_RUN", str(run_dir))  # the kernel inherits the environment
    untouched = {p: p.stat().st_mtime_ns for p in (run_dir / "manifest.json", *run_dir.glob("decisions/*"))}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs)
    assert str(run_dir) in text and "min_side=256: kept" in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 4  # distributions, samples, what-if
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # re-decided a copy, not the run
