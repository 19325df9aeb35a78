"""memos query: hybrid retrieval with filters; a table for people, JSON for scripts, batch mode."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer

from memos_cli.cli.options import (
    ActorsOpt,
    AddressOpt,
    AsOpt,
    CubeArg,
    EngineOpt,
    JsonlOpt,
    JsonOpt,
    SinceOpt,
    SpeakerOpt,
    StatusOpt,
    TagOpt,
    TimeFieldOpt,
    TypeOpt,
    UntilOpt,
    engine_from,
    filters_from,
)
from memos_cli.cli.output import check_exclusive, emit_json, emit_jsonl, out, progress, say

if TYPE_CHECKING:
    from memos_cli.engine.plaintext.query import Filters, Searcher


def query(
    cube: CubeArg,
    text: Annotated[Optional[str], typer.Argument(help="What to look for.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 10,
    tag: TagOpt = None,
    type_: TypeOpt = None,
    speaker: SpeakerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = "active",
    time_field: TimeFieldOpt = "either",
    batch: Annotated[
        Optional[str],
        typer.Option("--batch", help="Read one query per line from FILE ('-' for stdin); print JSON lines."),
    ] = None,
    retrieval: Annotated[str, typer.Option("--retrieval", help="hybrid, dense or lexical.")] = "hybrid",
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
    no_usage: Annotated[bool, typer.Option("--no-usage", help="Do not count the hits as uses.")] = False,
    include_working: Annotated[
        bool,
        typer.Option("--include-working", help="Also search chat turns (the working tier), ranked below the rest."),
    ] = False,
    as_: AsOpt = None,
    engine: EngineOpt = None,
    address: AddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Find the memories that best match TEXT (dense MiniLM and BM25 scores, fused).

    Each hit counts as a use of its memory (for 'memos promote --hot' and 'memos schedule'). Archived
    and superseded memories are left out unless --status says otherwise; chat turns (the working
    tier) unless --include-working, and the model's own answers unless --tag model-answer.

    Time: a memory has the time it was said (its `time`) and event times found in its text at ingest
    ("yesterday", "three years ago", "next month", resolved against when it was said). Periods named
    in TEXT ("on 16 March 2022", "in January 2023", "the last week of August 2023", "last summer",
    read against the cube's latest time) favour memories whose event or said time falls in them.
    --since/--until keep memories whose event time or said time is in the window (--time-field
    event|said|either). --json hits carry `event_time`.

    Examples:
      memos query notes "when is the launch?" -k 5
      memos query notes "budget" --tag finance --since 2024-01-01 --json
      memos query notes --batch questions.txt > answers.jsonl
      memos query chats "what did Jon do in January 2023?" --json
      memos query chats "trip" --since 2023-01-01 --until 2023-03-31 --time-field event
      memos query notes --batch questions.txt --engine ray > answers.jsonl

    With --engine ray, --batch queries are embedded and ranked on the cluster (the cube stays here);
    the output is the same as with the local engine.

    MEMOS_INDEX_SHARD_ROWS=N (or config.yaml index_shard_rows) keeps the cube's index in shards of N rows,
    each with its own BM25 postings and hnswlib graph (kept until set to 0; nothing is re-embedded). The
    hits are the same as unsharded in exact mode (up to 20,000 allowed rows, or no graph).
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.embedding import EmbedderHandle
    from memos_cli.engine.plaintext.query import Searcher
    from memos_cli.errors import UsageError

    check_exclusive(json=json_, jsonl=jsonl)
    if (text is None) == (batch is None):
        raise UsageError("give a query TEXT or --batch FILE (not both)")
    if text is not None and not text.strip():
        raise UsageError("the query is empty: give some words to search for")
    handle = None
    if batch is not None:
        try:
            handle = sys.stdin if batch == "-" else open(batch, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--batch {batch}: cannot read it ({exc.strerror})") from None
    filters = filters_from(tag, type_, speaker, since, until, status, time_field)
    filters.include_working = include_working
    ray_engine = engine_from(engine, address, actors)
    opened = Cube.open(cube)
    embedder = EmbedderHandle(engine=ray_engine)  # type: ignore[arg-type]
    usage = not no_usage
    try:
        with (
            progress("indexing") as bar,
            Searcher([opened], mode=retrieval, record_usage=usage, progress=bar, actor=as_, embedder=embedder) as s,
        ):
            if handle is not None:
                _batch(s, handle, k, filters, ray_engine is not None)
                return
            assert text is not None
            hits = s.search(text, k=k, filters=filters)
    finally:
        if ray_engine is not None:
            if ray_engine.stats.chunks:  # type: ignore[attr-defined]
                say(ray_engine.stats.line())  # type: ignore[attr-defined]
            ray_engine.close()  # type: ignore[attr-defined]
    if json_:
        emit_json({"query": text, "hits": [h.to_dict() for h in hits]})
    elif jsonl:
        emit_jsonl(h.to_dict() for h in hits)
    else:
        _table(text, hits)


def _batch(searcher: Searcher, handle: TextIO, k: int, filters: Filters, whole: bool) -> None:
    """One JSON line per query, in order: streamed locally, in one distributed job with --engine ray."""
    with handle:
        questions = (line.rstrip("\n") for line in handle)
        questions = (q for q in questions if q.strip())
        if whole:
            texts = list(questions)
            for question, hits in zip(texts, searcher.search_batch(texts, k=k, filters=filters), strict=True):
                emit_jsonl([{"query": question, "hits": [h.to_dict() for h in hits]}])
            return
        for question in questions:
            hits = searcher.search(question, k=k, filters=filters)
            emit_jsonl([{"query": question, "hits": [h.to_dict() for h in hits]}])


def _table(text: str, hits: list[Any]) -> None:
    from rich.table import Table

    if not hits:
        say(f"no memories match {text!r}")
        return
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("score", "id", "when", "who", "text"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        when = (hit.time or "")[:10]
        if hit.event_time:  # when what it says happened, if the text dates it
            first = hit.event_time[0]
            span = first["start"] if first["start"] == first["end"] else f"{first['start']}..{first['end']}"
            when = f"{when} (event {span})".strip()
        table.add_row(f"{hit.score:.2f}", hit.id, when, hit.speaker or "", snippet)
    out().print(table)
