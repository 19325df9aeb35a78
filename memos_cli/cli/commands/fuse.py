"""memos fuse: several cubes -> one new cube."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memos_cli.cli.options import ActorsOpt, AddressOpt, AsOpt, EngineOpt, JsonOpt, ModelOpt, engine_from
from memos_cli.cli.output import emit_json, say, stage_progress
from memos_cli.words import plural


def fuse(
    cubes: Annotated[list[Path], typer.Argument(help="Two or more cubes to fuse.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The new cube's directory (must not exist).")],
    name: Annotated[Optional[str], typer.Option("--name", help="Name of the fused cube.")] = None,
    dedup_threshold: Annotated[
        float, typer.Option("--dedup-threshold", help="Cosine similarity above which two memories are merged.")
    ] = 0.95,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would happen; write nothing.")] = False,
    reembed: Annotated[bool, typer.Option("--reembed", help="Accept parents indexed with another embedder.")] = False,
    drop_incompatible: Annotated[
        bool, typer.Option("--drop-incompatible", help="Leave out snapshots/adapters made for another model.")
    ] = False,
    adapters: Annotated[
        str,
        typer.Option(
            "--adapters",
            help="Same-named LoRA adapters: 'consolidate' (peft 'cat', then two short passes over the parents' "
            "memories), 'combine' (peft 'cat' only) or 'drop' (leave them out).",
        ),
    ] = "consolidate",
    model: ModelOpt = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
    engine: EngineOpt = None,
    address: AddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Fuse cubes into a new one: the union of every memory version, exact duplicates stored once,
    near-duplicates (--dedup-threshold) merged keeping both provenances, conflicts on a key resolved by
    time, lineage recorded in the manifest. KV snapshots are rebuilt for the fused cube by prefilling
    each parent's memories on top of the other's (never by gluing caches). LoRA adapters with the same
    name are combined with peft's 'cat' (the sum of the parents' updates) and then trained two short passes
    over the parents' memories, because updates learned apart interfere once summed; recall of each
    parent's facts is measured and reported after each step. Parents with another embedder or model are
    refused.

    Examples:
      memos fuse team-a team-b -o team --dry-run
      memos fuse team-a team-b -o team --dedup-threshold 0.9
      memos fuse team-a team-b -o team --adapters combine --json
      memos fuse old-a new-b -o team --reembed --engine ray
    """
    from memos_cli.config import model_spec
    from memos_cli.engine.fuse import fuse as run_fuse

    ray_engine = engine_from(engine, address, actors)
    with stage_progress() as bar:
        report = run_fuse(
            list(cubes),
            output,
            name=name,
            dedup_threshold=dedup_threshold,
            dry_run=dry_run,
            reembed=reembed,
            drop_incompatible=drop_incompatible,
            adapters=adapters,
            model=model_spec(model),
            actor=as_,
            progress=bar,
            engine=ray_engine,  # type: ignore[arg-type]
        )
    if ray_engine is not None:
        ray_engine.close()  # type: ignore[attr-defined]
        if ray_engine.stats.chunks:  # type: ignore[attr-defined]
            say(ray_engine.stats.line())  # type: ignore[attr-defined]
    if json_:
        emit_json(report.to_dict())
        return
    verb = "would fuse" if dry_run else "fused"
    say(
        f"{verb} {len(report.parents)} cubes into {output}: {plural(report.memories, 'memory')} "
        f"({plural(report.versions, 'version')})"
    )
    say(
        f"  exact duplicates stored once: {report.exact_duplicates}; near duplicates merged: "
        f"{len(report.near_duplicates)}; version conflicts kept: {report.version_conflicts}; "
        f"superseded by key: {report.superseded_by_key}"
    )
    if report.version_conflicts and not dry_run:
        say(
            f"  [yellow]{plural(report.version_conflicts, 'memory', 'memories')} changed two ways[/]: both "
            f"versions kept; choose with: memos conflicts {output}"
        )
    for pair in report.near_duplicates[:10]:
        say(f"  [dim]{pair['similarity']:.3f} kept {pair['kept_text'][:60]!r} <- {pair['merged_text'][:60]!r}[/]")
    for kv_name, info in report.kv.items():
        say(f"  kv {kv_name}: {info}")
    for lora_name, info in report.lora.items():
        say(f"  lora {lora_name}: {info['method']} of {', '.join(info['from'])}")
        for parent, scores in (info.get("recall") or {}).items():
            steps = [
                f"{stage} {scores[stage]:.0%}"
                for stage in ("own", "combined", "consolidated")
                if scores.get(stage) is not None
            ]
            say(f"    recall of {parent}'s facts: {', '.join(steps)} ({scores['probes']} questions)")
    for dropped in report.dropped:
        say(f"  [yellow]left out[/] {dropped}")
    say(f"  ({report.seconds:.1f}s)")
