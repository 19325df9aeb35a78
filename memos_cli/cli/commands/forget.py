"""memos forget: archive memories (kept, out of queries), or purge them."""

from __future__ import annotations

from typing import Annotated

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt, YesOpt
from memos_cli.cli.output import confirm, emit_json, say
from memos_cli.words import plural


def forget(
    cube: CubeArg,
    ids: Annotated[list[str], typer.Argument(help="Memory ids (or unique prefixes).", show_default=False)],
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Delete every version for good (asks first; the audit log keeps a tombstone)."),
    ] = False,
    yes: YesOpt = False,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Archive memories: a new version marked archived, out of default queries, still in history.

    --purge deletes all their versions from memories.jsonl instead (after confirmation, or --yes).

    Examples:
      memos forget notes m-3f2a1c
      memos forget notes m-3f2a1c --purge --yes
    """
    from memos_cli.config import actor
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.ops import forget as run_forget

    opened = Cube.open(cube)
    if purge:
        confirm(f"permanently delete {plural(len(ids), 'memory')} and all their versions from {cube}?", yes)
    report = run_forget(opened, ids, purge=purge, actor=actor(as_))
    if json_:
        emit_json(report.to_dict())
    if report.purged:
        say(f"purged {plural(len(report.purged), 'memory')}")
    if report.archived:
        say(f"archived {plural(len(report.archived), 'memory')}")
    if report.unchanged:
        say(f"{len(report.unchanged)} already archived")
