"""Choosing memories for promote and distill: by id, by query, by tag, all, or the hottest.

``--hot N`` is the scheduler: the N active memories with the highest use count (query and chat hits),
each use decayed by its age, so what is used often and recently is promoted first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memos_cli.cube.bundle import Cube
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.ops import resolve_id
from memos_cli.engine.plaintext import usage
from memos_cli.errors import UsageError


@dataclass
class Selection:
    ids: list[str] = field(default_factory=list)
    query: str | None = None
    k: int = 10
    tags: list[str] = field(default_factory=list)
    all: bool = False
    hot: int | None = None
    half_life_days: float = usage.DEFAULT_HALF_LIFE_DAYS

    def empty(self) -> bool:
        return not (self.ids or self.query or self.tags or self.all or self.hot)

    def describe(self) -> dict[str, object]:
        """What was asked for, recorded in the manifest so --refresh can select again."""
        out: dict[str, object] = {}
        if self.ids:
            out["ids"] = self.ids
        if self.query:
            out["query"], out["k"] = self.query, self.k
        if self.tags:
            out["tags"] = self.tags
        if self.all:
            out["all"] = True
        if self.hot:
            out["hot"] = self.hot
        return out

    @classmethod
    def from_description(cls, data: dict[str, object]) -> Selection:
        """The selection a manifest entry recorded. The manifest may come from a stranger: a value of the
        wrong type is refused (ValueError), never passed on."""

        def strings(name: str) -> list[str]:
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"selection {name} must be a list of strings")
            return list(value)

        def optional(name: str, kind: type) -> object:
            value = data.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ValueError(f"selection {name} must be a {kind.__name__}")
            return value

        query = optional("query", str)
        k = optional("k", int)
        hot = optional("hot", int)
        return cls(
            ids=strings("ids"),
            query=query if isinstance(query, str) else None,
            k=k if isinstance(k, int) else 10,
            tags=strings("tags"),
            all=data.get("all") is True,
            hot=hot if isinstance(hot, int) else None,
        )


def select(cube: Cube, selection: Selection) -> list[MemoryRecord]:
    """The active memories a selection names, in a stable order (ids, query rank, hotness, then time);
    each memory once. Raises UsageError when the selection is empty or matches nothing."""
    if selection.empty():
        raise UsageError(
            "choose memories with {ids}, {query}, {tag}, {hot} N or {all}",
            options=("ids", "query", "tag", "hot", "all"),
        )
    state = cube.read_state()
    active = {i: r for i, r in state.current.items() if r.status == "active"}
    chosen: dict[str, MemoryRecord] = {}
    for ref in selection.ids:
        memory_id = resolve_id(state, ref)
        if memory_id not in active:
            raise UsageError(f"memory {memory_id} is {state.current[memory_id].status}, not active")
        chosen.setdefault(memory_id, active[memory_id])
    if selection.query:
        from memos_cli.engine.plaintext.query import Searcher

        with Searcher([cube], record_usage=False) as searcher:
            for hit in searcher.search(selection.query, k=selection.k):
                chosen.setdefault(hit.id, active[hit.id])
    if selection.hot:
        ranked = usage.hot(cube, len(state.current), half_life_days=selection.half_life_days)
        for memory_id in [i for i in ranked if i in active][: selection.hot]:
            chosen.setdefault(memory_id, active[memory_id])
    by_time = sorted(active.values(), key=lambda r: (r.time or "", r.created, r.id))
    if selection.tags:
        for record in by_time:
            if set(selection.tags).issubset(record.tags):
                chosen.setdefault(record.id, record)
    if selection.all:
        for record in by_time:
            chosen.setdefault(record.id, record)
    if not chosen:
        raise UsageError("the selection matches no active memory")
    return list(chosen.values())
