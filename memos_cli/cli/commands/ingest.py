"""memos ingest: text, markdown, JSONL records and chat transcripts -> plaintext memories."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import ActorsOpt, AddressOpt, AsOpt, CubeArg, EngineOpt, JsonOpt, engine_from
from memos_cli.cli.output import emit_json, progress, say
from memos_cli.words import plural


def ingest(
    cube: CubeArg,
    sources: Annotated[Optional[list[str]], typer.Argument(help="Files to ingest; '-' or none reads stdin.")] = None,
    format_: Annotated[
        Optional[str], typer.Option("--format", "-f", help="text, markdown, jsonl or chat (default: detected).")
    ] = None,
    tag: Annotated[
        Optional[list[str]], typer.Option("--tag", help="Add this tag to every memory (repeatable).")
    ] = None,
    type_: Annotated[
        Optional[str], typer.Option("--type", help="Type for records that set none (fact, note, ...).")
    ] = None,
    speaker: Annotated[Optional[str], typer.Option("--speaker", help="Speaker for records that set none.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="Time for records that set none (any date).")] = None,
    time_base: Annotated[
        Optional[str],
        typer.Option(
            "--time-base",
            help="Date to read relative times against ('next tuesday'); without it they are refused.",
        ),
    ] = None,
    date_order: Annotated[
        Optional[str],
        typer.Option(
            "--date-order",
            help="dmy or mdy: how to read numeric dates like 4/12/2023 in 'time'; without it they are refused.",
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Store the good records and report the bad ones instead of failing.")
    ] = False,
    sync: Annotated[
        bool, typer.Option("--sync", help="Archive memories whose passage is gone from a file ingested again.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    as_: AsOpt = None,
    json_: JsonOpt = False,
    engine: EngineOpt = None,
    address: AddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Store memories from files or stdin: no LLM call, embedded in batches, never stored twice.

    Formats are detected from the extension and content: plain text and markdown are split into
    passages (at headings and paragraphs) that keep their file and line span; JSONL records need a
    "text" and may carry id/source_id, speaker, time, tags, type, key, metadata; chat transcripts
    are a JSON list (or JSONL) of messages with role/speaker and content/text.

    Event time: time expressions in each memory ("yesterday", "three years ago", "next month",
    "for three years", "16 March 2022") are resolved against the memory's own time and stored as
    its `event_time`. A relative `time` value ("next tuesday") is read against --time-base or the
    record's `time_base`, and refused without one (never against today's clock). A numeric `time`
    whose numbers leave day and month open (4/12/2023) is read with --date-order dmy or mdy, and
    refused without it (13/04/2023 and ISO dates need nothing).

    A file ingested again is synced: a changed passage becomes a new version of its memory (the same
    file, the same heading or record id); passages gone from the file are listed, and archived with
    --sync. --dry-run shows all of this without writing.

    Bad input (malformed JSON, a record without text, invalid UTF-8, a binary or empty file) stops
    the ingest with the file and line, and the cube is left unchanged.

    Examples:
      memos ingest notes README.md meeting.md --tag work
      cat facts.jsonl | memos ingest notes - --format jsonl
      memos ingest diary notes.jsonl --time-base 2024-03-17   # "time": "yesterday" -> 2024-03-16
      memos ingest diary export.jsonl --date-order dmy        # "time": "4/12/2023" -> 2023-12-04
      memos ingest notes logs/*.jsonl --engine ray --address head:6379
      memos ingest notes meeting.md --sync --dry-run
    """
    from memos_cli.config import actor
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.embedding import EmbedderHandle
    from memos_cli.engine.plaintext.ingest import Defaults, Source
    from memos_cli.engine.plaintext.ingest import ingest as run_ingest

    ray_engine = engine_from(engine, address, actors)
    opened = Cube.open(cube)
    inputs = [Source.from_path(s) for s in (sources or ["-"])]
    defaults = Defaults(
        tags=list(tag or []), type=type_, speaker=speaker, time=time, time_base=time_base, date_order=date_order
    )
    try:
        with progress("embedding") as bar:
            report = run_ingest(
                opened,
                inputs,
                fmt=format_,
                defaults=defaults,
                skip_bad=skip_bad,
                actor=actor(as_),
                embedder=EmbedderHandle(engine=ray_engine),  # type: ignore[arg-type]
                progress=bar,
                sync=sync,
                dry_run=dry_run,
            )
    finally:
        if ray_engine is not None:
            ray_engine.close()  # type: ignore[attr-defined]
    if ray_engine is not None and ray_engine.stats.chunks + ray_engine.stats.staged_reused:  # type: ignore[attr-defined]
        say(ray_engine.stats.line())  # type: ignore[attr-defined]
    if json_:
        emit_json(report.to_dict())
    summary = f"added {report.added}, duplicates {report.duplicates}, rejected {len(report.rejected)}"
    if report.updated:
        summary += f", updated {len(report.updated)} (changed in their source: new versions)"
    if report.dry_run:
        summary = "dry run, nothing written: would have " + summary
    if report.added == 0 and report.duplicates and not report.rejected and not report.updated:
        summary += " (nothing new: everything was already in the cube)"
    if report.superseded:
        summary += f"; superseded {len(report.superseded)} older memories with the same key"
    say(f"{summary} [dim]({report.seconds:.2f}s)[/]")
    if report.archived:
        verb = "would archive" if report.dry_run else "archived"
        say(f"{verb} {plural(len(report.archived), 'memory', 'memories')} whose passage is gone from its file")
    elif report.vanished:
        say(
            f"passages of {plural(len(report.vanished), 'memory')} are gone from their file "
            "(still active; archive them with --sync): " + " ".join(report.vanished[:10])
        )
    for bad in report.rejected[:20]:
        say(f"  [red]rejected[/] {bad.where}: {bad.problem}")
    if len(report.rejected) > 20:
        say(f"  ... and {len(report.rejected) - 20} more (see --json)")
