"""The README documents what the code does: every reason code, the two commands first."""

from __future__ import annotations

from pathlib import Path

from curate.reasons import REASONS

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_lists_every_reason_code():
    missing = [code for code in REASONS if f"| `{code}` |" not in README]
    assert not missing, f"add {missing} to the README's reason table"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
