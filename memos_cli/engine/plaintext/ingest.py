"""Ingest: sources -> plaintext memories, deduplicated, embedded in batches, with no LLM call.

The expensive part (embedding) runs before the cube lock is taken; the transaction that appends the
records is short. Bad input fails the whole ingest before anything is written, unless ``skip_bad``.

Why one module of ~450 lines: parse (drafts -> records) and store (one transaction, then the index) are
split into functions, not modules, because ``ingest_drafts`` (chat turns) enters between them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memos_cli.config import index_shard_rows
from memos_cli.cube.bundle import Cube, CubeState, Transaction, utc_now
from memos_cli.cube.records import MemoryRecord, content_hash, memory_id_for, validate
from memos_cli.engine.embedding import EmbedderHandle
from memos_cli.engine.plaintext import index as index_mod
from memos_cli.engine.plaintext import ranking, temporal
from memos_cli.engine.plaintext.sources import DATE_ORDERS, Draft, Rejected, parse_source, parse_time
from memos_cli.engine.plaintext.sync import SyncPlan, plan_sync
from memos_cli.errors import FIX_INPUT, SKIP_BAD_HINT, BadInput, UsageError, after_commit
from memos_cli.words import plural

Progress = Callable[[int, int], None]


@dataclass
class Source:
    """One input: its display name (a relative path, or "-" for stdin) and its bytes."""

    name: str
    data: bytes

    @classmethod
    def from_path(cls, path: str) -> Source:
        if path == "-":
            import sys

            return cls("-", sys.stdin.buffer.read())
        file = Path(path)
        if file.is_dir():
            raise BadInput(path, "is a directory (pass the files in it)")
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise BadInput(path, "no such file", hint="check the path") from None
        except OSError as exc:
            raise BadInput(path, f"cannot read ({exc.strerror})", hint="check the path") from None
        return cls(display_name(file), data)


def display_name(file: Path) -> str:
    """The source name stored in the cube: the path relative to the working directory when the file
    is under it, else the file name alone; never an absolute machine path."""
    try:
        rel = Path(os.path.relpath(file.resolve(), Path.cwd()))
    except ValueError:
        return file.name
    if rel.is_absolute() or rel.parts[:1] == ("..",):
        return file.name
    return rel.as_posix()


@dataclass
class Defaults:
    """Values for fields a record does not set itself (``--tag``, ``--type``, ``--speaker``, ``--time``),
    the date relative times are read against (``--time-base``), and the order of day and month in
    numeric dates that leave it open (``--date-order`` dmy or mdy)."""

    tags: list[str] = field(default_factory=list)
    type: str | None = None
    speaker: str | None = None
    time: str | None = None
    time_base: str | None = None
    date_order: str | None = None


@dataclass
class SourceReport:
    source: str
    format: str
    records: int
    added: int
    duplicates: int
    rejected: int


@dataclass
class IngestReport:
    added: int
    duplicates: int
    rejected: list[Rejected]
    sources: list[SourceReport]
    ids: list[str]
    superseded: list[str]
    embedded: int
    seconds: float
    engine: dict[str, object] | None = None  # --engine ray: nodes, actors, fixed seconds, rate
    updated: list[str] = field(default_factory=list)  # memories whose passage changed: a new version
    vanished: list[str] = field(default_factory=list)  # memories whose passage left its source
    archived: list[str] = field(default_factory=list)  # the vanished ones archived (--sync)
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "updated": self.updated,
            "vanished": self.vanished,
            "archived": self.archived,
            "dry_run": self.dry_run,
            "added": self.added,
            "duplicates": self.duplicates,
            "rejected": [{"where": r.where, "problem": r.problem} for r in self.rejected],
            "sources": [vars(s) for s in self.sources],
            "ids": self.ids,
            "superseded": self.superseded,
            "embedded": self.embedded,
            "seconds": round(self.seconds, 3),
            **({"engine": self.engine} if self.engine is not None else {}),
        }


def _record(draft: Draft, defaults: Defaults, fmt: str, now: str, actor: str | None) -> MemoryRecord:
    chash = content_hash(draft.text, Path(draft.source).name, draft.source_id)
    kind = draft.type or defaults.type or ("dialogue" if fmt == "chat" else "document" if fmt != "jsonl" else "note")
    tags = list(dict.fromkeys([*draft.tags, *defaults.tags]))
    return MemoryRecord(
        id=memory_id_for(chash),
        version=1,
        text=draft.text,
        type=kind,
        time=draft.time or defaults.time,
        created=now,
        source=draft.source,
        source_id=draft.source_id,
        span=[draft.line, draft.end_line],
        speaker=draft.speaker or defaults.speaker,
        tags=tags,
        key=draft.key,
        hash=chash,
        op="ingest",
        actor=actor,
        metadata=draft.metadata,
    )


def _supersede(tx: Transaction, state: CubeState, new: list[MemoryRecord], now: str) -> list[str]:
    """A memory with a ``key`` supersedes the active memory with that key and an older time."""
    by_key: dict[str, MemoryRecord] = {}
    for record in state.current.values():
        if record.key and record.status == "active":
            held = by_key.get(record.key)
            if held is None or (record.time or "") >= (held.time or ""):
                by_key[record.key] = record
    superseded: list[str] = []
    for record in new:
        if not record.key:
            continue
        old = by_key.get(record.key)
        if old is not None and (old.time or "") <= (record.time or "") and old.id != record.id:
            tx.add(_next_version(old, status="superseded", op="supersede", actor=tx.actor, now=now))
            record.supersedes = old.id
            superseded.append(old.id)
        if old is None or (old.time or "") <= (record.time or ""):
            by_key[record.key] = record
        else:  # an older fact arriving late: it is history from the start
            record.status = "superseded"
    return superseded


def _next_version(record: MemoryRecord, *, status: str, op: str, actor: str | None, now: str) -> MemoryRecord:
    from dataclasses import replace

    return replace(record, version=record.version + 1, status=status, op=op, actor=actor, created=now)


Parsed = list[tuple[Source, str, list[MemoryRecord], int]]  # (source, format used, records, bad count)


def ingest(
    cube: Cube,
    sources: Sequence[Source],
    *,
    fmt: str | None = None,
    defaults: Defaults | None = None,
    skip_bad: bool = False,
    actor: str | None = None,
    embedder: EmbedderHandle | None = None,
    progress: Progress | None = None,
    sync: bool = False,
    dry_run: bool = False,
) -> IngestReport:
    """Parse, deduplicate, embed and append ``sources`` to ``cube``; the cube is unchanged on error.

    A source ingested before is synced (engine/plaintext/sync.py): changed passages become new versions of their
    memories; passages gone from it are reported, and archived with ``sync``. ``dry_run`` writes nothing
    and embeds nothing: the report says what would change."""
    started = time.perf_counter()
    actor = cube.check(actor, "write")  # fail before the expensive work, not after it
    index_shard_rows()  # a bad index layout setting fails here, not after the commit
    defaults = defaults or Defaults()
    if defaults.date_order is not None and defaults.date_order not in DATE_ORDERS:
        raise UsageError(
            f"{{date_order}} must be dmy (13/04/2023 = 13 April) or mdy (04/13/2023), not {defaults.date_order!r}",
            options=("date_order",),
        )
    if defaults.time_base is not None:
        defaults.time_base = _option_time(defaults.time_base, "time_base", order=defaults.date_order)
    if defaults.time is not None:
        defaults.time = _option_time(defaults.time, "time", defaults.time_base, defaults.date_order)
    if not sources:
        raise UsageError("nothing to ingest: name files, or pipe text into standard input ('-')")
    now = utc_now()
    parsed, rejected = _parse_sources(sources, fmt, defaults, skip_bad, now, actor)
    return _store(
        cube, parsed, rejected, now=now, actor=actor, embedder=embedder, progress=progress, sync=sync,
        dry_run=dry_run, started=started,
    )  # fmt: skip


def ingest_drafts(
    cube: Cube,
    source: str,
    drafts: Sequence[Draft],
    *,
    fmt: str = "chat",
    actor: str | None = None,
    embedder: EmbedderHandle | None = None,
) -> IngestReport:
    """Store memories a caller built itself (chat's turns) as ``ingest`` stores parsed ones: the same
    records, event times, validation, deduplication, embedding, transaction and index update, without
    writing them out as JSON to parse them again. A record a reader would refuse raises BadInput."""
    started = time.perf_counter()
    actor = cube.check(actor, "write")
    now = utc_now()
    origin = Source(source, b"")
    records = _records(origin, list(drafts), Defaults(), fmt, now, actor, skip_bad=False, rejected=[])
    parsed: Parsed = [(origin, fmt, records, 0)]
    return _store(cube, parsed, [], now=now, actor=actor, embedder=embedder, started=started)


def _option_time(value: str, option: str, base: str | None = None, order: str | None = None) -> str:
    """A time given as an option (``time``, ``time_base``), its errors naming the option."""
    try:
        return parse_time(value, "{" + option + "}", base, order)
    except BadInput as exc:
        exc.options = (*exc.options, option)
        raise


def _parse_sources(
    sources: Sequence[Source], fmt: str | None, defaults: Defaults, skip_bad: bool, now: str, actor: str | None
) -> tuple[Parsed, list[Rejected]]:
    rejected: list[Rejected] = []
    parsed: Parsed = []
    for source in sources:
        try:
            drafts, bad, used = parse_source(
                source.data,
                source.name,
                fmt=fmt,
                skip_bad=skip_bad,
                time_base=defaults.time_base,
                date_order=defaults.date_order,
            )
        except BadInput as exc:
            if not skip_bad:
                if exc.hint_template == FIX_INPUT:
                    exc.advise(SKIP_BAD_HINT, "skip_bad")
                raise
            rejected.append(Rejected(exc.where, exc.problem))
            parsed.append((source, fmt or "?", [], 1))
            continue
        rejected.extend(bad)
        invalid: list[Rejected] = []
        built = _records(source, drafts, defaults, used, now, actor, skip_bad=skip_bad, rejected=invalid)
        rejected.extend(invalid)
        parsed.append((source, used, built, len(bad) + len(invalid)))
    return parsed, rejected


def _records(
    source: Source,
    drafts: list[Draft],
    defaults: Defaults,
    fmt: str,
    now: str,
    actor: str | None,
    *,
    skip_bad: bool,
    rejected: list[Rejected],
) -> list[MemoryRecord]:
    """Drafts -> records with event times, each checked by the one record validator (what a reader of
    the cube would refuse is refused here, or skipped into ``rejected`` with ``skip_bad``)."""
    records = [_record(draft, defaults, fmt, now, actor) for draft in drafts]
    temporal.annotate(records)  # event time from the text, resolved against each record's time
    built = []
    for draft, record in zip(drafts, records, strict=True):
        try:
            validate(record)
        except ValueError as exc:
            problem = BadInput(f"{source.name}:{draft.line}", str(exc))
            if not skip_bad:
                raise problem from None
            rejected.append(Rejected(problem.where, problem.problem))
            continue
        built.append(record)
    return built


def _store(
    cube: Cube,
    parsed: Parsed,
    rejected: list[Rejected],
    *,
    now: str,
    actor: str | None,
    embedder: EmbedderHandle | None,
    started: float,
    progress: Progress | None = None,
    sync: bool = False,
    dry_run: bool = False,
) -> IngestReport:
    """Plan against the cube, embed outside the lock, commit in one transaction, then bring the index up
    to date (a failure there is told as a PostCommitError: the records are stored)."""
    embedder = embedder or EmbedderHandle()
    if embedder.engine is not None:  # finished chunks are staged here, so a rerun after a crash skips them
        embedder.engine.stage_in(cube.path)
    state = cube.read_state()
    planned = _plan(parsed, state, now)
    if dry_run:
        report = _report(parsed, planned, [], [], {}, dry_run=True, sync=sync, started=started)
        report.rejected = rejected
        return report
    known = _embed(planned.fresh + planned.changed, embedder, progress)

    with cube.transaction(actor=actor, op="ingest") as tx:
        state = cube.read_state()  # another writer may have committed while we embedded
        planned = _plan(parsed, state, now)
        fresh = planned.fresh
        superseded = _supersede(tx, state, fresh, now)
        for record in fresh:
            tx.add(record)
        for record in planned.changed:
            tx.add(record)
        archived = planned.vanished_versions(actor=tx.actor, now=now) if sync else []
        for record in archived:
            tx.add(record)
        if fresh:
            tx.log(
                [r.id for r in fresh], f"ingested {plural(len(fresh), 'memory')} from {plural(len(parsed), 'source')}"
            )
        if planned.changed or archived:
            tx.log(
                [r.id for r in planned.changed + archived],
                f"synced {len(planned.changed)} changed and archived {len(archived)} vanished passages",
            )
        if fresh and tx.manifest.embedder is None:
            ident = embedder.identity
            tx.manifest.embedder = {"name": ident.name, "dim": ident.dim, "fingerprint": ident.fingerprint}
            tx.touch_manifest()
    if fresh or planned.changed or archived:
        try:
            _update_index(cube, embedder, known, progress)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - after the commit, every failure is told as one
            # The records are committed: say so, or a pipeline retries and the user believes nothing was
            # written. The index is derived and brings itself up to date on the next query.
            raise after_commit(
                _committed(len(fresh), len(planned.changed), len(archived)),
                "the index will be rebuilt by the next query",
                exc,
            ) from exc
    if embedder.engine is not None:
        embedder.engine.clear_stage()  # committed and indexed: the staged chunks are no longer needed
    report = _report(parsed, planned, superseded, archived, known, dry_run=False, sync=sync, started=started)
    report.rejected = rejected
    report.engine = embedder.engine.stats.to_dict() if embedder.engine is not None else None
    return report


def _committed(stored: int, changed: int, archived: int) -> str:
    """What an ingest committed, as a PostCommitError says it ("3 memories stored")."""
    said = [f"{plural(stored, 'memory')} stored"] if stored else []
    if changed:
        said.append(f"{plural(changed, 'changed passage')} updated")
    if archived:
        said.append(f"{plural(archived, 'vanished passage')} archived")
    return ", ".join(said)


def _plan(parsed: list[tuple[Source, str, list[MemoryRecord], int]], state: CubeState, now: str) -> SyncPlan:
    return plan_sync([(source.name, records) for source, _fmt, records, _bad in parsed], state, now)


def _report(
    parsed: list[tuple[Source, str, list[MemoryRecord], int]],
    planned: SyncPlan,
    superseded: list[str],
    archived: list[MemoryRecord],
    known: dict[str, np.ndarray],
    *,
    dry_run: bool,
    sync: bool,
    started: float,
) -> IngestReport:
    stored = {id(r) for r in planned.fresh}  # by object: a repeated record has the stored one's memory id
    changed_hashes = {r.hash for r in planned.changed}
    reports = []
    for source, used, records, n_bad in parsed:
        added = sum(1 for r in records if id(r) in stored)
        updated = sum(1 for r in records if r.hash in changed_hashes)
        reports.append(SourceReport(source.name, used, len(records), added, len(records) - added - updated, n_bad))
    return IngestReport(
        added=len(planned.fresh),
        duplicates=sum(r.duplicates for r in reports),
        rejected=[],
        sources=reports,
        ids=[r.id for r in planned.fresh],
        superseded=superseded,
        embedded=len(known),
        seconds=time.perf_counter() - started,
        updated=[r.id for r in planned.changed],
        vanished=[r.id for r in planned.vanished],
        archived=[r.id for r in archived] if not dry_run else ([r.id for r in planned.vanished] if sync else []),
        dry_run=dry_run,
    )


def _embed(records: list[MemoryRecord], embedder: EmbedderHandle, progress: Progress | None) -> dict[str, np.ndarray]:
    """Row key -> vector for the records' rows, so the index update after commit embeds nothing."""
    if not records:
        return {}
    rows = [index_mod.row_for(r) for r in records]
    keys = [index_mod.row_key(row) for row in rows]
    unique = dict(zip(keys, rows, strict=True))
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(min(done, len(unique)), len(unique))

    model = embedder.load()
    vectors = ranking.embed_rows(list(unique.values()), lambda texts: model.encode(texts, progress=tick))
    return dict(zip(unique.keys(), vectors, strict=True))


def _update_index(
    cube: Cube, embedder: EmbedderHandle, known: dict[str, np.ndarray], progress: Progress | None
) -> None:
    """Fold the new rows into the derived index now, while their vectors are at hand."""
    ident = embedder.identity
    index_mod.open_index(
        cube,
        cube.read_state(),
        embedder.load,
        dim=ident.dim,
        embedder_name=ident.fingerprint,
        known_vectors=known,
        progress=progress,
    )
