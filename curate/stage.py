"""The annotate stage contract: a typed config, ``setup()`` once per worker, one batch method.

A stage never imports Ray; :mod:`curate.runtime` turns it into ``map_batches``. Tests call a
stage directly on a ``pyarrow.Table``.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curate import config as config_loader
from curate.errors import RecipeError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def make_config(model: type[ConfigT], config: ConfigT | None, params: dict[str, Any], where: str) -> ConfigT:
    """``config`` as given, else ``model(**params)`` validated as a recipe entry is (:func:`curate.config.validate`).

    Stages and policies built in Python (``ImageSize(min_side=64)``) fail as a recipe entry would: one
    :class:`curate.recipe.RecipeError` naming the parameter, with "did you mean" for a typo.
    """
    if config is None:
        return config_loader.validate(model, params, where, RecipeError)
    if params:
        raise TypeError(f"{where}: pass either a config object or keyword parameters, not both")
    if not isinstance(config, model):
        raise TypeError(f"{where}: config must be a {model.__name__}, got {type(config).__name__}")
    return config


class StageConfig(BaseModel):
    """Fields every stage accepts; stages subclass this with their own documented fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(256, gt=0, description="Rows per batch handed to the stage.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per task or actor.")
    num_gpus: float | None = Field(0.0, ge=0, description="GPUs per actor (fractional allowed).")
    actors: int = Field(1, ge=1, description="Actor pool size, for stages that load a model.")

    RESOURCE_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "num_cpus", "num_gpus", "actors")
    """Fields that change how fast a stage runs, never what it writes: they stay out of cache keys."""
    CACHE_EXEMPT: ClassVar[tuple[str, ...]] = ()
    """Other fields that do not change what the stage writes (read elsewhere, e.g. by emit)."""

    def cache_key(self) -> dict:
        """The settings stored results depend on: the config without resources and exempt fields.

        A change in any of these recomputes the stage; a change elsewhere (``batch_size``,
        ``actors``, ``num_cpus``, ``num_gpus``) reuses what is stored.
        """
        return self.model_dump(exclude={*self.RESOURCE_FIELDS, *self.CACHE_EXEMPT})


class ModelStageConfig(StageConfig):
    """Fields of stages that load a model into an actor pool: GPUs default to what the cluster has."""

    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor (fractional allowed); null: 1 when the cluster has GPUs, else 0."
    )


class Stage:
    """Base class: subclasses set ``name``, ``Config``, ``reads``, ``writes`` and ``process``.

    Build one from its config or from keyword parameters: ``ImageSignals(batch_size=64)``. Call it on a
    ``pyarrow.Table`` holding its ``reads`` columns to get the table with its ``writes`` appended.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    reads: tuple[str, ...] = ()
    """Columns the stage needs (a recipe checks that an earlier step writes them)."""
    optional_reads: ClassVar[tuple[str, ...]] = ()
    """Columns the stage uses when present and does without otherwise (e.g. img2dataset's ``original_width``)."""
    writes: ClassVar[dict[str, pa.DataType]] = {}
    optional_writes: ClassVar[dict[str, str]] = {}
    """Columns a config setting adds to ``writes`` -> that setting (``vocab_en`` -> ``vocab: true``), for fix-it messages."""
    uses_actors: ClassVar[bool] = False
    """True for stages that load a model: they run in an actor pool, set up once per actor."""
    has_prepare: ClassVar[bool] = False
    """True when ``prepare`` does CPU work (decode, resize) that runs as tasks before the actors."""
    transient: ClassVar[tuple[str, ...]] = ()
    """Attributes that ``setup``/``prepare`` load (models, automata): never pickled with the stage."""
    embedding_columns: ClassVar[tuple[str, ...]] = ()
    """Written columns that go to ``RUN/embeddings/`` (keyed by ``key``) instead of ``samples/``."""

    def __init__(self, config: StageConfig | None = None, **params: Any) -> None:
        self.config: Any = make_config(self.Config, config, params, f"{type(self).__name__} (stage {self.name!r})")
        self._ready = False

    def __getstate__(self) -> dict:
        """Ray pickles a stage to ship it to workers: its config goes, what ``setup`` loaded does not."""
        return {**self.__dict__, **dict.fromkeys(self.transient), "_ready": False}

    def check(self) -> None:
        """Fail fast, in the driver, before any work: e.g. a model that cannot be found or fetched."""

    def setup(self) -> None:
        """Load models or build lookup tables; called once per worker before the first batch."""

    def runs_prepare(self) -> bool:
        """Whether the runtime runs ``prepare`` as CPU tasks before ``process`` (``has_prepare``, unless
        the config moves that work into the actors)."""
        return self.has_prepare

    def prepare(self, batch: pa.Table) -> pa.Table:
        """CPU-side work for ``process`` (only when ``has_prepare``); returns ``batch`` plus columns."""
        return batch

    def process(self, batch: pa.Table) -> pa.Table:
        """Return ``batch`` with this stage's ``writes`` columns appended."""
        raise NotImplementedError

    def ensure_setup(self) -> None:
        """Call ``setup()`` unless it already ran in this process."""
        if not self._ready:
            self.setup()
            self._ready = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        out = self.process(batch)
        missing = [c for c in self.writes if c not in out.column_names]
        if missing:
            raise RuntimeError(f"stage {self.name!r} did not write columns {missing}")
        return out


def append_columns(batch: pa.Table, columns: dict, types: dict[str, pa.DataType]) -> pa.Table:
    """Append (or replace) columns given as Python sequences (typed by ``types``) or Arrow arrays."""
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=types[name])
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, array)
        else:
            batch = batch.append_column(name, array)
    return batch
