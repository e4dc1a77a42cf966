"""The Python front door (``import curate``): run, re-decide and open runs from a notebook or a script.

A thin layer over the engine the CLI uses (:mod:`curate.run`, :mod:`curate.report.stats`); it never imports
Ray itself. In-memory inputs (a ``pyarrow.Table``, a ``pandas.DataFrame`` or a Ray ``Dataset`` with ``url``
and ``caption`` columns) are written once as a Parquet URL list into ``RUN/input_table/`` and then run
exactly as ``curate run --input RUN/input_table`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curate import storage
from curate.recipe import Recipe
from curate.stage import Stage

if TYPE_CHECKING:
    from typing import TypeAlias

    import duckdb
    import pandas
    import pyarrow.dataset as ds
    import ray.data

    from curate.run import RunResult

    RunInput: TypeAlias = str | Path | Sequence[str | Path] | pa.Table | pandas.DataFrame | ray.data.Dataset
    """What :func:`run` reads: a URL list, img2dataset folder or tars (path, URL, glob, list), or a table."""

INPUT_TABLE = "input_table"
"""``RUN/input_table/``: where :func:`run` writes an in-memory input as a Parquet URL list."""

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""WebDataset members that hold the encoded image (the first one present in a row is used)."""


def run(
    recipe: Recipe | str | Path,
    input: RunInput,
    output: str | Path,
    *,
    overrides: Sequence[str] = (),
    address: str | None = None,
    until: str = "emit",
    retry_failed: Sequence[str] | None = None,
) -> RunResult:
    """Run ``recipe`` (a :class:`Recipe`, a bundled recipe's name or a YAML path) on ``input`` into ``output``.

    ``input``: a URL list path or URL, a list of them, an img2dataset folder or WebDataset tars (as
    ``curate run --input``), or an in-memory table with ``url`` and ``caption`` columns: a
    ``pyarrow.Table``, a ``pandas.DataFrame`` or a Ray ``Dataset`` (written to ``RUN/input_table/``
    first, a Ray Dataset by Ray itself). ``overrides`` are ``--set`` items for a recipe given by name or
    path; ``address`` joins a Ray cluster; ``until`` stops after a step. Returns the run's
    :class:`curate.run.RunResult` (``run_dir``, ``funnel``, ``manifest``).
    """
    from curate.run import run_pipeline

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe, list(overrides))
    elif overrides:
        raise TypeError("overrides apply to a recipe given by name or path; change a Recipe object directly")
    run_dir = absolute(output)
    storage.configure(recipe.storage_options)  # the run directory may be on object storage
    if is_in_memory(input):
        source: Any = write_input(input, run_dir)
    else:
        source = absolute(input) if isinstance(input, str | Path) else [absolute(p) for p in input]
    return run_pipeline(recipe, source, run_dir, address=address, until=until, retry_failed=retry_failed)


def decide(run_dir: str | Path, overrides: Sequence[str] = (), *, address: str | None = None) -> RunResult:
    """Re-decide a finished run from its stored signals with ``--set`` style ``overrides`` (``curate decide``)."""
    from curate.run import redecide

    return redecide(absolute(run_dir), list(overrides), address)


def absolute(path: str | Path) -> str:
    """A local path made absolute (Ray's workers may run in another directory); a URL as it is."""
    return str(Path(storage.local_path(path)).resolve()) if storage.is_local(path) else str(path)


def is_in_memory(data: Any) -> bool:
    """True for the table types :func:`run` writes to ``RUN/input_table/`` itself."""
    return isinstance(data, pa.Table) or _is_dataframe(data) or _is_ray_dataset(data)


def _is_dataframe(data: Any) -> bool:
    return type(data).__module__.startswith("pandas.") and type(data).__name__ == "DataFrame"


def _is_ray_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("ray.data") and hasattr(data, "write_parquet")


def write_input(data: Any, run_dir: str) -> str:
    """Write an in-memory input as ``RUN/input_table/`` and return that folder.

    Written under the run's writer lock, in a folder that is (or becomes) a curate run, so ``run_pipeline``
    accepts it. A table equal to the one stored resumes the run; a different one is refused before anything
    is replaced. A Ray Dataset is written again each time (its rows and their order decide whether the
    run's input fingerprint still matches).
    """
    from curate.acquire.inputs import InputError
    from curate.lock import RunLock
    from curate.manifest import Manifest
    from curate.run import prepare_run_dir

    prepare_run_dir(run_dir)
    folder = storage.join(run_dir, INPUT_TABLE)
    with RunLock(run_dir):
        if not storage.isfile(storage.join(run_dir, "manifest.json")):
            Manifest(run_dir).save()  # the folder is now a curate run: run_pipeline resumes it, never refuses it
        if _is_ray_dataset(data):
            from curate import runtime

            storage.rm(folder)
            runtime.write_parquet(data, folder)
            return folder
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        stored = storage.files(folder)
        if stored and _read(stored).equals(table):
            return folder
        if stored:
            raise InputError(f"{run_dir} was made from a different input table. Use a new output, or delete {run_dir}.")
        from curate.emit.parquet import write_parquet

        storage.makedirs(folder)
        write_parquet(storage.join(folder, "part-00000.parquet"), table)
    return folder


def _read(files: list[str]) -> pa.Table:
    import pyarrow.parquet as pq

    fsys, paths = storage.arrow_paths(files)
    return pa.concat_tables([pq.read_table(p, filesystem=fsys) for p in paths])


