"""Options shared by several commands, defined once as ``Annotated`` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from memos_cli.engine.plaintext.query import Filters


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
EngineOpt = Annotated[
    Optional[str],
    typer.Option(
        "--engine",
        help="Where embedding and batch ranking run: local or ray (a Ray cluster; same results). "
        "Default: $MEMOS_ENGINE, else local.",
    ),
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray cluster address (default: $MEMOS_RAY_ADDRESS, else a new local instance)."),
]
ActorsOpt = Annotated[Optional[int], typer.Option("--actors", help="Ray actors (default: one per CPU of the cluster).")]
StatusOpt = Annotated[str, typer.Option("--status", help="active, archived, superseded, deleted, or all.")]
TimeFieldOpt = Annotated[
    str,
    typer.Option(
        "--time-field",
        help="What --since/--until match: 'event' (when it happened), 'said' (the memory's time) or 'either'.",
    ),
]


def filters_from(
    tag: list[str] | None,
    type_: list[str] | None,
    speaker: list[str] | None,
    since: str | None,
    until: str | None,
    status: str,
    time_field: str = "either",
) -> Filters:
    """The engine's Filters from the shared filter options (list and query take the same ones)."""
    from memos_cli.engine.plaintext.query import Filters

    return Filters(
        tags=list(tag or []),
        types=list(type_ or []),
        speakers=list(speaker or []),
        since=since,
        until=until,
        status=status,
        time_field=time_field,
    )


def engine_from(engine: str | None, address: str | None, actors: int | None) -> object:
    """The Ray engine for ``--engine ray`` (None for local); exits 2 with the install hint without Ray."""
    from memos_cli.engine.distributed import EngineOptions, make_engine

    return make_engine(EngineOptions.resolve(engine, address, actors))
