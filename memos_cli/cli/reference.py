"""The CLI reference (docs/CLI.md), generated from each command's ``--help``.

``python -m memos_cli.cli.reference > docs/CLI.md`` (or ``make docs``) writes it; a test checks that the
file on disk equals what the code prints, so the reference never drifts from the commands.
"""

from __future__ import annotations

from typing import Any

import typer
import typer.core

WIDTH = 100


def _context(command: Any, name: str, parent: typer.Context | None) -> typer.Context:
    # typer vendors its own click: its Context class, not click's, goes with its commands.
    return typer.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        help_option_names=["-h", "--help"],
    )


def render() -> str:
    """The whole reference as Markdown: the top-level help, then one section per command."""
    from memos_cli.cli.app import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    root = _context(group, "memos", None)
    parts = [
        "# memos command reference\n",
        "Generated from `--help` by `make docs` (`python -m memos_cli.cli.reference`); do not edit by hand.\n",
        "```text\n" + group.get_help(root) + "\n```\n",
    ]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        parts.append(f"## memos {name}\n")
        assert command is not None
        parts.append("```text\n" + command.get_help(_context(command, name, root)) + "\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
