"""Query: hybrid retrieval over one or more cubes, with filters, usage counting and batch mode.

A ``Searcher`` loads each cube's index once and answers many queries (``query --batch`` and chat use
one). Filters become a boolean row mask, computed with numpy over per-row columns built at load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memos_cli.cube.bundle import Cube, CubeState
from memos_cli.cube.records import STATUSES, MemoryRecord
from memos_cli.engine.embedding import EmbedderHandle
from memos_cli.engine.plaintext import temporal, usage
from memos_cli.engine.plaintext.index import CubeIndex, open_index
from memos_cli.engine.plaintext.sources import parse_time
from memos_cli.engine.plaintext.working import ANSWER_TAG, WORKING_TAG, demoted_score, is_answer, is_working
from memos_cli.errors import BadInput, UsageError

MODES = ("hybrid", "dense", "lexical")
TIME_FIELDS = ("either", "event", "said")


@dataclass
class Filters:
    tags: list[str] = field(default_factory=list)  # all must be present
    types: list[str] = field(default_factory=list)  # any of
    speakers: list[str] = field(default_factory=list)  # any of (case-insensitive)
    since: str | None = None  # ISO date/time, inclusive
    until: str | None = None  # ISO date/time, inclusive
    status: str = "active"  # a status, or "all"
    time_field: str = "either"  # what --since/--until match: event time, said time (`time`), or either

    # The working tier (engine/plaintext/working.py): left out of retrieval unless asked, and then ranked below
    # long-term memories; the model's own answers only when asked for by their tag.
    include_working: bool = False

    def __post_init__(self) -> None:
        if self.status != "all" and self.status not in STATUSES:
            raise UsageError(f"{{status}} must be one of {', '.join(STATUSES)} or all", options=("status",))
        if self.time_field not in TIME_FIELDS:
            raise UsageError(f"{{time_field}} must be one of {', '.join(TIME_FIELDS)}", options=("time_field",))
        try:
            self.since = parse_time(self.since, "{since}", ingesting=False) if self.since else None
            self.until = parse_time(self.until, "{until}", ingesting=False) if self.until else None
        except BadInput as exc:
            raise UsageError(exc.template, options=(*exc.options, "since", "until")) from None
        self._since = _epoch(self.since) if self.since else None
        self._until = _epoch(self.until) if self.until else None
        if self._until is not None and self.until and "T" not in self.until:
            self._until += 86400 - 1e-3  # a date bound includes the whole day

    def narrows(self) -> bool:
        """Whether anything beyond the status filter applies."""
        return bool(self.tags or self.types or self.speakers or self.since or self.until)

    def matches(self, record: MemoryRecord, *, check_status: bool = True) -> bool:
        if check_status:
            if self.status == "all":
                if record.status == "deleted":
                    return False
            elif record.status != self.status:
                return False
        if self.types and record.type not in self.types:
            return False
        if self.speakers and (record.speaker or "").lower() not in {s.lower() for s in self.speakers}:
            return False
        if self.tags and not set(self.tags).issubset(record.tags):
            return False
        if self._since is not None or self._until is not None:
            said = self.time_field != "event" and self._said_in_window(record)
            if not said and not (self.time_field != "said" and self._event_in_window(record)):
                return False
        return True

    def _said_in_window(self, record: MemoryRecord) -> bool:
        when = _epoch(record.time)
        if when != when:  # NaN: no time, so outside any time window
            return False
        if self._since is not None and when < self._since:
            return False
        return not (self._until is not None and when > self._until)

    def _event_in_window(self, record: MemoryRecord) -> bool:
        """Whether an event interval of the record overlaps the window (compared by day)."""
        since = self.since[:10] if self.since else "0000-01-01"
        until = self.until[:10] if self.until else "9999-12-31"
        events = temporal.intervals_of(record.event_time)
        return any(i.start.isoformat() <= until and i.end.isoformat() >= since for i in events)


@dataclass
class QueryHit:
    id: str
    version: int
    text: str
    score: float
    type: str
    time: str | None
    speaker: str | None
    tags: list[str]
    source: str | None
    source_id: str | None
    status: str
    cube: str  # the cube's name, for people
    event_time: list[dict[str, str]] | None = None
    cube_path: str = ""  # where the cube is: two cubes may share a name

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "text": self.text,
            "score": round(self.score, 6),
            "type": self.type,
            "time": self.time,
            "speaker": self.speaker,
            "tags": self.tags,
            "source": self.source,
            "source_id": self.source_id,
            "status": self.status,
            "cube": self.cube,
            "cube_path": self.cube_path,
            "event_time": self.event_time,
        }


def _epoch(value: str | None) -> float:
    """Seconds since the epoch of an ISO date/time (naive values taken as UTC); NaN if unknown."""
    if not value:
        return float("nan")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return float("nan")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class _CubeView:
    """One cube's records and index, with per-row columns for filtering."""

    def __init__(self, cube: Cube, state: CubeState, index: CubeIndex) -> None:
        self.cube = cube
        self.state = state
        self.index = index
        n = len(index.rows)
        self.records: list[MemoryRecord | None] = [None] * n
        for memory_id, row in index.current.items():
            record = state.current.get(memory_id)
            if record is not None:
                self.records[row] = record
        present = np.array([r is not None for r in self.records], dtype=bool)
        self.status_mask = {
            status: present & np.array([r is not None and r.status == status for r in self.records], dtype=bool)
            for status in STATUSES
        }
        self.status_mask["all"] = present & ~self.status_mask["deleted"]
        # Relative periods in a query ("last summer") are read against the cube's latest time.
        times = [r.time for r in self.records if r is not None and r.time]
        self.latest = max(times) if times else None
        self.working = np.array([r is not None and is_working(r) for r in self.records], dtype=bool)
        self.answer = np.array([r is not None and is_answer(r) for r in self.records], dtype=bool)

    def periods(self, query: str) -> tuple[list[tuple[str, str]], str]:
        """The periods ``query`` names, as inclusive ISO dates, and the query's lexical text with the
        dates a relative period resolves to ("last summer" -> "June 2023 July 2023 August 2023")."""
        return temporal.query_plan(query, self.latest)

    def mask(self, filters: Filters) -> np.ndarray:
        mask: np.ndarray = self.status_mask[filters.status].copy()
        if ANSWER_TAG not in filters.tags:
            mask &= ~self.answer
        if not filters.include_working and WORKING_TAG not in filters.tags:
            mask &= ~self.working
        if filters.narrows():
            mask &= np.array([r is not None and filters.matches(r, check_status=False) for r in self.records])
        return mask


