"""curate: data curation for image-text datasets, from the shell (``curate run``) or from Python.

    import curate

    recipe = curate.Recipe(
        annotate=[curate.stages.ImageSignals(batch_size=64), curate.stages.CaptionSignals()],
        decide=[curate.policies.ImageSize(min_side=64)],
    )
    result = curate.run(recipe, input=table, output="runs/one")  # a path, a list, a Table, a DataFrame, a Ray Dataset
    with curate.open_run(result.run_dir) as run:
        run.decisions.filter("NOT keep").to_arrow_table()
    curate.decide(result.run_dir, overrides=["decide.image_size.min_side=128"])

Names load on first use, so ``import curate`` pulls in neither Ray nor torch. ``curate.run`` and
``curate.decide`` are also the engine's modules (:mod:`curate.run`, :mod:`curate.decide`): calling them
calls :func:`curate.api.run` and :func:`curate.api.decide`.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "Recipe",
    "RecipeError",
    "Run",
    "RunResult",
    "UserError",
    "__version__",
    "decide",
    "for_webdataset",
    "open_run",
    "policies",
    "run",
    "stages",
]

_LAZY = {
    "InputError": "curate.acquire.inputs",
    "Recipe": "curate.recipe",
    "RecipeError": "curate.errors",
    "Run": "curate.api",
    "RunResult": "curate.run",
    "UserError": "curate.errors",
    "for_webdataset": "curate.api",
    "open_run": "curate.api",
}
"""Public names and the module that defines each, imported on first use."""

_MODULES = ("decide", "policies", "run", "stages")
"""Public names that are modules (``run`` and ``decide`` are callable, see :class:`VerbModule`)."""

if TYPE_CHECKING:
    from curate import policies, stages
    from curate.acquire.inputs import InputError
    from curate.api import Run, decide, for_webdataset, open_run, run
    from curate.errors import RecipeError, UserError
    from curate.recipe import Recipe
    from curate.run import RunResult


class VerbModule(types.ModuleType):
    """A module whose name is also an API verb: calling ``curate.run(...)`` calls :func:`curate.api.run`.

    Python sets ``curate.run`` to the submodule :mod:`curate.run` once it is imported (the engine imports
    it), replacing any function of that name, so the submodule itself answers the call.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        verb = getattr(importlib.import_module(f"{__name__}.api"), self.__name__.rpartition(".")[2])
        return verb(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
