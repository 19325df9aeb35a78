"""memos log: the audit log of a cube."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonlOpt, JsonOpt
from memos_cli.cli.output import check_exclusive, emit_json, emit_jsonl, out


def log(
    cube: CubeArg,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Only the last N entries.")] = None,
    op: Annotated[Optional[str], typer.Option("--op", help="Only this operation (ingest, forget, purge, ...).")] = None,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
    as_: AsOpt = None,
) -> None:
    """Show who did what to which memories, and when (audit.jsonl, append-only).

    Example:  memos log notes -n 10 --op purge
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.governance import audit_log

    check_exclusive(json=json_, jsonl=jsonl)
    entries = audit_log(Cube.open(cube), actor=as_, limit=limit, op=op)
    if json_:
        emit_json({"entries": entries})
        return
    if jsonl:
        emit_jsonl(entries)
        return
    console = out()
    for e in entries:
        ids = e.get("ids") or []
        shown = ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        console.print(
            f"{e.get('time', '?')}  {e.get('actor') or '?':10} {e.get('op', '?'):8} {e.get('summary', '')}"
            + (f"  [dim]{shown}[/]" if shown else "")
        )
