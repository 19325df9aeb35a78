"""memos conflicts: memories whose merge left one field changed two ways."""

from __future__ import annotations

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, out, say


def conflicts(cube: CubeArg, json_: JsonOpt = False, as_: AsOpt = None) -> None:
    """List memories whose git merge or fuse found a field changed two ways. Both versions are kept;
    the current one holds the later value until you choose: a new version (memos update) resolves it.

    Exit code 0 with none, 1 when some are unresolved (so scripts and CI can stop on them).

    Examples:

      memos conflicts notes

      memos update notes m-6a3f --text "The beta opens on 2 April."
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.plaintext.merge import list_conflicts
    from memos_cli.errors import MemosError

    found = list_conflicts(Cube.open(cube), actor=as_)
    if json_:
        emit_json(found)
    else:
        console = out()
        for item in found:
            console.print(f"[bold]{item['id']}[/] v{item['version']}: {', '.join(item['fields'])} changed two ways")
            for name, values in item["values"].items():
                for v in values:
                    console.print(f"  {name} v{v['version']} by {v['actor'] or '?'} ({v['created']}): {v['value']!r}")
        if not found:
            say("no conflicts")
    if found:
        raise MemosError(
            f"{len(found)} memory conflict(s) to resolve", hint=f"choose with: memos update {cube} ID --text ..."
        )
