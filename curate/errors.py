"""The user-error hierarchy: problems the user fixes (a recipe, an input, a preset), not bugs.

The CLI catches :class:`UserError` and prints one line (file, place, fix) with exit status 2;
anything else is a bug and keeps its traceback. Each area subclasses it (``RecipeError``,
``InputError``, ...) so library callers can catch one type or a precise one.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem in what the user gave curate; the message names where it is and how to fix it."""
