"""The derived retrieval index under ``.memos/index/``: vectors, BM25 statistics and an hnswlib graph.

Nothing here is required from git: a fresh clone has no index, and the first query builds it (with a
progress bar). The index is kept in step with ``memories.jsonl`` incrementally:

- one *row* per distinct indexed content (the exact texts embedded and BM25-indexed); rows are only
  appended, so vectors and keys are append-only files, and a memory whose text is unchanged by a new
  version (forget, a tag edit) keeps its row and its embedding;
- ``current.json`` maps each memory id to the row of its current version;
- ``meta.json`` names how many rows are valid and which state of ``memories.jsonl`` the index
  reflects (size, mtime, sha256), so staleness costs one ``stat``. It is written on both sides of
  ``current.json``: first with the new row count and no claim on the records, last with the claim, so
  a writer killed at any point leaves an index that is consistent and at worst behind;
- the hnswlib graph may lag behind the rows: rows past ``hnsw_rows`` are scored exactly, and are
  folded into the graph once the tail grows (saving the graph rewrites it, so it is not done per ingest).

All index reads and writes hold ``.memos/index.lock`` (separate from the cube's write lock, so queries
never wait for a long ingest's embedding work).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from memos_cli.config import lock_timeout
from memos_cli.cube import io, layout
from memos_cli.cube.bundle import Cube, CubeState
from memos_cli.cube.io import append_bytes, atomic_write_bytes, atomic_write_text
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.errors import IncompatibleModel, InvalidCube, LockTimeout

INDEX_REL = f"{layout.DERIVED_DIR}/{layout.INDEX_DIR}"
_MAX_META_BYTES = 1 << 20

INDEX_VERSION = 2  # 2: vectors of the bare text (ranking.embed_rows)
HNSW_MIN_ROWS = 20_000  # below this, exact scoring is as fast as the graph and always exact
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF = 128


@dataclass
class IndexMeta:
    version: int
    embedder: str
    dim: int
    rows: int
    hnsw_rows: int
    records_size: int
    records_mtime_ns: int

    @classmethod
    def empty(cls, embedder: str, dim: int) -> IndexMeta:
        return cls(INDEX_VERSION, embedder, dim, 0, 0, -1, -1)


def row_for(record: MemoryRecord) -> ranking.Row:
    return ranking.Row(
        text=record.text,
        speaker=record.speaker,
        time=record.time,
        source=record.source,
        source_id=record.source_id,
        type=record.type,
        tags=list(record.tags),
        event=record.event_time,
    )


def row_key(row: ranking.Row) -> str:
    """Identity of what a row indexes: rows are reused exactly when these texts are unchanged."""
    payload = ranking.embed_text(row) + "\x1e" + ranking.lexical_text(row)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


# embeds rows (ranking.embed_rows), calling the tick with the count of texts done after each batch
EmbedFn = Callable[[list[ranking.Row], Callable[[int], None]], np.ndarray]


class CubeIndex:
    """The loaded index of one cube, in step with a given ``CubeState``."""

    def __init__(self, cube: Cube, dim: int, embedder_name: str) -> None:
        self.cube = cube
        # The index is the folder ``root/rel``: .memos/index of the cube, or MEMOS_HOME's cache for a
        # read-only cube (index_location). Every access goes through cube.io, relative to ``root``.
        self.root, self.rel = index_location(cube)
        self.dir = self.root / self.rel
        self.meta = IndexMeta.empty(embedder_name, dim)
        self.keys: list[str] = []
        self.rows: list[ranking.Row] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.lexical = LexicalIndex()
        self.current: dict[str, int] = {}
        self.hnsw: Any = None
        self._inputs: ranking.RankInputs | None = None

    # ------------------------------------------------------------------ loading
    @property
    def lock(self) -> FileLock:
        if self.root == self.cube.path:
            lock = self.cube.file_lock("index.lock")
        else:
            lock = FileLock(str(self.root / "index.lock"))
        lock.timeout = lock_timeout()
        return lock

    def _subdir(self, sub: str = "") -> None:
        """Create the index folder (or ``sub`` in it), following no link."""
        io.mkdirs(self.root, f"{self.rel}/{sub}" if sub else self.rel)

    def _read(self, name: str, limit: int | None = None) -> bytes:
        data = io.read_bytes(self.root, f"{self.rel}/{name}", limit=limit)
        assert data is not None
        return data

    def _load(self) -> bool:
        """Load what is on disk; False if there is nothing usable (then the caller rebuilds): a link or
        special file in the index is unusable too (it is derived data: the rebuild removes it)."""
        try:
            return self._load_checked()
        except InvalidCube:
            return False

    def _load_checked(self) -> bool:
        try:
            meta = IndexMeta(**json.loads(self._read("meta.json", _MAX_META_BYTES)))
        except (OSError, ValueError, TypeError):
            return False
        if meta.version != INDEX_VERSION or meta.embedder != self.meta.embedder or meta.dim != self.meta.dim:
            return False
        n = meta.rows
        try:
            with io.open_read(self.root, f"{self.rel}/vectors.f32") as raw:
                vectors = np.fromfile(raw, dtype=np.float32, count=n * meta.dim)
            keys = self._read("keys.txt").decode("utf-8").split("\n")[:n]
            lines = self._read("rows.jsonl").decode("utf-8").split("\n")
            rows = [ranking.Row(**json.loads(lines[i])) for i in range(n)]
            current = json.loads(self._read("current.json"))
        except (OSError, ValueError, TypeError, IndexError, RecursionError):  # derived: rebuilt
            return False
        if vectors.size != n * meta.dim or len(keys) != n:
            return False
        self.meta, self.keys, self.rows, self.current = meta, keys, rows, current
        self.vectors = vectors.reshape(n, meta.dim)
        try:
            self._subdir("lexical")
            lexical = LexicalIndex.load(self.dir / "lexical")
            if len(lexical) != n:
                raise ValueError("lexical rows differ")
        except (OSError, ValueError, KeyError):
            lexical = LexicalIndex()
            lexical.add([ranking.lexical_text(r) for r in rows])
            self._subdir("lexical")
            lexical.save(self.dir / "lexical")
        self.lexical = lexical
        self.hnsw = None
        if meta.hnsw_rows:
            self.hnsw = self._load_hnsw(meta.hnsw_rows)
            if self.hnsw is None:
                self.meta.hnsw_rows = 0
        return True

    def _load_hnsw(self, count: int) -> Any:
        import hnswlib

        graph = hnswlib.Index(space="ip", dim=self.meta.dim)
        if io.kind(self.root, f"{self.rel}/hnsw.bin") != "file":
            return None
        try:
            graph.load_index(str(self.dir / "hnsw.bin"), max_elements=max(count, 1))
        except (RuntimeError, OSError):
            return None
        if graph.get_current_count() != count:
            return None
        graph.set_ef(HNSW_EF)
        return graph

    # ------------------------------------------------------------------ syncing
    def fresh_for(self, cube_file: Path) -> bool:
        try:
            stat = cube_file.stat()
        except FileNotFoundError:
            return self.meta.records_size == 0
        return stat.st_size == self.meta.records_size and stat.st_mtime_ns == self.meta.records_mtime_ns

    def sync(
        self,
        state: CubeState,
        embed: Callable[[], EmbedFn],
        *,
        known_vectors: dict[str, np.ndarray] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Bring the index in step with ``state``; returns the number of rows embedded.

        ``embed`` is a factory, called only if something must be embedded (so a query on a fresh
        index never loads the embedder for the index's sake).
        ``known_vectors`` maps row keys to vectors already computed (by ingest), to skip re-embedding.
        """
        wanted: dict[str, int] = {}
        new_rows: list[ranking.Row] = []
        new_keys: list[str] = []
        key_to_row = {k: i for i, k in enumerate(self.keys)}
        for memory_id, record in state.current.items():
            if record.status == "deleted":
                continue
            row = row_for(record)
            key = row_key(row)
            index = key_to_row.get(key)
            if index is None:
                index = len(self.keys) + len(new_keys)
                key_to_row[key] = index
                new_rows.append(row)
                new_keys.append(key)
            wanted[memory_id] = index
        embedded = 0
        if new_rows:
            vectors = np.zeros((len(new_rows), self.meta.dim), dtype=np.float32)
            missing = []
            for i, key in enumerate(new_keys):
                vector = (known_vectors or {}).get(key)
                if vector is None:
                    missing.append(i)
                else:
                    vectors[i] = vector
            if missing:
                fn = embed()
                todo = [new_rows[i] for i in missing]
                done = 0

                def tick(count: int) -> None:
                    nonlocal done
                    done += count
                    if progress is not None:
                        progress(min(done, len(todo)), len(todo))

                vectors[missing] = fn(todo, tick)
                embedded = len(missing)
            self._append_rows(new_rows, new_keys, vectors)
        self.current = wanted
        self._maybe_extend_hnsw()
        self._write_meta(state)
        self._inputs = None
        return embedded

    def _append_rows(self, rows: list[ranking.Row], keys: list[str], vectors: np.ndarray) -> None:
        self._subdir()
        n = self.meta.rows
        # Drop anything a crashed writer appended past the valid rows before appending ours.
        _truncate(self.dir / "vectors.f32", n * self.meta.dim * 4)
        for name in ("keys.txt", "rows.jsonl"):
            _truncate_lines(self.dir / name, n)
        append_bytes(self.dir / "vectors.f32", np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        append_bytes(self.dir / "keys.txt", "".join(k + "\n" for k in keys).encode())
        append_bytes(
            self.dir / "rows.jsonl",
            "".join(json.dumps(vars(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8"),
        )
        self.vectors = np.concatenate([self.vectors, vectors]) if n else vectors.copy()
        self.keys.extend(keys)
        self.rows.extend(rows)
        self.lexical.add([ranking.lexical_text(r) for r in rows])
        self._subdir("lexical")
        self.lexical.save(self.dir / "lexical")
        self.meta.rows = len(self.keys)

    def _maybe_extend_hnsw(self) -> None:
        total = self.meta.rows
        tail = total - self.meta.hnsw_rows
        if total < HNSW_MIN_ROWS or tail < max(1000, total // 20):
            return
        import hnswlib

        if self.hnsw is None or self.meta.hnsw_rows == 0:
            graph = hnswlib.Index(space="ip", dim=self.meta.dim)
            graph.init_index(max_elements=total, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
            start = 0
        else:
            graph = self.hnsw
            graph.resize_index(total)
            start = self.meta.hnsw_rows
        graph.add_items(self.vectors[start:total], np.arange(start, total))
        graph.set_ef(HNSW_EF)
        self._subdir()
        tmp = f"hnsw.bin.{os.getpid()}.tmp"
        io.remove(self.dir, tmp)  # whatever was there (a link included) goes: hnswlib opens by name
        graph.save_index(str(self.dir / tmp))
        with io.open_read(self.dir, tmp) as handle:
            os.fsync(handle.fileno())
        io.rename(self.dir, tmp, "hnsw.bin")
        self.hnsw = graph
        self.meta.hnsw_rows = total

    def _write_meta(self, state: CubeState) -> None:
        try:
            stat = self.cube.memories_path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and stat.st_size == state.size:
            self.meta.records_size, self.meta.records_mtime_ns = stat.st_size, stat.st_mtime_ns
        else:  # the file moved on (or is mid-transaction): record nothing, the next open re-checks
            self.meta.records_size, self.meta.records_mtime_ns = -1, -1
        self._subdir()
        # Three writes, so that a writer killed between any two leaves an index that is at worst behind:
        # the row count first, claiming no records (current.json may point only into rows that exist),
        # then the mapping into those rows, then the claim that they match the records.
        meta = asdict(self.meta)
        unclaimed = {**meta, "records_size": -1, "records_mtime_ns": -1}
        atomic_write_text(self.dir / "meta.json", json.dumps(unclaimed, sort_keys=True))
        atomic_write_text(self.dir / "current.json", json.dumps(self.current, sort_keys=True))
        atomic_write_text(self.dir / "meta.json", json.dumps(meta, sort_keys=True))

    # ------------------------------------------------------------------ ranking
    def inputs(self) -> ranking.RankInputs:
        if self._inputs is None:
            self._inputs = ranking.RankInputs(
                vectors=self.vectors,
                lexical=self.lexical,
                rows=self.rows,
                structure=ranking.structure(self.rows),
            )
        return self._inputs

    def ann(self) -> Callable[[np.ndarray, int], np.ndarray] | None:
        """Approximate dense candidates: the hnswlib graph plus an exact scan of the rows not in it."""
        if self.hnsw is None:
            return None
        graph, start, vectors = self.hnsw, self.meta.hnsw_rows, self.vectors

        def candidates(query_vec: np.ndarray, n: int) -> np.ndarray:
            labels, _ = graph.knn_query(query_vec.reshape(1, -1), k=min(n, start))
            found = labels[0].astype(np.int64)
            if start < len(vectors):
                tail = vectors[start:] @ query_vec
                take = min(n, len(tail))
                best = np.argpartition(-tail, take - 1)[:take] + start
                found = np.concatenate([found, best])
            return np.asarray(found)

        return candidates


def index_location(cube: Cube) -> tuple[Path, str]:
    """Where ``cube``'s index lives, as ``(root, rel)``: the folder ``root/rel``, ``root`` trusted.

    ``.memos/index/`` when the cube is writable. On a read-only cube (read-only media, another user's
    checkout) a folder under MEMOS_HOME's cache, keyed by the cube's id and the sha256 of its records, so
    reads never write to the cube; if even that cache cannot be written, a temporary folder for this
    process (the index is then built in memory and on temporary disk, and dropped at exit)."""
    if cube.writable():
        return cube.path, INDEX_REL
    from memos_cli.cube.io import sha256_file

    try:
        content = sha256_file(cube.memories_path)[:16]
    except FileNotFoundError:
        content = "empty"
    try:
        folder = readonly_cache_root() / f"{_safe_id(cube.manifest.id)}-{content}"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = _process_temp_dir() / content
        folder.mkdir(parents=True, exist_ok=True)
    return folder, layout.INDEX_DIR


def readonly_cache_root() -> Path:
    """Where indexes of read-only cubes are kept: ``MEMOS_HOME/readonly-index``."""
    from memos_cli.config import memos_home

    return memos_home() / "readonly-index"


def _safe_id(cube_id: str) -> str:
    """A cube id as a folder name: a stranger's manifest may hold anything."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", cube_id)[:64] or "cube"


_TEMP_DIR: Path | None = None


def _process_temp_dir() -> Path:
    global _TEMP_DIR
    if _TEMP_DIR is None:
        import atexit
        import shutil
        import tempfile

        _TEMP_DIR = Path(tempfile.mkdtemp(prefix="memos-index-"))
        atexit.register(shutil.rmtree, _TEMP_DIR, True)
    return _TEMP_DIR


def open_index(
    cube: Cube,
    state: CubeState,
    embedder_factory: Callable[[], Any],
    *,
    dim: int,
    embedder_name: str,
    known_vectors: dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    any_embedder: bool = False,
) -> CubeIndex:
    """Load the cube's index and bring it in step with ``state`` (building it if missing or stale).

    A cube whose manifest names another embedder is refused unless ``any_embedder`` (fuse --reembed):
    its index is then rebuilt with this one."""
    expected = cube.manifest.embedder
    if not any_embedder and expected and expected.get("fingerprint") not in (None, embedder_name):
        raise IncompatibleModel(
            f"cube {cube.path}",
            str(expected.get("fingerprint")),
            embedder_name,
            hint="use the embedder the cube was built with (MEMOS_EMBEDDER), or re-embed it",
        )
    index = CubeIndex(cube, dim, embedder_name)
    try:
        with index.lock:
            loaded = index._load()
            if loaded and index.meta.records_size == state.size and index.fresh_for(cube.memories_path):
                return index
            if not loaded:
                index = CubeIndex(cube, dim, embedder_name)
                _clear(index.dir)

            def factory() -> EmbedFn:
                embedder = embedder_factory()
                return lambda rows, tick: ranking.embed_rows(rows, lambda texts: embedder.encode(texts, progress=tick))

            index.sync(state, factory, known_vectors=known_vectors, progress=progress)
    except Timeout:
        raise LockTimeout(index.dir, lock_timeout()) from None
    return index


def _truncate(path: Path, size: int) -> None:
    io.truncate(path.parent, path.name, size)


def _truncate_lines(path: Path, lines: int) -> None:
    data = io.read_bytes(path.parent, path.name, missing_ok=True)
    if data is None:
        return
    offset = 0
    for _ in range(lines):
        offset = data.index(b"\n", offset) + 1
    _truncate(path, offset)


def _clear(directory: Path) -> None:
    """Empty the index folder; a link or file in its place is removed (never followed)."""
    root, rel = directory.parent.parent, f"{directory.parent.name}/{directory.name}"
    if io.kind(root, rel) not in (None, "dir"):
        io.remove(root, rel)
        return
    # meta.json first: without it there is no index (the loader and verify both say so), whatever else
    # a stop between two removals leaves behind.
    for name in sorted(io.listdir(root, rel), key=lambda n: n != "meta.json"):
        io.remove(root, f"{rel}/{name}")


def scrub(cube: Cube, purged: list[MemoryRecord], kept: list[MemoryRecord]) -> None:
    """Remove every derived copy of the ``purged`` versions' text from the index (``forget --purge``).

    The rows, vectors and BM25 statistics are rewritten from the rows that stay (no model is needed);
    the hnswlib graph is dropped (rebuilt when the cube is large enough to need it); indexes of this
    cube kept in the read-only cache are removed. A row whose text a ``kept`` version still indexes
    stays (that text is still in the cube). Killed midway, the index is left empty and is rebuilt by
    the next query; the purged text is gone either way. Every access is confined to the cube (cube.io)."""
    import shutil

    for folder in readonly_cache_root().glob(f"{_safe_id(cube.manifest.id)}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    if io.kind(cube.path, INDEX_REL) is None:
        return
    doomed_ids = {r.id for r in purged}
    doomed = {row_key(row_for(r)) for r in purged} - {row_key(row_for(r)) for r in kept}
    lock = cube.file_lock("index.lock")
    lock.timeout = lock_timeout()
    directory = cube.path / INDEX_REL
    try:
        with lock:
            try:
                raw = io.read_bytes(cube.path, f"{INDEX_REL}/meta.json", limit=_MAX_META_BYTES)
                meta = json.loads(raw or b"")
                index = CubeIndex(cube, int(meta["dim"]), str(meta["embedder"]))
                loaded = index.root == cube.path and index._load()
            except (OSError, ValueError, TypeError, KeyError, InvalidCube, RecursionError):
                loaded = False
            _clear(directory)  # every file goes (a link in its place too), torn tails and temporary files included
            if not loaded:
                return  # nothing usable was there: the next query builds the index afresh
            keep = [i for i, key in enumerate(index.keys) if key not in doomed]
            moved = {old: new for new, old in enumerate(keep)}
            rows = [index.rows[i] for i in keep]
            meta_out = {**asdict(index.meta), "rows": 0, "hnsw_rows": 0, "records_size": -1, "records_mtime_ns": -1}
            io.mkdirs(cube.path, f"{INDEX_REL}/lexical")
            atomic_write_bytes(directory / "vectors.f32", np.ascontiguousarray(index.vectors[keep]).tobytes())
            atomic_write_text(directory / "keys.txt", "".join(index.keys[i] + "\n" for i in keep))
            atomic_write_text(
                directory / "rows.jsonl",
                "".join(json.dumps(vars(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
            )
            lexical = LexicalIndex()
            lexical.add([ranking.lexical_text(r) for r in rows])
            lexical.save(directory / "lexical")
            current = {m: moved[row] for m, row in index.current.items() if m not in doomed_ids and row in moved}
            atomic_write_text(directory / "current.json", json.dumps(current, sort_keys=True))
            # meta.json last: until it is written there is no index (the next query builds one, never wrong).
            meta_out["rows"] = len(keep)
            atomic_write_text(directory / "meta.json", json.dumps(meta_out, sort_keys=True))
    except Timeout:
        raise LockTimeout(directory, lock_timeout()) from None
