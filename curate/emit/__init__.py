"""Emit: curated shards (WebDataset tars + Parquet metadata) from the kept rows."""
