"""memos export and memos import: a cube as one .tar.gz, checksums verified on import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt, cube_path
from memos_cli.cli.output import emit_json, say


def export(
    cube: CubeArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The .tar.gz to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Pack a cube (not its derived .memos/) into one .tar.gz with the sha256 of every file.

    Example:  memos export notes -o notes.tar.gz
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.transfer import check_export_target, export_cube

    check_export_target(output, force=force)
    info = export_cube(Cube.open(cube), output, actor=as_)
    if json_:
        emit_json(info)
    else:
        say(f"wrote {info['output']}: {info['files']} files, {info['bytes']:,} bytes")


def import_(
    archive: Annotated[Path, typer.Argument(help="A .tar.gz made by memos export.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The new cube directory.", parser=cube_path)],
    json_: JsonOpt = False,
) -> None:
    """Unpack an export into a new cube directory, streaming: every entry is checked against the cube
    format (no .git, .memos, links or stray files) and its sha256, sizes before reading (at most 2 GiB
    in all, or MEMOS_IMPORT_MAX_BYTES). Nothing is written unless the whole archive checks out.

    Example:  memos import notes.tar.gz -o restored-notes
    """
    from memos_cli.engine.transfer import import_cube

    info = import_cube(archive, output)
    if json_:
        emit_json(info)
    else:
        say(f"imported {info['name']} ({info['files']} files) into {info['output']}")
