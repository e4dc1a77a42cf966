"""``RUN/manifest.json``: the recipe, versions, and the status, time and counts of every step.

Rewritten atomically whenever a step starts or ends, so ``cat manifest.json`` shows where a
running or interrupted run stands.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from curate import storage
from curate.io import write_json

STEPS = ("acquire", "annotate", "decide", "enrich", "emit")
"""The steps of a run in order, as ``curate run --until`` names them; every run that decides also
writes the report (step ``report``)."""

TRACKED_PACKAGES = ("curate", "ray", "img2dataset", "pyarrow", "duckdb", "pillow", "webdataset")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the output."""
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class Manifest:
    """The run's manifest, loaded from disk when present."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = storage.join(run_dir, "manifest.json")
        self.data: dict[str, Any] = storage.read_json(self.path) if storage.isfile(self.path) else {}
        self.data.setdefault("steps", {})

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    def save(self) -> None:
        self.data["updated"] = _now()
        write_json(self.path, self.data)

    @contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Record a step: ``running`` on entry, ``done`` or ``failed`` (with the error) on exit."""
        previous = self.steps.get(name, {})
        record = {
            "status": "running",
            "started": _now(),
            "executions": previous.get("executions", 0) + 1,
        }
        record.update(fields)
        self.steps[name] = record
        self.save()
        start = time.perf_counter()
        try:
            yield record
        except BaseException as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}"[:1000])
            raise
        else:
            record["status"] = "done"
        finally:
            record["seconds"] = round(time.perf_counter() - start, 3)
            record["finished"] = _now()
            self.save()

    def done(self, name: str, **expected: Any) -> bool:
        """True when step ``name`` finished and its recorded fields equal ``expected``."""
        record = self.steps.get(name, {})
        return record.get("status") == "done" and all(record.get(k) == v for k, v in expected.items())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
