"""memos schedule: apply the cube's lifecycle policy (archive, activation, parametric) in one run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt, ModelOpt
from memos_cli.cli.output import emit_json, out, say, stage_progress


def schedule(
    cube: CubeArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    explain: Annotated[
        Optional[str], typer.Option("--explain", help="Say why memory ID is where it is (changes nothing).")
    ] = None,
    init: Annotated[
        bool, typer.Option("--init", help="Add a commented example 'schedule:' section to cube.yaml.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --init: replace an existing policy.")] = False,
    now: Annotated[
        Optional[str], typer.Option("--now", help="Plan as of this ISO date/time instead of the clock.")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for another writer's lock (never broken).")
    ] = 600.0,
    model: ModelOpt = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the memory scheduler: one plan from the policy in cube.yaml ('schedule:'), the usage log
    and the memories, printed, then applied step by step (archive; rebuild the hot KV snapshot;
    distill stable memories into an adapter), each step a transaction with an audit entry
    'op: schedule'. A second run right after does nothing.

    Exit codes fit cron and CI: 0 nothing was due or every step was done, 1 a step failed (the
    others still ran and are reported). A cube without a policy gets the defaults (docs/FORMAT.md).

    Examples:
      memos schedule notes --init
      memos schedule notes --dry-run
      memos schedule notes --json
      memos schedule notes --explain m-3f2a
      */30 * * * *  memos schedule ~/notes >> ~/memos-schedule.log
    """
    from memos_cli.config import model_spec
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine import schedule as engine

    opened = Cube.open(cube)
    if init:
        if dry_run:
            out().print(engine.INIT_TEXT, end="", markup=False)
            return
        text = engine.write_init(opened, actor=as_, force=force)
        say(f"added the example policy to {cube}/cube.yaml (activation on; edit it to taste):")
        say(text.rstrip())
        return
    when = engine.parse_now(now) if now is not None else None
    if explain is not None:
        found = engine.explain(opened, explain, now=when, actor=as_)
        if json_:
            emit_json(found)
        else:
            for line in found["lines"]:
                out().print(line, markup=False)
        return
    with stage_progress() as bar:
        report = engine.run(
            opened,
            now=when,
            dry_run=dry_run,
            model=model_spec(model),
            actor=as_,
            wait=wait,
            notify=None if json_ else say,
            progress=bar,
        )
    if json_:
        emit_json(report.to_dict())
    else:
        _print(report)
    if report.failed:
        from memos_cli.errors import ScheduleFailed

        failed = [f"{r.step.kind}: {r.message}" for r in report.results if r.outcome == "failed"]
        raise ScheduleFailed(cube, failed, len(report.results))


def _print(report) -> None:  # type: ignore[no-untyped-def]
    plan = report.plan
    console = out()
    if not plan.steps:
        console.print("nothing to do", markup=False)
    elif report.dry_run:
        for step in plan.steps:
            name = f" {step.name}" if step.name else ""
            console.print(f"would {step.action}{name}: {len(step.ids)} memories ({step.reason})", markup=False)
    else:
        for result in report.results:
            step = result.step
            name = f" {step.name}" if step.name else ""
            console.print(f"{result.outcome}: {step.kind} {step.action}{name}: {result.message}", markup=False)
    for note in plan.notes:
        say(f"  {note}")
