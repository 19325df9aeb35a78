"""memos update and memos history: versions of a memory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, out, say

IdArg = Annotated[str, typer.Argument(help="A memory id (or a unique prefix).", show_default=False)]


def update(
    cube: CubeArg,
    memory_id: IdArg,
    text: Annotated[Optional[str], typer.Option("--text", help="New text.")] = None,
    type_: Annotated[Optional[str], typer.Option("--type", help="New type.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="New time (any date).")] = None,
    speaker: Annotated[Optional[str], typer.Option("--speaker", help="New speaker.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Add a tag (repeatable).")] = None,
    untag: Annotated[Optional[list[str]], typer.Option("--untag", help="Remove a tag (repeatable).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="New key (the subject it states).")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="active or archived.")] = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a memory: writes version n+1, never overwrites (see all versions with 'memos history').

    Example:  memos update notes m-6a3f --text "The beta opens on 21 March 2025." --tag moved
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.plaintext.versions import Update
    from memos_cli.engine.plaintext.versions import update as run_update

    change = Update(
        text=text, type=type_, time=time, speaker=speaker, add_tags=tag, remove_tags=untag, key=key, status=status
    )
    record = run_update(Cube.open(cube), memory_id, change, actor=as_)
    if json_:
        emit_json(record.to_dict())
    else:
        say(f"{record.id} is now version {record.version}")


def history(cube: CubeArg, memory_id: IdArg, json_: JsonOpt = False, as_: AsOpt = None) -> None:
    """Every version of a memory with its time, actor and operation, and the audit entries that name
    it (a purged memory's tombstone included).

    Example:  memos history notes m-6a3f
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.plaintext.versions import history as run_history

    full_id, versions, audit = run_history(Cube.open(cube), memory_id, actor=as_)
    if json_:
        emit_json({"id": full_id, "versions": [v.to_dict() for v in versions], "audit": audit})
        return
    from rich.markup import escape

    console = out()
    console.print(f"[bold]{full_id}[/]")
    for v in versions:
        snippet = v.text if len(v.text) <= 80 else v.text[:77] + "..."
        status = escape(f"[{v.status}]")
        console.print(f"  v{v.version}  {v.created}  {v.op:9} {v.actor or '?':10} {status}  {escape(snippet)}")
    if not versions:
        console.print("  (no versions left: purged)")
    for entry in audit:
        console.print(
            f"  [dim]{entry.get('time')} {entry.get('op')} by {entry.get('actor')}: {entry.get('summary')}[/]"
        )
