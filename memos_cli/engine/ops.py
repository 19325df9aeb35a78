"""Everyday operations on a cube that need no model: list, show, forget, stats.

None of these imports torch: they answer in a fraction of a second on any cube.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, CubeState, Transaction, utc_now
from memos_cli.cube.entries import KvEntry, LoraEntry
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.query import Filters
from memos_cli.errors import MemoryNotFound, UsageError
from memos_cli.words import plural


def list_memories(
    cube: Cube, filters: Filters | None = None, *, limit: int | None = None, actor: str | None = None
) -> list[MemoryRecord]:
    """Current versions matching ``filters``, oldest first (by time, then creation)."""
    cube.check(actor, "read")
    filters = filters or Filters()
    state = cube.read_state()
    found = [r for r in state.current.values() if filters.matches(r)]
    found.sort(key=lambda r: (r.time or "", r.created, r.id))
    return found[:limit] if limit else found


def resolve_id(state: CubeState, ref: str) -> str:
    """A full memory id, from an id or a unique prefix of one (as git does with commits)."""
    if ref in state.current:
        return ref
    if len(ref) < 4:
        raise UsageError(f"id prefix {ref!r} is too short: prefixes need 4 characters (for example m-6a3f)")
    matches = [i for i in state.current if i.startswith(ref)] if len(ref) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"id prefix {ref!r} is ambiguous: {', '.join(sorted(matches)[:5])} ...")
    raise MemoryNotFound(ref)


@dataclass
class MemoryDetail:
    current: MemoryRecord
    history: list[MemoryRecord]
    uses: int
    in_kv: list[str]
    in_lora: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.current.to_dict(),
            "history": [r.to_dict() for r in self.history],
            "uses": self.uses,
            "kv": self.in_kv,
            "lora": self.in_lora,
        }


def show(cube: Cube, ref: str, *, actor: str | None = None) -> MemoryDetail:
    cube.check(actor, "read")
    state = cube.read_state()
    memory_id = resolve_id(state, ref)
    current = state.current[memory_id]
    in_kv = [name for name, e in cube.manifest.kv.items() if memory_id in e.ids()]
    in_lora = [name for name, e in cube.manifest.lora.items() if memory_id in e.ids()]
    return MemoryDetail(
        current=current,
        history=state.history(memory_id),
        uses=usage.counts(cube).get(memory_id, 0),
        in_kv=in_kv,
        in_lora=in_lora,
    )


@dataclass
class ForgetReport:
    archived: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already archived
    kv_dropped: list[str] = field(default_factory=list)  # snapshots that held a purged memory: removed
    adapters: list[str] = field(default_factory=list)  # adapters trained on a purged memory
    adapters_dropped: bool = False  # whether those adapters were removed (drop_adapters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "archived": self.archived,
            "purged": self.purged,
            "unchanged": self.unchanged,
            "kv_dropped": self.kv_dropped,
            "adapters": self.adapters,
            "adapters_dropped": self.adapters_dropped,
        }


def forget(
    cube: Cube, refs: list[str], *, purge: bool = False, drop_adapters: bool = False, actor: str | None = None
) -> ForgetReport:
    """Archive memories (a new version with status ``archived``), or with ``purge`` delete every
    version of them from ``memories.jsonl``, leaving a tombstone in the audit log.

    A purge removes the text from every file memos wrote, in the same transaction: the index rows,
    vectors and BM25 statistics (rewritten without it), the usage log, and every KV snapshot that holds
    one of the memories (dropped: rebuilding it needs the model; ``promote`` makes a new one). Adapters
    trained on one of them are named in the report, and removed too with ``drop_adapters``."""
    if not refs:
        raise UsageError("name at least one memory id")
    report = ForgetReport()
    op = "purge" if purge else "forget"
    with cube.transaction(actor=actor, op=op) as tx:
        state = cube.read_state()
        ids = list(dict.fromkeys(resolve_id(state, ref) for ref in refs))
        if purge:
            _purge(cube, tx, state, ids, drop_adapters, report)
            return report
        now = utc_now()
        for memory_id in ids:
            record = state.current[memory_id]
            if record.status == "archived":
                report.unchanged.append(memory_id)
                continue
            tx.add(
                replace(record, version=record.version + 1, status="archived", op="forget", actor=tx.actor, created=now)
            )
            report.archived.append(memory_id)
        if report.archived:
            tx.log(report.archived, f"archived {plural(len(report.archived), 'memory')}")
    return report


def _purge(cube: Cube, tx: Transaction, state: CubeState, ids: list[str], drop: bool, report: ForgetReport) -> None:
    from memos_cli.engine.plaintext.scrub import scrub

    doomed = set(ids)
    tx.rewrite_memories = [r for r in state.versions if r.id not in doomed]

    def holds(entry: KvEntry | LoraEntry) -> bool:
        return any(memory_id in doomed for memory_id in entry.ids())

    for name, entry in sorted(tx.manifest.kv.items()):
        if holds(entry):  # its header and tensors encode the text: it cannot stay
            tx.delete_file(layout.kv_rel(name))
            del tx.manifest.kv[name]
            report.kv_dropped.append(name)
    report.adapters = [name for name, entry in sorted(tx.manifest.lora.items()) if holds(entry)]
    if drop:
        for name in report.adapters:
            tx.manifest.lora.pop(name)
            tx.delete_file(layout.lora_rel(name))
        report.adapters_dropped = bool(report.adapters)
    if report.kv_dropped or report.adapters_dropped:
        tx.touch_manifest()
    # The tombstone says what went and how many versions, not what they said: no text, and no hash of
    # it either (a hash of a short secret confirms a guess).
    tombstones = [{"id": i, "versions": len(state.history(i))} for i in ids]
    extra: dict[str, Any] = {"tombstones": tombstones}
    if report.kv_dropped:
        extra["kv_dropped"] = report.kv_dropped
    if report.adapters:
        extra["adapters" if not drop else "adapters_dropped"] = report.adapters
    tx.log(ids, f"purged {plural(len(ids), 'memory')} and all their versions", **extra)
    report.purged = ids
    # Derived copies go before the commit: if the commit then fails, the index only lacks rows the next
    # query rebuilds; the other order could leave the purged text behind.
    scrub(cube, [r for r in state.versions if r.id in doomed], tx.rewrite_memories)
    usage.forget_ids(cube, doomed)
    for leftover in ("staging", "backups"):  # earlier interrupted writes' copies (recovered already)
        cube_io.remove(cube.path, f"{layout.DERIVED_DIR}/{leftover}")  # a link in its place goes, unfollowed


def stale_entries(cube: Cube, state: CubeState) -> dict[str, dict[str, list[str]]]:
    """KV snapshots and adapters whose memories changed since they were made: {kind: {name: [refs]}}."""
    current_refs = {r.ref for r in state.current.values() if r.status == "active"}
    stale: dict[str, dict[str, list[str]]] = {"kv": {}, "lora": {}}
    held: list[tuple[str, str, KvEntry | LoraEntry]] = [("kv", n, e) for n, e in cube.manifest.kv.items()]
    held += [("lora", n, e) for n, e in cube.manifest.lora.items()]
    for kind, name, entry in held:
        changed = [ref for ref in entry.memories if ref not in current_refs]
        if changed:
            stale[kind][name] = changed
    return stale


def stats(cube: Cube, *, actor: str | None = None) -> dict[str, Any]:
    cube.check(actor, "read")
    state = cube.read_state()
    current = list(state.current.values())
    by_status = Counter(r.status for r in current)
    by_type = Counter(r.type for r in current if r.status == "active")
    speakers = Counter(r.speaker for r in current if r.speaker and r.status == "active")
    sources = Counter(r.source for r in current if r.source and r.status == "active")
    times = sorted(r.time for r in current if r.time)
    uses = usage.counts(cube)
    stale = stale_entries(cube, state)
    index_meta = cube.path / layout.DERIVED_DIR / layout.INDEX_DIR / "meta.json"
    disk = sum(  # links are not followed (lstat): a link's target is not part of the cube
        p.lstat().st_size
        for p in cube.path.rglob("*")
        if not p.is_symlink() and p.is_file() and layout.DERIVED_DIR not in p.parts
    )
    m = cube.manifest
    return {
        "cube": {
            "id": m.id,
            "name": m.name,
            "owner": m.owner,
            "format_version": m.format_version,
            "path": str(cube.path),
        },
        "memories": len(current),
        "versions": len(state.versions),
        "by_status": dict(sorted(by_status.items())),
        "by_type": dict(sorted(by_type.items())),
        "speakers": dict(speakers.most_common(10)),
        "sources": dict(sources.most_common(10)),
        "time_range": [times[0], times[-1]] if times else None,
        "embedder": m.embedder,
        "model": m.model.to_dict() if m.model is not None else None,
        "kv": {
            name: {**_brief(e), "stale": name in stale["kv"], "problem": _kv_problem(cube, name)}
            for name, e in sorted(m.kv.items())
        },
        "lora": {name: {**_brief(e), "stale": name in stale["lora"]} for name, e in sorted(m.lora.items())},
        "uses": sum(uses.values()),
        "most_used": [{"id": i, "uses": n} for i, n in sorted(uses.items(), key=lambda kv: (-kv[1], kv[0]))[:5]],
        "index": "present" if index_meta.exists() else "not built (the next query builds it)",
        "schedule": _schedule_summary(cube),
        "bytes_on_disk": disk,
    }


def _schedule_summary(cube: Cube) -> dict[str, Any]:
    from memos_cli.engine.schedule import summary  # the scheduler builds on these operations

    return summary(cube)


def _kv_problem(cube: Cube, name: str) -> str | None:
    """Why a snapshot cannot be used (missing, a link, truncated, corrupt header), or None: no sha256, no model."""
    from memos_cli.engine.activation.snapshots import snapshot_problem
    from memos_cli.errors import UnsafePath

    try:
        rel = cube.committed_rel(layout.kv_rel(name))
    except UnsafePath as exc:
        return exc.why
    return snapshot_problem(cube.path, rel)


def _brief(entry: KvEntry | LoraEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"memories": len(entry.memories), "created": entry.created}
    if isinstance(entry, KvEntry):
        out.update(tokens=entry.tokens, dtype=entry.dtype, sha256=entry.sha256)
    elif "rank" in entry.hyperparameters:
        out["rank"] = entry.hyperparameters["rank"]
    return out
