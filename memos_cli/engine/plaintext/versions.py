"""Versions: every change writes version n+1 of a memory; nothing is overwritten.

Also the three-way merge of concurrent changes to a cube's JSONL files, used by the git merge driver:
the union of versions, in a deterministic order, with two different versions that claim the same number
both kept (renumbered by version, then time), never one lost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from memos_cli.cube import records
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.records import MemoryRecord, canonical_json, content_hash
from memos_cli.engine.ops import resolve_id
from memos_cli.engine.plaintext import temporal
from memos_cli.engine.plaintext.sources import parse_time
from memos_cli.errors import BadInput, MemoryNotFound, UsageError

EDITABLE = ("text", "type", "time", "speaker", "tags", "key", "status", "metadata")


@dataclass
class Update:
    text: str | None = None
    type: str | None = None
    time: str | None = None
    speaker: str | None = None
    tags: list[str] | None = None
    add_tags: list[str] | None = None
    remove_tags: list[str] | None = None
    key: str | None = None
    status: str | None = None

    def empty(self) -> bool:
        return all(v is None for v in vars(self).values())


def update(cube: Cube, ref: str, change: Update, *, actor: str | None = None) -> MemoryRecord:
    """Write version n+1 of a memory with ``change`` applied; returns the new version."""
    if change.empty():
        raise UsageError("nothing to change: give {text}, {tag}, {time}, ...", options=("text", "tag", "time"))
    if change.status is not None and change.status not in ("active", "archived"):
        raise UsageError(
            "{status} can set active or archived (supersession and purge have their own commands)",
            options=("status",),
        )
    if change.text is not None and not change.text.strip():
        raise UsageError("{text} must not be empty", options=("text",))
    try:
        when = parse_time(change.time, "{time}", ingesting=False) if change.time else None
    except BadInput as exc:
        raise UsageError(exc.template, options=(*exc.options, "time")) from None
    with cube.transaction(actor=actor, op="update") as tx:
        state = cube.read_state()
        memory_id = resolve_id(state, ref)
        old = state.current[memory_id]
        if old.status == "deleted":
            raise UsageError(f"memory {memory_id} is deleted")
        tags = list(old.tags) if change.tags is None else list(change.tags)
        tags += [t for t in (change.add_tags or []) if t not in tags]
        tags = [t for t in tags if t not in (change.remove_tags or [])]
        text = old.text if change.text is None else change.text.strip()
        new = replace(
            old,
            version=old.version + 1,
            text=text,
            type=change.type or old.type,
            time=when or old.time,
            speaker=change.speaker if change.speaker is not None else old.speaker,
            tags=tags,
            key=change.key if change.key is not None else old.key,
            status=change.status or old.status,
            # a new version is the user's resolution of a merge conflict: the marker goes
            metadata={k: v for k, v in old.metadata.items() if k != "conflict"},
            hash=content_hash(text, old.source.rsplit("/", 1)[-1] if old.source else None, old.source_id)
            if change.text is not None
            else old.hash,
            op="update",
            actor=tx.actor,
            created=utc_now(),
        )
        if new.text != old.text or new.time != old.time:  # what it says, or when, changed: re-resolve
            new.event_time = None
            temporal.annotate([new])
        volatile = {"version", "created", "actor", "op"}
        if {k: v for k, v in new.to_dict().items() if k not in volatile} == {
            k: v for k, v in old.to_dict().items() if k not in volatile
        }:
            raise UsageError("the change leaves the memory as it is")
        tx.add(new)
        changed = sorted(k for k in EDITABLE if getattr(new, k) != getattr(old, k))
        tx.log([memory_id], f"updated {memory_id} to version {new.version} ({', '.join(changed)})")
    return new


@dataclass
class HistoryEntry:
    version: int
    created: str
    actor: str | None
    op: str
    status: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def history(cube: Cube, ref: str, *, actor: str | None = None) -> tuple[str, list[HistoryEntry], list[dict[str, Any]]]:
    """Every version of a memory, and the audit entries that name it (purges included).

    A purged memory has no versions left; its id (given in full) still finds its tombstone."""
    cube.check(actor, "read")
    state = cube.read_state()
    try:
        memory_id = resolve_id(state, ref)
    except MemoryNotFound:
        memory_id = ref  # purged: only the audit log remembers it
    versions = [HistoryEntry(r.version, r.created, r.actor, r.op, r.status, r.text) for r in state.history(memory_id)]
    audit = [e for e in cube.read_audit() if memory_id in (e.get("ids") or [])]
    if not versions and not audit:
        raise MemoryNotFound(ref)
    return memory_id, versions, audit


# ------------------------------------------------------------------------------------------- merging


def _parse_lines(data: bytes, *, bounded: bool = True) -> list[dict[str, Any]]:
    """Parse JSONL under the record bounds (cube/records.py); audit lines without the size bound."""
    parse = records.loads if bounded else records.loads_unbounded
    out = []
    for line in data.decode("utf-8", errors="strict").splitlines():
        if line.strip():
            out.append(parse(line))
    return out


def merge_memories(base: bytes, ours: bytes, theirs: bytes, *, actor: str | None = None) -> bytes:
    """Three-way merge of ``memories.jsonl`` (see engine/plaintext/merge.py): every version on either side is
    kept, a memory changed on both sides is merged field by field against the common ancestor (a field
    changed two ways is kept both ways and marked as a conflict), a version purged on one side stays
    purged, and the key rules apply (one active memory per key). Deterministic."""
    from memos_cli.engine.plaintext.merge import merge_histories

    def parsed(data: bytes) -> list[MemoryRecord]:
        return [MemoryRecord.from_dict(r) for r in _parse_lines(data)] if data else []

    merged, _conflicts = merge_histories([parsed(ours), parsed(theirs)], base=parsed(base), actor=actor)
    # refuse to write anything a reader would reject (records.validate: the reader's own rules)
    return "".join(records.validate(r) + "\n" for r in merged).encode("utf-8")


def merge_audit(base: bytes, ours: bytes, theirs: bytes) -> bytes:
    """Union of both sides' audit lines (append-only: nothing is ever removed), ordered by time."""
    seen: dict[str, dict[str, Any]] = {}
    for data in (base, ours, theirs):
        for entry in _parse_lines(data, bounded=False) if data else []:
            seen.setdefault(canonical_json(entry), entry)
    ordered = sorted(seen.items(), key=lambda kv: (str(kv[1].get("time", "")), kv[0]))
    return "".join(line + "\n" for line, _ in ordered).encode("utf-8")
