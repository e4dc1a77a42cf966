"""The user-error hierarchy: problems the user fixes (a recipe, an input, a preset), not bugs.

The CLI catches :class:`UserError` and prints one line (file, place, fix) with exit status 2;
anything else is a bug and keeps its traceback. Each area subclasses it (``RecipeError``,
``InputError``, ...) so library callers can catch one type or a precise one::

    UserError
    ├── ConfigError           a YAML file or --set (curate.config)
    │   ├── RecipeError       (curate.recipe)
    │   ├── PresetError       a trainer preset
    │   └── EvalError         an eval spec, a zero-shot task, or data an evaluation cannot run on
    ├── InputError            inputs and run directories (curate.acquire.inputs)
    │   └── RunLocked, LlavaDataError, ...
    ├── NotInRun              a query needs data the run lacks (curate.report.stats)
    ├── CalibrationError      a run or trusted set `curate calibrate` cannot use (curate.calibrate)
    └── NotFound              a named file or folder is missing (also a FileNotFoundError)
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem in what the user gave curate; the message names where it is and how to fix it."""


class ConfigError(UserError):
    """A config file (or a ``--set``) that does not read, override or validate."""


class RecipeError(ConfigError):
    """A recipe problem, phrased as what is wrong and how to fix it (raised by :mod:`curate.recipe`, and by
    stages and policies built from keyword parameters)."""


class PresetError(ConfigError):
    """A trainer preset (``curate train clip|llava --config``) that is missing or invalid."""


class EvalError(ConfigError):
    """An eval spec, a zero-shot task, or an input an evaluation cannot run on, phrased with the fix."""


class CalibrationError(UserError):
    """A run, or a trusted set given to ``curate calibrate``, that calibration cannot use; the message names the
    file or key and what to do."""


class NotFound(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (still a ``FileNotFoundError`` for callers)."""
