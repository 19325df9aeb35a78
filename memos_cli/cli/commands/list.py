"""memos list: the memories of a cube, filtered."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import (
    AsOpt,
    CubeArg,
    JsonlOpt,
    JsonOpt,
    SinceOpt,
    SpeakerOpt,
    StatusOpt,
    TagOpt,
    TypeOpt,
    UntilOpt,
    filters_from,
)
from memos_cli.cli.output import check_exclusive, emit_json, emit_jsonl, out, say


def list_(
    cube: CubeArg,
    tag: TagOpt = None,
    type_: TypeOpt = None,
    speaker: SpeakerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = "active",
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="At most this many (1 or more).")] = None,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
    as_: AsOpt = None,
) -> None:
    """List memories (current versions), oldest first.

    Examples:
      memos list notes --tag work -n 20
      memos list notes --status archived --jsonl | jq .id
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.ops import list_memories

    check_exclusive(json=json_, jsonl=jsonl)
    filters = filters_from(tag, type_, speaker, since, until, status)
    records = list_memories(Cube.open(cube), filters, limit=limit, actor=as_)
    if json_:
        emit_json({"memories": [r.to_dict() for r in records]})
        return
    if jsonl:
        emit_jsonl(r.to_dict() for r in records)
        return
    if not records:
        say("no memories match")
        return
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    for column in ("id", "v", "when", "type", "who", "text"):
        # ids never wrap (they are copied into other commands); the text takes what width is left
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "v", "when"), min_width=None)
    for r in records:
        text = r.text if len(r.text) <= 100 else r.text[:97] + "..."
        table.add_row(r.id, str(r.version), (r.time or "")[:10], r.type, r.speaker or "", text)
    out().print(table)
    say(f"{len(records)} {'memory' if len(records) == 1 else 'memories'}")
