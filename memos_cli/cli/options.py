"""Options shared by several commands, defined once as ``Annotated`` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def cube_path(value: str) -> Path:
    """A cube directory as given: an empty string is refused (Path("") would mean the current folder)."""
    if isinstance(value, Path):
        return value
    if not value.strip():
        raise typer.BadParameter("the path is empty (use . for the current directory)")
    return Path(value)


CubeArg = Annotated[Path, typer.Argument(help="The cube directory.", show_default=False, parser=cube_path)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
JsonlOpt = Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per line on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AsOpt = Annotated[
    Optional[str],
    typer.Option("--as", help="Act as this identity (default: $MEMOS_USER, else the login name)."),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="A local Hugging Face causal-LM folder (default: SmolLM2-135M-Instruct)."),
]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", help="Tag (repeatable).")]
TypeOpt = Annotated[Optional[list[str]], typer.Option("--type", help="Memory type (repeatable).")]
SpeakerOpt = Annotated[Optional[list[str]], typer.Option("--speaker", help="Speaker (repeatable).")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="Only memories whose time is on/after this date.")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Only memories whose time is on/before this date.")]
StatusOpt = Annotated[str, typer.Option("--status", help="active, archived, superseded, deleted, or all.")]


def filters_from(
    tag: list[str] | None,
    type_: list[str] | None,
    speaker: list[str] | None,
    since: str | None,
    until: str | None,
    status: str,
) -> object:
    """The engine's Filters from the shared filter options (list and query take the same ones)."""
    from memos_cli.engine.query import Filters

    return Filters(
        tags=list(tag or []),
        types=list(type_ or []),
        speakers=list(speaker or []),
        since=since,
        until=until,
        status=status,
    )
