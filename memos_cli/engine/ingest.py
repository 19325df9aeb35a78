"""Ingest: sources -> plaintext memories, deduplicated, embedded in batches, with no LLM call.

The expensive part (embedding) runs before the cube lock is taken; the transaction that appends the
records is short. Bad input fails the whole ingest before anything is written, unless ``skip_bad``.
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
from memos_cli.engine import index as index_mod
from memos_cli.engine import temporal
from memos_cli.engine.embedding import EmbedderHandle
from memos_cli.engine.sources import Draft, Rejected, parse_source, parse_time
from memos_cli.errors import BadInput, UsageError, after_commit

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
    and the date relative times are read against (``--time-base``)."""

    tags: list[str] = field(default_factory=list)
    type: str | None = None
    speaker: str | None = None
    time: str | None = None
    time_base: str | None = None


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

    def to_dict(self) -> dict[str, object]:
        return {
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
) -> IngestReport:
    """Parse, deduplicate, embed and append ``sources`` to ``cube``; the cube is unchanged on error."""
    started = time.perf_counter()
    actor = cube.check(actor, "write")  # fail before the expensive work, not after it
    index_shard_rows()  # a bad index layout setting fails here, not after the commit
    defaults = defaults or Defaults()
    if defaults.time_base is not None:
        defaults.time_base = parse_time(defaults.time_base, "--time-base")
    if defaults.time is not None:
        defaults.time = parse_time(defaults.time, "--time", defaults.time_base)
    if not sources:
        raise UsageError("nothing to ingest: name files, or pipe text into 'memos ingest CUBE -'")
    now = utc_now()
    rejected: list[Rejected] = []
    parsed: list[tuple[Source, str, list[MemoryRecord], int]] = []
    for source in sources:
        try:
            drafts, bad, used = parse_source(
                source.data, source.name, fmt=fmt, skip_bad=skip_bad, time_base=defaults.time_base
            )
        except BadInput as exc:
            if not skip_bad:
                raise
            rejected.append(Rejected(exc.where, exc.problem))
            parsed.append((source, fmt or "?", [], 1))
            continue
        rejected.extend(bad)
        records = [_record(draft, defaults, used, now, actor) for draft in drafts]
        temporal.annotate(records)  # event time from the text, resolved against each record's time
        built = []
        for draft, record in zip(drafts, records, strict=True):
            try:
                validate(record)  # the one record validator: what a reader of the cube would refuse
            except ValueError as exc:
                problem = BadInput(f"{source.name}:{draft.line}", str(exc))
                if not skip_bad:
                    raise problem from None
                rejected.append(Rejected(problem.where, problem.problem))
                bad.append(rejected[-1])
                continue
            built.append(record)
        parsed.append((source, used, built, len(bad)))

    embedder = embedder or EmbedderHandle()
    if embedder.engine is not None:  # finished chunks are staged here, so a rerun after a crash skips them
        embedder.engine.stage_in(cube.path)
    state = cube.read_state()
    candidates = _new_records(parsed, state)
    known = _embed(candidates, embedder, progress)

    with cube.transaction(actor=actor, op="ingest") as tx:
        state = cube.read_state()  # another writer may have committed while we embedded
        fresh = _new_records(parsed, state)
        superseded = _supersede(tx, state, fresh, now)
        for record in fresh:
            tx.add(record)
        if fresh:
            tx.log([r.id for r in fresh], f"ingested {len(fresh)} memories from {len(sources)} source(s)")
        if fresh and tx.manifest.embedder is None:
            ident = embedder.identity
            tx.manifest.embedder = {"name": ident.name, "dim": ident.dim, "fingerprint": ident.fingerprint}
            tx.touch_manifest()
    stored = {id(r) for r in fresh}  # by object: a repeated record has the same memory id as the stored one
    reports = []
    for source, used, records, n_bad in parsed:
        added = sum(1 for r in records if id(r) in stored)
        reports.append(SourceReport(source.name, used, len(records), added, len(records) - added, n_bad))
    if fresh:
        try:
            _update_index(cube, embedder, known, progress)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - after the commit, every failure is told as one
            # The records are committed: say so, or a pipeline retries and the user believes nothing was
            # written. The index is derived and brings itself up to date on the next query.
            raise after_commit(
                f"{len(fresh):,} memories stored", "the index will be rebuilt by the next query", exc
            ) from exc
    if embedder.engine is not None:
        embedder.engine.clear_stage()  # committed and indexed: the staged chunks are no longer needed
    return IngestReport(
        added=len(fresh),
        duplicates=sum(r.duplicates for r in reports),
        rejected=rejected,
        sources=reports,
        ids=[r.id for r in fresh],
        superseded=superseded,
        embedded=len(known),
        seconds=time.perf_counter() - started,
        engine=embedder.engine.stats.to_dict() if embedder.engine is not None else None,
    )


def _new_records(parsed: list[tuple[Source, str, list[MemoryRecord], int]], state: CubeState) -> list[MemoryRecord]:
    """Records whose content is not in the cube yet (nor earlier in this same ingest)."""
    seen = {r.hash for r in state.versions if r.hash}
    seen.update(state.current.keys())
    fresh = []
    for _source, _fmt, records, _bad in parsed:
        for record in records:
            if record.hash in seen or record.id in seen:
                continue
            seen.add(record.hash)
            seen.add(record.id)
            fresh.append(record)
    return fresh


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
    vectors = index_mod.ranking.embed_rows(list(unique.values()), lambda texts: model.encode(texts, progress=tick))
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
