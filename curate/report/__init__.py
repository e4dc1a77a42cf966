"""Inspect a run: DuckDB views and canned queries, the funnel."""