class Searcher:
    """Answers queries over one or more cubes; load once, query many times."""

    def __init__(
        self,
        cubes: Sequence[Cube],
        *,
        mode: str = "hybrid",
        embedder: EmbedderHandle | None = None,
        record_usage: bool = True,
        progress: Callable[[int, int], None] | None = None,
        actor: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"{{retrieval}} must be one of {', '.join(MODES)}", options=("retrieval",))
        self.mode = mode
        self.embedder = embedder or EmbedderHandle()
        self.record_usage = record_usage
        self.views: list[_CubeView] = []
        self._pending_usage: dict[str, list[list[str]]] = {}
        for cube in cubes:
            cube.check(actor, "read")
            self.views.append(self._view(cube, progress))

    def _view(self, cube: Cube, progress: Callable[[int, int], None] | None = None) -> _CubeView:
        ident = self.embedder.identity
        state = cube.read_state()
        if self.embedder.engine is not None:  # an index rebuild runs on the cluster, staged per cube
            self.embedder.engine.stage_in(cube.path)
        index = open_index(
            cube, state, self.embedder.load, dim=ident.dim, embedder_name=ident.fingerprint, progress=progress
        )
        if self.embedder.engine is not None:
            self.embedder.engine.clear_stage()  # the index holds the vectors now
        return _CubeView(cube, state, index)

    def record(self, cube_path: str, memory_id: str) -> MemoryRecord | None:
        """The current version of ``memory_id`` in the searched cube at ``cube_path`` (a hit's cube)."""
        for view in self.views:
            if str(view.cube.path) == cube_path:
                return view.state.current.get(memory_id)
        return None

    def refresh(self, cube: Cube) -> None:
        """Bring the view of ``cube`` (by path) up to date after a write to it; the other cubes' views
        stay as they are. The index is brought up to date incrementally (rows already indexed are kept)."""
        for i, view in enumerate(self.views):
            if view.cube.path == cube.path:
                self.views[i] = self._view(cube)

    def _query_vector(self, text: str) -> np.ndarray:
        if self.mode == "lexical":
            return np.zeros(self.embedder.identity.dim, dtype=np.float32)  # unused: no torch needed
        vec: np.ndarray = self.embedder.load().encode([text])[0]
        return vec

    def search(self, text: str, *, k: int = 10, filters: Filters | None = None) -> list[QueryHit]:
        if k < 1:
            raise UsageError("-k must be at least 1")
        if not text.strip():
            raise UsageError("the query is empty: give some words to search for")
        filters = filters or Filters()
        query_vec = self._query_vector(text)
        masks = self._masks(filters)
        ranked: list[list[tuple[int, float]]] = []
        for view, mask in zip(self.views, masks, strict=True):
            if mask is None:
                ranked.append([])
                continue
            lexical, periods, demote = self._plan(view, mask, text, filters)
            rows = view.index.ranker().rank(
                lexical, query_vec, k=2 * k if demote else k, mode=self.mode, mask=mask, periods=periods
            )
            ranked.append(self._demoted(view, rows, k) if demote else rows)
        return self._hits(ranked, k)

    def _plan(
        self, view: _CubeView, mask: np.ndarray, text: str, filters: Filters
    ) -> tuple[str, list[tuple[str, str]], bool]:
        """What one view ranks for ``text``: the lexical text (relative periods spelled out), the periods
        the query names, and whether working-tier rows are demoted (asked for, and some are allowed)."""
        periods, lexical = view.periods(text)
        return lexical, periods, filters.include_working and bool((mask & view.working).any())

    def _demoted(self, view: _CubeView, rows: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        return sorted(
            ((row, demoted_score(score, self.mode) if view.working[row] else score) for row, score in rows),
            key=lambda pair: -pair[1],
        )[:k]

    def search_batch(self, texts: list[str], *, k: int = 10, filters: Filters | None = None) -> list[list[QueryHit]]:
        """Many queries at once; with ``--engine ray`` the cluster embeds and ranks them (same results:
        the same lexical text, periods and k per view are shipped, and demotion is applied here)."""
        if k < 1:
            raise UsageError("-k must be at least 1")
        filters = filters or Filters()
        engine = self.embedder.engine
        if engine is None or not texts:
            return [self.search(text, k=k, filters=filters) for text in texts]
        masks = self._masks(filters)
        payload = [
            (None, None) if mask is None else (view.index.ranker(), mask)
            for view, mask in zip(self.views, masks, strict=True)
        ]
        plans = [
            [
                None if mask is None else self._plan(view, mask, text, filters)
                for view, mask in zip(self.views, masks, strict=True)
            ]
            for text in texts
        ]
        specs = [
            (text, [None if plan is None else (plan[0], plan[1], 2 * k if plan[2] else k) for plan in per_view])
            for text, per_view in zip(texts, plans, strict=True)
        ]
        ranked = engine.rank_batch(payload, specs, k=k, mode=self.mode)
        out = []
        for per_view, per_plan in zip(ranked, plans, strict=True):
            rows = [
                self._demoted(view, view_rows, k) if plan is not None and plan[2] else view_rows
                for view, view_rows, plan in zip(self.views, per_view, per_plan, strict=True)
            ]
            out.append(self._hits(rows, k))
        return out

    def _masks(self, filters: Filters) -> list[np.ndarray | None]:
        """Each view's allowed rows, or None when none are."""
        masks: list[np.ndarray | None] = []
        for view in self.views:
            mask = view.mask(filters) if view.records else None
            masks.append(mask if mask is not None and mask.any() else None)
        return masks

    def _hits(self, ranked_per_view: list[list[tuple[int, float]]], k: int) -> list[QueryHit]:
        hits: list[QueryHit] = []
        for view, ranked in zip(self.views, ranked_per_view, strict=True):
            for row, score in ranked:
                record = view.records[row]
                if record is None:
                    continue
                hits.append(
                    QueryHit(
                        id=record.id,
                        version=record.version,
                        text=record.text,
                        score=float(score),
                        type=record.type,
                        time=record.time,
                        speaker=record.speaker,
                        tags=list(record.tags),
                        source=record.source,
                        source_id=record.source_id,
                        status=record.status,
                        cube=view.cube.manifest.name,
                        cube_path=str(view.cube.path),
                        event_time=record.event_time,
                    )
                )
            if self.record_usage and ranked:
                self._pending_usage.setdefault(str(view.cube.path), []).append(
                    [view.records[row].id for row, _ in ranked if view.records[row] is not None]  # type: ignore[union-attr]
                )
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def flush_usage(self) -> None:
        """Record the hits as uses of their memories (for the 'hot' scheduler); cheap appends."""
        for view in self.views:
            batches = self._pending_usage.pop(str(view.cube.path), None)
            if batches:
                usage.record(view.cube, batches)

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush_usage()


def query(
    cube: Cube, text: str, *, k: int = 10, filters: Filters | None = None, mode: str = "hybrid"
) -> list[QueryHit]:
    """One query against one cube (the simple Python API; use ``Searcher`` for many queries)."""
    with Searcher([cube], mode=mode) as searcher:
        return searcher.search(text, k=k, filters=filters)
