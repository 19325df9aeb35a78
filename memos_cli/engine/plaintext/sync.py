"""Source sync: a file ingested again updates the memories it produced before, as new versions.

Identity of a passage (docs/FORMAT.md, "Source identity"): the memory's ``source`` (the file as ingest
named it), then

1. its content: a passage whose text is unchanged is the same memory (nothing is written);
2. its ``source_id`` where the format has one (JSONL ``id``/``source_id``, a chat message id): the
   record with that id is the same memory, whatever its text;
3. otherwise its place: the heading path (markdown ``metadata.heading``; none for plain text and
   JSONL without ids) and, among the passages under that heading that changed, the most similar text
   (then the same order). A changed passage becomes version n+1 of its memory (op ``sync``).

Memories of the source whose passage is gone *vanished*: ``--sync`` archives them (a new version, op
``sync``, nothing deleted); without it they are only reported. Stdin (``-``) has no identity: it is
never synced.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from memos_cli.cube.bundle import CubeState
from memos_cli.cube.records import MemoryRecord

STDIN = "-"
MIN_SIMILARITY = 0.3  # below this a changed passage is another passage (vanished + new), not an edit
MAX_PAIRS = 40_000  # beyond this many candidate pairs under one heading, pair in order (no similarity)


@dataclass
class SyncPlan:
    fresh: list[MemoryRecord] = field(default_factory=list)  # new memories
    changed: list[MemoryRecord] = field(default_factory=list)  # new versions of existing memories
    vanished: list[MemoryRecord] = field(default_factory=list)  # current memories whose passage is gone
    unchanged: int = 0

    def vanished_versions(self, *, actor: str | None, now: str) -> list[MemoryRecord]:
        """The ``archived`` versions that ``--sync`` writes for vanished passages."""
        return [
            replace(r, version=r.version + 1, status="archived", op="sync", actor=actor, created=now)
            for r in self.vanished
        ]


def _group(record: MemoryRecord) -> str:
    heading = record.metadata.get("heading")
    return heading if isinstance(heading, str) else ""


def _edit(old: MemoryRecord, new: MemoryRecord, now: str) -> MemoryRecord:
    """Version n+1 of ``old`` carrying the passage ``new`` as the source now has it."""
    return replace(
        old,
        version=old.version + 1,
        text=new.text,
        hash=new.hash,
        span=new.span,
        time=new.time or old.time,
        speaker=new.speaker or old.speaker,
        key=new.key or old.key,
        type=new.type or old.type,
        tags=list(dict.fromkeys([*old.tags, *new.tags])),
        metadata={**old.metadata, **new.metadata},
        status="active",
        op="sync",
        actor=new.actor,
        created=now,
    )


def _pair(olds: list[MemoryRecord], news: list[MemoryRecord]) -> list[tuple[MemoryRecord, MemoryRecord]]:
    """Changed passages under one heading, paired by text similarity (greedy, best first)."""
    if not olds or not news:
        return []
    if len(olds) * len(news) > MAX_PAIRS:
        return list(zip(olds, news, strict=False))
    scored = []
    for i, old in enumerate(olds):
        for j, new in enumerate(news):
            ratio = difflib.SequenceMatcher(None, old.text, new.text, autojunk=False).ratio()
            if ratio >= MIN_SIMILARITY:
                scored.append((-ratio, abs(i - j), i, j))
    scored.sort()
    used_old: set[int] = set()
    used_new: set[int] = set()
    pairs = []
    for _score, _distance, i, j in scored:
        if i in used_old or j in used_new:
            continue
        used_old.add(i)
        used_new.add(j)
        pairs.append((olds[i], news[j]))
    return pairs


def plan_source(
    name: str,
    records: list[MemoryRecord],
    state: CubeState,
    now: str,
    plan: SyncPlan,
    by_source: dict[str, list[MemoryRecord]] | None = None,
) -> None:
    """Add to ``plan`` what ingesting ``records`` (parsed from source ``name``) changes."""
    if by_source is None:
        by_source = _by_source(state)
    known = [r for r in by_source.get(name, []) if r.status != "deleted"] if name != STDIN else []
    by_hash = {r.hash: r for r in known if r.hash}
    matched: set[str] = set()
    pending: list[MemoryRecord] = []
    for record in records:
        old = by_hash.get(record.hash)
        if old is not None and old.id not in matched:
            matched.add(old.id)
            plan.unchanged += 1
        elif old is not None or record.id in state.current:
            plan.unchanged += 1  # repeated in this source, or the same passage stored from elsewhere
        else:
            pending.append(record)
    # only active memories follow their source; an archived or superseded one stays as it was
    open_ = [r for r in known if r.id not in matched and r.status == "active"]
    by_source_id = {r.source_id: r for r in open_ if r.source_id is not None}
    rest: list[MemoryRecord] = []
    for record in pending:
        old = by_source_id.get(record.source_id) if record.source_id is not None else None
        if old is not None and old.id not in matched:
            matched.add(old.id)
            plan.changed.append(_edit(old, record, now))
        else:
            rest.append(record)
    leftovers = [r for r in open_ if r.id not in matched and r.source_id is None]
    groups = sorted({_group(r) for r in [*rest, *leftovers]})
    paired_new: set[int] = set()
    for group in groups:
        olds = sorted((r for r in leftovers if _group(r) == group), key=lambda r: (r.span or [0])[0])
        news = [r for r in rest if _group(r) == group]
        for old, new in _pair(olds, news):
            matched.add(old.id)
            paired_new.add(id(new))
            plan.changed.append(_edit(old, new, now))
    seen_ids = set(state.current)
    for record in rest:
        if id(record) not in paired_new and record.id not in seen_ids:
            seen_ids.add(record.id)
            plan.fresh.append(record)
    plan.vanished.extend(r for r in open_ if r.id not in matched)


def _by_source(state: CubeState) -> dict[str, list[MemoryRecord]]:
    out: dict[str, list[MemoryRecord]] = {}
    for record in state.current.values():
        if record.source:
            out.setdefault(record.source, []).append(record)
    return out


def plan_sync(sources: list[tuple[str, list[MemoryRecord]]], state: CubeState, now: str) -> SyncPlan:
    """What ingesting these parsed sources does to the cube: new memories, new versions, vanished."""
    plan = SyncPlan()
    by_source = _by_source(state)
    for name, records in sources:
        plan_source(name, records, state, now, plan, by_source)
    unique: dict[str, MemoryRecord] = {}
    for record in plan.fresh:  # the same passage in two sources of one ingest is stored once
        unique.setdefault(record.id, record)
    plan.unchanged += len(plan.fresh) - len(unique)
    plan.fresh = list(unique.values())
    return plan
