"""Annotate stages: per-sample signals computed in one streaming pass over the images."""
