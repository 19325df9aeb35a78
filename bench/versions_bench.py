"""Cost of semantic merges and of source sync (issue #13), without any model.

- merge: ``merge_memories`` (the git driver for memories.jsonl) on N memories, each side editing E of
  them (tags on one side, text on the other, and E/10 changed two ways), timed end to end on bytes.
- sync: ``plan_sync`` for a markdown file of N passages re-ingested with E of them edited and E/10 gone.

Run: PYTHONPATH=. python bench/versions_bench.py [N] [E]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

from memos_cli.cube.bundle import CubeState
from memos_cli.cube.records import MemoryRecord, content_hash, memory_id_for
from memos_cli.engine.plaintext.merge import conflicts_of
from memos_cli.engine.plaintext.sync import plan_sync
from memos_cli.engine.plaintext.versions import merge_memories


def _record(i: int, text: str, source: str = "notes.md", heading: str | None = None) -> MemoryRecord:
    chash = content_hash(text, source, None)
    return MemoryRecord(
        id=memory_id_for(chash),
        version=1,
        text=text,
        created=f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        source=source,
        span=[i * 2 + 1, i * 2 + 1],
        hash=chash,
        metadata={"heading": heading} if heading else {},
    )


def bench_merge(n: int, edits: int) -> dict[str, float]:
    base = [_record(i, f"Memory number {i} says something about topic {i % 97}") for i in range(n)]
    ours = list(base)
    theirs = list(base)
    for i in range(edits):
        r = base[i * (n // edits)]
        ours.append(replace(r, version=2, tags=["ours"], created="2025-02-01T00:00:00Z", op="update"))
        text = r.text + (" (changed two ways)" if i % 10 == 0 else "")
        theirs_r = replace(r, version=2, text=text + " and more", created="2025-02-02T00:00:00Z", op="update")
        theirs.append(theirs_r)
        if i % 10 == 0:
            ours[-1] = replace(ours[-1], text=r.text + " edited here too")

    def dump(records: list[MemoryRecord]) -> bytes:
        return "".join(r.to_json() + "\n" for r in records).encode()

    b, o, t = dump(base), dump(ours), dump(theirs)
    started = time.perf_counter()
    merged = merge_memories(b, o, t)
    seconds = time.perf_counter() - started
    records = [MemoryRecord.from_dict(json.loads(line)) for line in merged.splitlines()]
    current: dict[str, MemoryRecord] = {}
    for r in records:
        if r.id not in current or r.version > current[r.id].version:
            current[r.id] = r
    return {
        "memories": n,
        "edited_per_side": edits,
        "seconds": round(seconds, 3),
        "versions_out": len(records),
        "conflicts": len(conflicts_of(current.values())),
    }


def bench_sync(n: int, edits: int) -> dict[str, float]:
    old = [_record(i, f"Passage {i} of the handbook says rule {i} applies.", heading=f"H{i // 20}") for i in range(n)]
    state = CubeState(versions=old, current={r.id: r for r in old}, size=0)
    new = []
    step = n // edits
    for i, r in enumerate(old):
        if i % step == 0 and (i // step) % 10 == 0:
            continue  # gone
        text = r.text.replace("applies", "no longer applies") if i % step == 0 else r.text
        new.append(_record(i, text, heading=r.metadata["heading"]))
    started = time.perf_counter()
    plan = plan_sync([("notes.md", new)], state, "2025-03-01T00:00:00Z")
    seconds = time.perf_counter() - started
    return {
        "passages": n,
        "edited": len(plan.changed),
        "vanished": len(plan.vanished),
        "added": len(plan.fresh),
        "seconds": round(seconds, 3),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    e = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(json.dumps({"merge": bench_merge(n, e), "sync": bench_sync(n, e)}, indent=1))
