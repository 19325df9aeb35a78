"""fuse's activation part: each parent snapshot rebuilt from the fused memories; several parents'
snapshots of one name prefilled one on top of the other (never by concatenating caches)."""

from __future__ import annotations

from typing import Any

from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import KvEntry, ref_ids
from memos_cli.cube.records import MemoryRecord


def rebuild_snapshots(
    lm: Any, plan: dict[str, list[tuple[Cube, KvEntry]]], final: dict[str, MemoryRecord]
) -> dict[str, tuple[Any, KvEntry]]:
    """Each snapshot again, from the fused memories; several parents' snapshots of one name are
    prefilled one on top of the other."""
    from memos_cli.engine.activation.snapshots import build_snapshot, extend_snapshot

    out = {}
    for kv_name, sources in plan.items():
        snap = None
        refs: list[str] = []
        for _parent, entry in sources:
            memories = []
            for memory_id in entry.ids():
                record = final.get(memory_id)
                if record is not None and record.status == "active" and record.ref not in refs:
                    memories.append(record)
                    refs.append(record.ref)
            if not memories:
                continue
            dtype = entry.dtype
            snap = build_snapshot(lm, memories, dtype=dtype) if snap is None else extend_snapshot(lm, snap, memories)
        if snap is None:
            continue
        first = sources[0][1]
        out[kv_name] = (
            snap,
            KvEntry(
                name=kv_name,
                model=lm.name,
                model_fingerprint=lm.fingerprint,
                dtype=snap.dtype,
                tokens=snap.token_count,
                memories=list(snap.memory_refs),
                skipped=list(snap.skipped_refs),
                selection={"ids": ref_ids(snap.memory_refs)},
                budget=first.budget,
                created=utc_now(),
                fused_from=[p.manifest.name for p, _ in sources],
            ),
        )
    return out
