"""memos policy: show or change who may read and write a cube."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, out

Names = Annotated[Optional[list[str]], typer.Option(help="An identity (repeatable).")]


def policy(
    cube: CubeArg,
    owner: Annotated[Optional[str], typer.Option("--owner", help="Hand the cube to this owner.")] = None,
    add_writer: Annotated[
        Optional[list[str]], typer.Option("--add-writer", help="Allow this identity to write.")
    ] = None,
    remove_writer: Annotated[Optional[list[str]], typer.Option("--remove-writer")] = None,
    add_reader: Annotated[
        Optional[list[str]], typer.Option("--add-reader", help="Allow this identity to read.")
    ] = None,
    remove_reader: Annotated[Optional[list[str]], typer.Option("--remove-reader")] = None,
    freeze: Annotated[
        Optional[bool], typer.Option("--freeze/--unfreeze", help="Refuse (or allow again) every write.")
    ] = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show the cube's policy, or change it (owner only).

    When writers are listed, only the owner and they may write; when readers are listed, only the owner,
    writers and readers may read; a frozen cube refuses every write. Refusals exit with code 4. The
    acting identity is --as NAME, else $MEMOS_USER, else the login name. This guards against mistakes and
    pipelines acting as the wrong identity, not against someone who can edit the files: memos verify
    checks integrity.

    Examples:
      memos policy notes
      memos policy notes --add-writer ci-bot --freeze
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.governance import PolicyChange, set_policy

    opened = Cube.open(cube)
    change = PolicyChange(
        owner=owner,
        add_writers=list(add_writer or []),
        remove_writers=list(remove_writer or []),
        add_readers=list(add_reader or []),
        remove_readers=list(remove_reader or []),
        frozen=freeze,
    )
    current = opened.manifest.policy if change.empty() else set_policy(opened, change, actor=as_)
    if json_:
        emit_json(current)
        return
    console = out()
    console.print(f"owner:   {current.get('owner') or opened.manifest.owner or '-'}")
    console.print(f"writers: {', '.join(current.get('writers') or []) or '(anyone)'}")
    console.print(f"readers: {', '.join(current.get('readers') or []) or '(anyone)'}")
    console.print(f"frozen:  {'yes' if current.get('frozen') else 'no'}")
