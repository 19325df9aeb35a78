"""Semantic merges of cube histories: used by the git merge driver and by fuse.

Two histories of one cube (two git branches, or two copies of a cube that diverged) are merged the way
a person would merge them, never by text hunks:

- every version on either side is kept (a version removed on one side since the ancestor was purged);
- a memory changed on both sides is merged field by field against the common ancestor version (the
  newest version both sides hold unchanged): a field changed on one side takes that side's value; tags
  are merged as sets (added on either side, removed on either side); metadata key by key. The result is
  a new version (op ``merge``) on top of both sides' versions, which are renumbered, never dropped;
- a field changed *two ways* is a real conflict: the merged version takes the later side's value and
  names the conflict in ``metadata.conflict`` (``{"fields": [...], "versions": [a, b]}``: the two
  versions holding the competing values). ``memos conflicts`` lists them and ``memos verify`` reports
  them; ``memos update`` resolves one (its new version drops the marker);
- then the key rules of ingest apply: one active memory per ``key``, the newer (by time, then created).

Everything here is deterministic: the same inputs in either order give the same output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from memos_cli.cube.records import MemoryRecord

if TYPE_CHECKING:
    from memos_cli.cube.bundle import Cube

# Fields merged three-way. ``hash``, ``source``, ``source_id`` and ``span`` follow ``text``.
MERGED_FIELDS = ("text", "type", "time", "speaker", "tags", "key", "status", "metadata", "supersedes")
FOLLOW_TEXT = ("hash", "source", "source_id", "span")
CONFLICT = "conflict"  # metadata key naming an unresolved conflict
RETIRED = ("archived", "superseded", "deleted")  # statuses that take a memory out of use, weakest first


def _ck(record: MemoryRecord) -> str:
    """``record.content_key()``, computed once per record object (a merge asks for it many times; the
    records here are never mutated, ``replace`` makes new ones)."""
    cached = record.__dict__.get("_content_key")
    if cached is None:
        cached = record.__dict__["_content_key"] = record.content_key()
    return cached


def _order(record: MemoryRecord) -> tuple[Any, ...]:
    return (record.version, record.created, _ck(record))


def _dedup(records: Iterable[MemoryRecord]) -> dict[str, MemoryRecord]:
    """Versions by content (the same version written twice, at other times or by others, kept once:
    the earliest)."""
    out: dict[str, MemoryRecord] = {}
    for record in records:
        key = _ck(record)
        held = out.get(key)
        if held is None or record.created < held.created:
            out[key] = record
    return out


def _merge_tags(base: list[str], ours: list[str], theirs: list[str]) -> list[str]:
    b, o, t = set(base), set(ours), set(theirs)
    both = o & t
    return [
        x for x in dict.fromkeys([*ours, *theirs]) if x in both or (x in o and x not in b) or (x in t and x not in b)
    ]


def _merge_dict(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any], prefix: str, later_is_ours: bool
) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    conflicts: list[str] = []
    missing = object()
    for key in sorted(set(base) | set(ours) | set(theirs)):
        b, o, t = base.get(key, missing), ours.get(key, missing), theirs.get(key, missing)
        if o == t:
            value = o
        elif o == b:
            value = t
        elif t == b:
            value = o
        else:
            conflicts.append(f"{prefix}{key}")
            value = o if later_is_ours else t
        if value is not missing:
            out[key] = value
    return out, conflicts


def three_way(base: MemoryRecord | None, ours: MemoryRecord, theirs: MemoryRecord) -> tuple[dict[str, Any], list[str]]:
    """The merged field values of two heads against their ancestor, and the fields changed two ways."""
    later_is_ours = (ours.created, _ck(ours)) >= (theirs.created, _ck(theirs))
    values: dict[str, Any] = {}
    conflicts: list[str] = []
    for name in MERGED_FIELDS:
        o, t = getattr(ours, name), getattr(theirs, name)
        b = getattr(base, name) if base is not None else None
        if name == "tags":
            values[name] = _merge_tags(list(b or []), list(o), list(t))
            continue
        if name == "metadata":
            bm = {k: v for k, v in (b or {}).items() if k != CONFLICT}
            om = {k: v for k, v in o.items() if k != CONFLICT}
            tm = {k: v for k, v in t.items() if k != CONFLICT}
            values[name], found = _merge_dict(bm, om, tm, "metadata.", later_is_ours)
            conflicts.extend(found)
            continue
        if o == t:
            values[name] = o
        elif name == "status" and o != "active" and t != "active":
            # both sides retired the memory (archived here, superseded by a newer fact there): no real
            # disagreement; the stronger reason stands
            values[name] = max(o, t, key=lambda s: RETIRED.index(s) if s in RETIRED else -1)
        elif base is not None and o == b:
            values[name] = t
        elif base is not None and t == b:
            values[name] = o
        else:
            conflicts.append(name)
            values[name] = o if later_is_ours else t
    # provenance and hash go with the text that was taken
    text_from = ours if values["text"] == ours.text else theirs
    for name in FOLLOW_TEXT:
        values[name] = getattr(text_from, name)
    return values, conflicts


def merge_memory(
    ours: list[MemoryRecord], theirs: list[MemoryRecord], *, actor: str | None
) -> tuple[list[MemoryRecord], list[str]]:
    """All versions of one memory from two histories, merged; returns the versions and the conflicting
    fields (empty when none)."""
    ours_by = _dedup(ours)
    theirs_by = _dedup(theirs)
    shared_keys = set(ours_by) & set(theirs_by)
    # the common ancestor: the newest version both sides hold (same number, same content)
    shared = [ours_by[k] for k in shared_keys]
    ancestor = max(shared, key=_order) if shared else None
    only_ours = sorted((r for k, r in ours_by.items() if k not in shared_keys), key=_order)
    only_theirs = sorted((r for k, r in theirs_by.items() if k not in shared_keys), key=_order)
    everything = sorted(_dedup([*ours, *theirs]).values(), key=_order)
    if not only_ours or not only_theirs:  # one side did nothing new: its history is a prefix
        numbers = [r.version for r in everything]
        if len(set(numbers)) == len(numbers):
            return everything, []
    # both sides changed the memory: keep every version (renumbered in order), then a merge version
    renumbered = [replace(r, version=i + 1) for i, r in enumerate(everything)]
    if not only_ours or not only_theirs:
        return renumbered, []
    position = {_ck(old): new.version for new, old in zip(renumbered, everything, strict=True)}
    head_o, head_t = only_ours[-1], only_theirs[-1]
    if _ck(head_o) == _ck(head_t):
        return renumbered, []
    values, conflicts = three_way(ancestor, head_o, head_t)
    metadata = dict(values["metadata"])
    if conflicts:
        versions = sorted({position[_ck(head_o)], position[_ck(head_t)]})
        metadata[CONFLICT] = {"fields": sorted(conflicts), "versions": versions}
    values["metadata"] = metadata
    latest = max(head_o, head_t, key=lambda r: (r.created, _ck(r)))
    merged = replace(
        latest,
        **values,
        version=len(renumbered) + 1,
        op="merge",
        actor=actor or latest.actor,
        created=latest.created,
    )
    return [*renumbered, merged], sorted(conflicts)


def merge_histories(
    sides: list[list[MemoryRecord]],
    *,
    base: list[MemoryRecord] | None = None,
    actor: str | None = None,
    key_rules: bool = True,
) -> tuple[list[MemoryRecord], dict[str, list[str]]]:
    """Merge several histories of one cube (a list of all versions each). A version of ``base`` missing
    from any side was purged there and stays purged. Returns all versions, in a deterministic order
    (created, id, version), with key rules applied, and the conflicting fields by memory id."""
    purged: set[str] = set()
    if base:
        present = [{_ck(r) for r in side} for side in sides]
        purged = {_ck(r) for r in base if any(_ck(r) not in p for p in present)}
    by_side: list[dict[str, list[MemoryRecord]]] = []
    for side in sides:
        grouped: dict[str, list[MemoryRecord]] = {}
        for record in side:
            if _ck(record) not in purged:
                grouped.setdefault(record.id, []).append(record)
        by_side.append(grouped)
    ids = sorted({i for grouped in by_side for i in grouped})
    conflicts: dict[str, list[str]] = {}
    merged: dict[str, list[MemoryRecord]] = {}
    for memory_id in ids:
        acc: list[MemoryRecord] | None = None
        for grouped in by_side:
            records = grouped.get(memory_id)
            if records is None:
                continue
            if acc is None:
                acc = sorted(_dedup(records).values(), key=_order)
                continue
            acc, found = merge_memory(acc, records, actor=actor)
            if found:
                conflicts[memory_id] = sorted(set(conflicts.get(memory_id, [])) | set(found))
        merged[memory_id] = acc or []
    extra = apply_key_rules({i: recs[-1] for i, recs in merged.items() if recs}, actor=actor) if key_rules else []
    for record in extra:
        merged[record.id].append(record)
    out = [r for recs in merged.values() for r in recs]
    out.sort(key=lambda r: (r.created, r.id, r.version))
    return out, conflicts


def apply_key_rules(current: dict[str, MemoryRecord], *, actor: str | None, op: str = "merge") -> list[MemoryRecord]:
    """Ingest's rule after a merge: one active memory per key, the newer (time, then created, then id);
    returns the ``superseded`` versions to add for the others."""
    by_key: dict[str, list[MemoryRecord]] = {}
    for record in current.values():
        if record.key and record.status == "active":
            by_key.setdefault(record.key, []).append(record)
    out: list[MemoryRecord] = []
    for records in by_key.values():
        if len(records) < 2:
            continue
        records.sort(key=lambda r: (r.time or "", r.created, r.id))
        newest = records[-1]
        for older in records[:-1]:
            out.append(
                replace(
                    older,
                    version=older.version + 1,
                    status="superseded",
                    op=op,
                    actor=actor or newest.actor,
                    created=max(older.created, newest.created),
                    metadata={**older.metadata, "superseded_by": newest.id},
                )
            )
    return out


def conflicts_of(current: Iterable[MemoryRecord]) -> list[MemoryRecord]:
    """Current versions that carry an unresolved conflict marker."""
    return [r for r in current if isinstance(r.metadata.get(CONFLICT), dict) and r.status != "deleted"]


# ------------------------------------------------------------------------------------------- manifest


def merge_manifest(base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Three-way merge of two ``cube.yaml`` mappings: key by key, recursively; lists of names (readers,
    writers) as sets; ``updated`` is the later of the two. A value changed two ways takes the side
    updated later (the kv/lora payloads it names are merged, or conflict, in git as files)."""
    later_is_ours = str(ours.get("updated") or "") >= str(theirs.get("updated") or "")
    merged: dict[str, Any] = _merge_value(base, ours, theirs, later_is_ours, top=True)
    return merged