@dataclass
class Run:
    """An open run directory: DuckDB relations over its tables, its manifest and its funnel.

    ``samples`` (signals per row), ``decisions`` (keep, reason per row) and ``kept`` (the emitted
    metadata) are DuckDB relations: call ``.to_arrow_table()``, ``.df()`` or ``.filter(...)`` on them, or
    :meth:`sql` over the same names. ``embeddings`` is a ``pyarrow.dataset.Dataset`` (DuckDB reads no
    float16). Close it (or use ``with``) to release the connection.
    """

    path: str
    con: duckdb.DuckDBPyConnection = field(repr=False)

    @property
    def samples(self) -> duckdb.DuckDBPyRelation:
        return self._view("samples")

    @property
    def decisions(self) -> duckdb.DuckDBPyRelation:
        return self._view("decisions")

    @property
    def kept(self) -> duckdb.DuckDBPyRelation:
        return self._view("kept")

    @property
    def embeddings(self) -> ds.Dataset:
        import pyarrow.dataset as ds

        fsys, files = storage.arrow_paths(storage.files(storage.join(self.path, "embeddings")))
        if not files:
            raise LookupError(f"{self.path}: no embeddings (no annotate stage of this run computes any)")
        return ds.dataset(files, format="parquet", filesystem=fsys)

    @property
    def manifest(self) -> dict[str, Any]:
        """``RUN/manifest.json``: the resolved recipe, the steps and their counts, the funnel."""
        from curate.manifest import Manifest

        return Manifest(self.path).data

    def funnel(self) -> dict[str, Any]:
        """Input → downloaded → decoded → kept, and rejected counts per reason (as ``curate stats``)."""
        from curate.report.stats import funnel

        return funnel(self.path)

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB query over the views ``samples``, ``decisions`` and ``kept``."""
        return self.con.sql(query)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _view(self, name: str) -> duckdb.DuckDBPyRelation:
        try:
            return self.con.table(name)
        except Exception as err:  # duckdb.CatalogException: the step that writes it has not run
            raise LookupError(f"{self.path}: no {name} table (has the run reached that step?)") from err


def open_run(run_dir: str | Path) -> Run:
    """Open a run directory for reading (read-only DuckDB views over its Parquet, as ``curate stats``)."""
    from curate.report.stats import connect
    from curate.run import is_run

    if not is_run(run_dir):
        from curate.acquire.inputs import InputError

        raise InputError(f"{run_dir}: not a curate run directory (no manifest.json)")
    return Run(str(run_dir), connect(run_dir))


class WebDatasetStage:
    """A stage as a ``map_batches`` function over ``ray.data.read_webdataset`` rows (``batch_format="pyarrow"``).

    WebDataset rows (read with ``decoder=None``) carry ``__key__``, the image under its extension (``jpg``, ``jpeg``, ``png``, ``webp``),
    ``txt`` and img2dataset's ``json``. Each batch gets the columns stages read: ``image`` (the encoded
    bytes, replacing the extension columns), ``caption`` (``txt`` as text) and, from ``json`` when present,
    ``original_width``/``original_height``; then the stage appends its columns.
    """

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = webdataset_columns(batch)
        missing = [c for c in self.stage.reads if c not in batch.column_names]
        if missing:
            raise KeyError(f"stage {self.stage.name!r} reads {missing}; the WebDataset rows have {batch.column_names}")
        return self.stage(batch)


def for_webdataset(stage: Stage) -> Callable[[pa.Table], pa.Table]:
    """``stage`` as a function for ``map_batches(fn, batch_format="pyarrow")`` over WebDataset rows.

    Read the shards with ``ray.data.read_webdataset(paths, decoder=None)``: stages measure the encoded image
    (format, bytes), which Ray's default decoder replaces with pixel arrays.
    """
    return WebDatasetStage(stage)


def webdataset_columns(batch: pa.Table) -> pa.Table:
    """WebDataset members (``jpg``/``png``/``webp``, ``txt``, ``json``) as the columns stages read."""
    images = [c for c in IMAGE_EXTENSIONS if c in batch.column_names]
    for name in images:
        kind = batch.schema.field(name).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
            raise TypeError(
                f"WebDataset member {name!r} is decoded ({kind}): stages measure the encoded bytes. "
                "Read with ray.data.read_webdataset(..., decoder=None)."
            )
    if images and "image" not in batch.column_names:
        rows = zip(*(batch.column(c).to_pylist() for c in images), strict=True)
        image = pa.array([next((v for v in row if v is not None), None) for row in rows], pa.binary())
        batch = batch.drop_columns(images).append_column("image", image)
    if "txt" in batch.column_names and "caption" not in batch.column_names:
        batch = batch.append_column("caption", pa.array([_text(v) for v in batch.column("txt").to_pylist()]))
    if "json" in batch.column_names:
        meta = [_json(v) for v in batch.column("json").to_pylist()]
        for name in ("original_width", "original_height"):
            if name not in batch.column_names:
                batch = batch.append_column(name, pa.array([m.get(name) for m in meta], pa.int32()))
    return batch


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _json(value: Any) -> dict[str, Any]:
    """A row's ``json`` member: bytes, text or already decoded (Ray's default decoder)."""
    import json

    if isinstance(value, bytes | str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}
