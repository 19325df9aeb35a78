"""memos verify and memos repair: integrity of a cube."""

from __future__ import annotations

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, say


def verify(cube: CubeArg, json_: JsonOpt = False) -> None:
    """Check a cube: the manifest and format version, every line of memories.jsonl and audit.jsonl
    (torn or malformed lines), the sha256 of every snapshot and adapter file, snapshot headers against
    the manifest, files not named in it, and the index against the records. Writes nothing.

    Exit code 0 when sound, 3 naming each problem otherwise.

    Example:  memos verify notes && git commit -am "notes"
    """
    from memos_cli.engine.integrity import verify as run_verify
    from memos_cli.errors import InvalidCube

    report = run_verify(cube)
    if json_:
        emit_json(report.to_dict())
    else:
        for problem in report.problems:
            say(f"[red]problem[/] {problem}")
        for note in report.notes:
            say(f"[dim]note[/] {note}")
        counts = ", ".join(f"{k} {v}" for k, v in report.checked.items())
        if report.ok:
            say(f"[green]ok[/] {cube}: {counts}")
    if not report.ok:
        repairable = any(p.repairable for p in report.issues)
        hint = f"run: memos repair {cube}" if repairable else "each problem above says what to do"
        raise InvalidCube(cube, f"{len(report.problems)} problem(s) found", hint=hint)


def repair(cube: CubeArg, as_: AsOpt = None, json_: JsonOpt = False) -> None:
    """Fix what can be fixed without losing data: roll back an interrupted command, remove a torn last
    line (a write that was never acknowledged), clear leftovers, rebuild a stale or broken index.
    Says what it could not fix (for example a snapshot whose bytes changed: rebuild it).

    Example:  memos repair notes
    """
    from memos_cli.engine.repair import repair as run_repair
    from memos_cli.errors import InvalidCube

    report = run_repair(cube, actor=as_)
    if json_:
        emit_json(report.to_dict())
    for line in report.fixed:
        say(f"[green]fixed[/] {line}")
    for line in report.not_fixed:
        say(f"[red]not fixed[/] {line}")
    if not report.fixed and not report.not_fixed:
        say("nothing to repair")
    if report.not_fixed:
        # never "run memos verify" here: verify would only send the user back to repair
        raise InvalidCube(
            cube, f"{len(report.not_fixed)} problem(s) remain", hint="repair cannot fix these: each says what to do"
        )