def _merge_value(base: Any, ours: Any, theirs: Any, later_is_ours: bool, *, top: bool = False) -> Any:
    if ours == theirs:
        return ours
    if isinstance(ours, dict) and isinstance(theirs, dict):
        base = base if isinstance(base, dict) else {}
        out: dict[str, Any] = {}
        missing = object()
        for key in sorted(set(base) | set(ours) | set(theirs)):
            b, o, t = base.get(key, missing), ours.get(key, missing), theirs.get(key, missing)
            if top and key == "updated":
                value = max(str(o if o is not missing else ""), str(t if t is not missing else "")) or None
            elif o == t:
                value = o
            elif o == b:
                value = t
            elif t == b:
                value = o
            elif o is missing or t is missing:
                value = o if later_is_ours else t
            else:
                value = _merge_value(None if b is missing else b, o, t, later_is_ours)
            if value is not missing:
                out[key] = value
        return out
    if isinstance(ours, list) and isinstance(theirs, list) and all(isinstance(x, str) for x in [*ours, *theirs]):
        return _merge_tags(list(base) if isinstance(base, list) else [], ours, theirs)
    if base == ours:
        return theirs
    if base == theirs:
        return ours
    return ours if later_is_ours else theirs


def list_conflicts(cube: Cube, *, actor: str | None = None) -> list[dict[str, Any]]:
    """Each memory with an unresolved merge conflict: its id, the fields, and each competing version's
    value of them (resolve with ``memos update``: the new version drops the marker)."""
    cube.check(actor, "read")
    state = cube.read_state()
    out = []
    for record in sorted(conflicts_of(state.current.values()), key=lambda r: r.id):
        marker = record.metadata[CONFLICT]
        versions = {r.version: r for r in state.history(record.id)}
        values: dict[str, list[dict[str, Any]]] = {}
        for name in marker.get("fields", []):
            field = name.split(".", 1)
            for number in marker.get("versions", []):
                held = versions.get(number)
                if held is None:
                    continue
                value = held.metadata.get(field[1]) if len(field) == 2 else getattr(held, name, None)
                values.setdefault(name, []).append(
                    {"version": number, "actor": held.actor, "created": held.created, "value": value}
                )
        out.append({"id": record.id, "version": record.version, "fields": marker.get("fields", []), "values": values})
    return out
