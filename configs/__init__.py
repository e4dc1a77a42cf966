"""Bundled configs (train presets, model JSONs, eval tasks, cluster configs): this folder ships inside the wheel
as the package ``curate.configs`` (see curate/resources.py)."""
