"""The README's CLI overview is checked against the real click group."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cellwatch.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def leaf_commands(group: click.Group, prefix: str = "cellwatch") -> dict[str, str]:
    found: dict[str, str] = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, path))
        else:
            found[path] = command.get_short_help_str(limit=200)
    return found


def readme_commands() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## CLI overview", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(cellwatch[^`]*)` \| (.+?) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_readme_lists_every_command_with_its_help() -> None:
    assert readme_commands() == leaf_commands(main), (
        "README.md's CLI overview differs from `cellwatch --help`; update its table")


def test_readme_starts_with_the_two_command_quick_start() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make \w+", quick, flags=re.MULTILINE) == ["make demo", "make test"]
