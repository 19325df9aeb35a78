"""memos git-setup and memos merge-driver: cubes that merge cleanly in git."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memos_cli.cli.options import JsonOpt
from memos_cli.cli.output import emit_json, say


def git_setup(
    directory: Annotated[Path, typer.Argument(help="A folder inside a git repository (default: here).")] = Path("."),
    json_: JsonOpt = False,
) -> None:
    """Make a git repository merge cubes cleanly: writes .gitattributes (cube.yaml, memories.jsonl and
    audit.jsonl use the memos merge driver; *.safetensors are binary) and registers the driver in the repository's
    git config. Run it once per clone (git does not copy config).

    Example:  cd team-memory && git init && memos git-setup
    """
    from memos_cli.engine.gitrepo import git_setup as run_setup

    info = run_setup(directory)
    if json_:
        emit_json(info)
    else:
        say(f"wrote {info['attributes']}; registered the memos merge driver in {info['repository']}")
        say("commit .gitattributes so that every clone knows which files the driver merges")


def merge_driver(
    ancestor: Annotated[Path, typer.Argument(help="%O: the common ancestor's version.")],
    ours: Annotated[Path, typer.Argument(help="%A: our version; the result is written here.")],
    theirs: Annotated[Path, typer.Argument(help="%B: their version.")],
    name: Annotated[str, typer.Argument(help="%P: the path in the repository.")] = "memories.jsonl",
) -> None:
    """Merge concurrent changes to a cube's cube.yaml, memories.jsonl or audit.jsonl (called by git, see
    git-setup): every version of both sides is kept; a memory edited on both sides is merged field by
    field against the common ancestor, a field changed two ways is kept both ways and reported (memos
    conflicts); one active memory per key remains. cube.yaml merges key by key. Nothing is lost."""
    from memos_cli.engine.gitrepo import merge_driver as run_driver

    run_driver(ancestor, ours, theirs, name)
