"""curate: data curation for image-text datasets."""

__version__ = "0.1.0"
