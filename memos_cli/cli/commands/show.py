"""memos show: one memory, with its versions, uses and where it is promoted."""

from __future__ import annotations

from typing import Annotated

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, out


def show(
    cube: CubeArg,
    memory_id: Annotated[str, typer.Argument(help="A memory id (or a unique prefix of one).", show_default=False)],
    json_: JsonOpt = False,
    as_: AsOpt = None,
) -> None:
    """Show one memory: every field, its version history, how often it was used.

    Example:  memos show notes m-3f2a
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.ops import show as run_show

    detail = run_show(Cube.open(cube), memory_id, actor=as_)
    if json_:
        emit_json(detail.to_dict())
        return
    from rich.markup import escape

    r = detail.current
    console = out()
    console.print(f"[bold]{escape(r.id)}[/] v{r.version} {escape('[' + r.status + ']')} {escape(r.type)}")
    console.print(r.text, markup=False)
    fields = {
        "time": r.time,
        "speaker": r.speaker,
        "tags": ", ".join(r.tags) or None,
        "key": r.key,
        "source": f"{r.source}"
        + (f" ({r.source_id})" if r.source_id else "")
        + (f" lines {r.span[0]}-{r.span[1]}" if r.span else "")
        if r.source
        else None,
        "created": r.created,
        "supersedes": r.supersedes,
        "uses": str(detail.uses),
        "kv snapshots": ", ".join(detail.in_kv) or None,
        "adapters": ", ".join(detail.in_lora) or None,
    }
    for name, value in fields.items():
        if value:
            console.print(f"  [dim]{name}:[/] {escape(value)}")
    if len(detail.history) > 1:
        console.print("  [dim]history:[/]")
        for v in detail.history:
            console.print(
                f"    v{v.version} {v.created} {v.op} by {escape(v.actor or '?')} {escape('[' + v.status + ']')}"
            )
