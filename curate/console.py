"""The terminal side of the CLI: the stderr console for messages, and results printed as a table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
"""Messages, progress and errors go to stderr; results (:func:`print_rows`) go to stdout."""


def print_rows(columns: list[str], rows: list, fmt: str) -> None:
    """Print rows as a rich table, CSV or JSON lines."""
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "table":
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)
    else:
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")
