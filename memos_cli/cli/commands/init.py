"""memos init: create an empty cube bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, JsonOpt, cube_path
from memos_cli.cli.output import emit_json, say


def init(
    directory: Annotated[
        Path,
        typer.Argument(help="Where to create the cube (created if missing).", parser=cube_path),
    ],
    name: Annotated[Optional[str], typer.Option("--name", help="A name (default: the directory name).")] = None,
    owner: Annotated[Optional[str], typer.Option("--owner", help="The owner (default: the acting identity).")] = None,
    description: Annotated[str, typer.Option("--description", help="One line on what the cube holds.")] = "",
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an empty cube: cube.yaml, memories.jsonl, audit.jsonl and a .gitignore for derived data.

    Example:  memos init notes --name "team notes"
    """
    from memos_cli.config import actor
    from memos_cli.cube.bundle import Cube

    cube = Cube.init(directory, name=name, owner=owner or actor(as_), description=description)
    if json_:
        emit_json({"path": str(directory), "id": cube.manifest.id, "name": cube.manifest.name})
    else:
        say(f"created cube [bold]{cube.manifest.name}[/] ({cube.manifest.id}) in {directory}")
        say(f"next: memos ingest {directory} FILE ...")
