"""memos promote: move memories up to activation (KV) or parametric (LoRA) memory, or down to the archive."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt, ModelOpt
from memos_cli.cli.output import emit_json, say
from memos_cli.words import plural

IdsOpt = Annotated[Optional[list[str]], typer.Option("--ids", help="Memory ids (repeatable; prefixes work).")]
QueryOpt = Annotated[Optional[str], typer.Option("--query", help="Select the top -k hits of this query.")]
KOpt = Annotated[int, typer.Option("-k", help="Hits taken with --query.")]
TagSel = Annotated[Optional[list[str]], typer.Option("--tag", help="Select memories with this tag (all given).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Select every active memory.")]
HotOpt = Annotated[Optional[int], typer.Option("--hot", help="Select the N most used memories (decayed by age).")]


def promote(
    cube: CubeArg,
    to: Annotated[
        str, typer.Option("--to", help="activation (KV snapshot), parametric (LoRA) or archive.")
    ] = "activation",
    name: Annotated[Optional[str], typer.Option("--name", help="Name of the snapshot or adapter.")] = None,
    ids: IdsOpt = None,
    query: QueryOpt = None,
    k: KOpt = 10,
    tag: TagSel = None,
    all_: AllOpt = False,
    hot: HotOpt = None,
    budget: Annotated[Optional[int], typer.Option("--budget", help="Cap the snapshot at this many tokens.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")] = "float32",
    drop: Annotated[Optional[str], typer.Option("--drop", help="Remove this snapshot or adapter.")] = None,
    refresh: Annotated[
        Optional[str], typer.Option("--refresh", help="Rebuild this snapshot from current memories.")
    ] = None,
    lora: Annotated[
        Optional[list[str]],
        typer.Option("--lora", help="Build the snapshot for the model with this adapter applied (repeatable)."),
    ] = None,
    model: ModelOpt = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Promote memories to activation memory (a KV snapshot prefilled once and injected by chat),
    to parametric memory (a LoRA adapter, as 'memos distill'), or demote them to the archive.

    Select with --ids, --query TEXT -k N, --tag, --all, or --hot N (the scheduler: the N memories
    used most by query and chat, each use decayed by its age). A snapshot is made for one model
    (its fingerprint is recorded) and is refused by any other; one whose memories changed is
    reported stale by stats, show and chat: --refresh NAME rebuilds it, --drop NAME removes it.

    With --lora A [--lora B], the snapshot is prefilled by the model with those adapters applied, as
    'memos chat --kv NAME --lora A' uses it: all three kinds of memory in one answer. Its header and
    manifest entry record each adapter's sha256, and chat refuses it with any other adapters.

    Examples:
      memos promote notes --to activation --name core --hot 20 --budget 1500
      memos promote notes --name team --tag people --dtype float16
      memos promote notes --to activation --name core --hot 20 --lora facts
      memos promote notes --refresh core
      memos promote notes --drop core
      memos promote notes --to archive --tag obsolete
    """
    from memos_cli.config import actor, model_spec
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.activation import promote as engine
    from memos_cli.engine.select import Selection
    from memos_cli.errors import UsageError

    opened = Cube.open(cube)
    selection = Selection(ids=list(ids or []), query=query, k=k, tags=list(tag or []), all=all_, hot=hot)
    spec = model_spec(model)
    if lora and to != "activation":
        raise UsageError("--lora applies to --to activation (a snapshot built with the adapters applied)")
    if drop:
        report = engine.drop(opened, drop, actor=as_)
    elif refresh:
        say(f"rebuilding snapshot {refresh} ...")
        report = engine.refresh(opened, refresh, model=spec, actor=as_)
    elif to == "archive":
        report = engine.archive(opened, selection, actor=as_)
    elif to == "activation":
        if not name:
            raise UsageError("--name is required to promote to activation memory")
        say("prefilling the memory preamble ...")
        report = engine.promote_to_activation(
            opened, selection, name=name, model=spec, budget=budget, dtype=dtype, actor=as_, loras=list(lora or [])
        )
    elif to == "parametric":
        if not name:
            raise UsageError("--name is required to promote to parametric memory")
        from memos_cli.cli.commands.distill import run_distill

        run_distill(opened, selection, name=name, model=spec, actor=actor(as_), json_=json_)
        return
    else:
        raise UsageError("--to must be activation, parametric or archive")
    if json_:
        emit_json(report.to_dict())
        return
    if report.kind == "activation":
        say(
            f"kv/{report.name}.safetensors: {plural(len(report.memories), 'memory')}, {report.tokens} tokens, "
            f"{report.dtype}, {report.bytes / 1e6:.1f} MB, model {report.model} ({report.seconds:.1f}s)"
        )
        if report.adapters:
            say(
                f"  made with adapters {', '.join(report.adapters)}: use it with chat --kv {report.name}"
                + "".join(f" --lora {a}" for a in report.adapters)
            )
        if report.skipped:
            say(
                f"  {plural(len(report.skipped), 'selected memory', 'selected memories')} did not fit in "
                f"the budget of {report.budget} tokens and were left out"
            )
    elif report.kind == "archive":
        say(f"archived {plural(len(report.memories), 'memory')}")
    else:
        say(f"{report.kind} {report.name} ({plural(len(report.memories), 'memory')})")
