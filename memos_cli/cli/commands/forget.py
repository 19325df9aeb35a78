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
    drop_adapters: Annotated[
        bool,
        typer.Option("--drop-adapters", help="With --purge: also remove the LoRA adapters trained on them."),
    ] = False,
    yes: YesOpt = False,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Archive memories: a new version marked archived, out of default queries, still in history.

    --purge deletes all their versions from memories.jsonl instead (after confirmation, or --yes), and
    their text from every file memos wrote: the index, the usage log, and the KV snapshots that hold
    them (dropped; make new ones with promote). Adapters trained on them are named; --drop-adapters
    removes them too. The audit log keeps a tombstone: the ids and how many versions, not the text.

    Examples:
      memos forget notes m-3f2a1c
      memos forget notes m-3f2a1c --purge --yes
      memos forget notes m-3f2a1c --purge --yes --drop-adapters
    """
    from memos_cli.config import actor
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.ops import forget as run_forget

    opened = Cube.open(cube)
    if purge:
        confirm(f"permanently delete {plural(len(ids), 'memory')} and all their versions from {cube}?", yes)
    if drop_adapters and not purge:
        from memos_cli.errors import UsageError

        raise UsageError("--drop-adapters goes with --purge")
    report = run_forget(opened, ids, purge=purge, drop_adapters=drop_adapters, actor=actor(as_))
    if json_:
        emit_json(report.to_dict())
    if report.purged:
        say(f"purged {plural(len(report.purged), 'memory')} (and their text from the index and usage log)")
    for name in report.kv_dropped:
        say(f"dropped KV snapshot {name}: it held a purged memory (make a new one with: memos promote)")
    for name in report.adapters:
        if report.adapters_dropped:
            say(f"dropped adapter {name}: it was trained on a purged memory")
        else:
            say(
                f"adapter {name} was trained on a purged memory and may still hold what it learned; "
                f"drop it with: memos distill {cube} --drop {name} (or purge with --drop-adapters)"
            )
    if report.archived:
        say(f"archived {plural(len(report.archived), 'memory')}")
    if report.unchanged:
        say(f"{len(report.unchanged)} already archived")
