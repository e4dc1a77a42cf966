"""Bundled recipes: this folder ships inside the wheel as the package ``curate.pipelines`` (see curate/resources.py)."""
