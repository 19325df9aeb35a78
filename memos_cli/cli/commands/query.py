"""memos query: hybrid retrieval with filters; a table for people, JSON for scripts, batch mode."""

from __future__ import annotations

import sys
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
from memos_cli.cli.output import check_exclusive, emit_json, emit_jsonl, out, progress, say


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
    batch: Annotated[
        Optional[str],
        typer.Option("--batch", help="Read one query per line from FILE ('-' for stdin); print JSON lines."),
    ] = None,
    retrieval: Annotated[str, typer.Option("--retrieval", help="hybrid, dense or lexical.")] = "hybrid",
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
    no_usage: Annotated[bool, typer.Option("--no-usage", help="Do not count the hits as uses.")] = False,
    as_: AsOpt = None,
) -> None:
    """Find the memories that best match TEXT (dense MiniLM and BM25 scores, fused).

    Each hit counts as a use of its memory (for 'memos promote --hot'). Archived and superseded
    memories are left out unless --status says otherwise.

    Examples:
      memos query notes "when is the launch?" -k 5
      memos query notes "budget" --tag finance --since 2024-01-01 --json
      memos query notes --batch questions.txt > answers.jsonl
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.query import Searcher
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
    filters = filters_from(tag, type_, speaker, since, until, status)
    opened = Cube.open(cube)
    with (
        progress("indexing") as bar,
        Searcher([opened], mode=retrieval, record_usage=not no_usage, progress=bar, actor=as_) as s,
    ):
        if handle is not None:
            with handle:
                for line in handle:
                    question = line.rstrip("\n")
                    if not question.strip():
                        continue
                    hits = s.search(question, k=k, filters=filters)
                    emit_jsonl([{"query": question, "hits": [h.to_dict() for h in hits]}])
            return
        assert text is not None
        hits = s.search(text, k=k, filters=filters)
    if json_:
        emit_json({"query": text, "hits": [h.to_dict() for h in hits]})
    elif jsonl:
        emit_jsonl(h.to_dict() for h in hits)
    else:
        _table(text, hits)


def _table(text: str, hits: list) -> None:
    from rich.table import Table

    if not hits:
        say(f"no memories match {text!r}")
        return
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("score", "id", "when", "who", "text"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        table.add_row(f"{hit.score:.2f}", hit.id, (hit.time or "")[:10], hit.speaker or "", snippet)
    out().print(table)
