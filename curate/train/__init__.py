"""Bundled trainers and evaluation that train on curate output (WebDataset shards)."""
