"""memos stats: what a cube holds."""

from __future__ import annotations

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt
from memos_cli.cli.output import emit_json, out
from memos_cli.words import plural


def stats(cube: CubeArg, json_: JsonOpt = False, as_: AsOpt = None) -> None:
    """Counts by status and type, speakers, sources, time range, uses, snapshots and adapters
    (stale ones flagged), the size on disk, and the scheduler's view: the hot set, what is stale,
    what is due (what 'memos schedule' would do now).

    Example:  memos stats notes --json
    """
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.ops import stats as run_stats

    data = run_stats(Cube.open(cube), actor=as_)
    if json_:
        emit_json(data)
        return
    console = out()
    c = data["cube"]
    console.print(f"[bold]{c['name']}[/] ({c['id']}), format {c['format_version']}, owner {c['owner'] or '-'}")
    console.print(
        f"  memories: {data['memories']} ({data['versions']} versions) "
        + ", ".join(f"{k} {v}" for k, v in data["by_status"].items())
    )
    if data["by_type"]:
        console.print("  types: " + ", ".join(f"{k} {v}" for k, v in data["by_type"].items()))
    if data["speakers"]:
        console.print("  speakers: " + ", ".join(f"{k} {v}" for k, v in data["speakers"].items()))
    if data["time_range"]:
        console.print(f"  time: {data['time_range'][0]} .. {data['time_range'][1]}")
    console.print(f"  uses: {data['uses']}; index: {data['index']}; {data['bytes_on_disk']:,} bytes on disk")
    for kind in ("kv", "lora"):
        for name, entry in data[kind].items():
            flag = " [red]STALE[/]" if entry["stale"] else ""
            if entry.get("problem"):
                flag += f" [red]BROKEN[/] ({entry['problem']}; rebuild: memos promote {cube} --refresh {name})"
            console.print(f"  {kind} {name}: {plural(entry['memories'], 'memory')}{flag}")
    plan = data["schedule"]
    if "error" in plan:
        console.print(f"  schedule: policy error: {plan['error']}", markup=False)
        return
    console.print(f"  hot: {', '.join(plan['hot'][:10]) or '-'}" + (" ..." if len(plan["hot"]) > 10 else ""))
    for name, refs in plan["stale"].items():
        console.print(f"  stale: {name} ({len(refs)} memories changed or due for the archive)")
    for line in plan["due"] or ["nothing (memos schedule would do nothing now)"]:
        console.print(f"  due: {line}", markup=False)
